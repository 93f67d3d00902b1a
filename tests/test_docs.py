"""The README and docs/ cannot rot: every runnable code block runs (on a tiny trained model, tiny towers, the shipped
examples and a generated MVSA release), every repository path a block names exists, the generated pages are what
the code gives, and a broken block fails the run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from doc_blocks import ROOT, DocBlockError, missing_paths, read_blocks


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINKED = (
    "examples",
    "configs",
    "bench",
    "scripts",
    "app.py",
    "train_hf.py",
    "push_to_hub.py",
    "space",
    "requirements",
)
"""What the scratch folder links from the repository, so that blocks find it where a user's checkout has it."""


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="session")
def docs_template(tiny_run, tmp_path_factory) -> Path:
    """A scratch folder laid out as a user's checkout after README command 1, with tiny stand-ins."""
    from mmsa.testing_utils import fake_mvsa_posts, write_fake_mvsa, write_tiny_towers

    folder = tmp_path_factory.mktemp("docs") / "template"
    shutil.copytree(tiny_run, folder / "runs" / "offline_minilm_effnet")
    write_tiny_towers(folder / "backbones")
    write_fake_mvsa(folder / "raw", fake_mvsa_posts(60, seed=4))
    return folder


def run_page(page: Path, work: Path, raw: Path) -> subprocess.CompletedProcess:
    for name in LINKED:
        (work / name).symlink_to(ROOT / name)
    env = {
        **os.environ,
        "MVSA_SINGLE_DIR": str(raw),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "doc_blocks.py"), str(page)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


RUNNABLE_PAGES = [page for page in PAGES if any(block.runnable for block in read_blocks(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=page_id)
def test_every_runnable_block_runs(page, docs_template, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(docs_template, work, symlinks=True)
    result = run_page(page, work, work / "raw")
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    runnable = sum(block.runnable for block in read_blocks(page))
    assert f"ran {runnable} blocks" in result.stdout


def test_the_readme_and_every_page_have_runnable_blocks_and_reasons_for_the_rest():
    blocks = {page_id(page): read_blocks(page) for page in PAGES}
    assert sum(block.runnable for block in blocks["README.md"]) >= 4
    for blocks_of_page in blocks.values():
        for block in blocks_of_page:
            assert block.lang, f"{block.where}: give the code block a language (python, bash, text, ...)"
            assert block.skip_reason is None or len(block.skip_reason) > 10, block.where


def test_every_path_a_code_block_names_exists():
    missing = {block.where: missing_paths(block) for page in PAGES for block in read_blocks(page)}
    assert {where: paths for where, paths in missing.items() if paths} == {}


def test_a_broken_block_fails_the_run_naming_it(docs_template, tmp_path):
    page = tmp_path / "broken.md"
    page.write_text(
        "# A page\n\n```python\nvalue = 41\n```\n\n"
        "<!-- docs-test: skip needs the Hub, for this test -->\n```python\nraise RuntimeError('skipped')\n```\n\n"
        "```python\nassert value + 1 == 42\n```\n\n```bash\nmmsa predict --model no/such/model --text hi\n```\n"
    )
    work = tmp_path / "work"
    shutil.copytree(docs_template, work, symlinks=True)
    result = run_page(page, work, work / "raw")
    assert result.returncode == 1
    assert f"FAILED: the bash block at {page}:16 (exit status 2)" in result.stderr
    assert "--- " + f"{page}:12 (python)" in result.stdout and "skipped" not in result.stderr

    page.write_text("# A page\n\n```python\nimport json\n\njson.loads('{')\n```\n")
    shutil.rmtree(work)
    shutil.copytree(docs_template, work, symlinks=True)
    result = run_page(page, work, work / "raw")
    assert result.returncode == 1 and f"FAILED: the python block at {page}:3" in result.stderr
    assert f'File "{page}", line 6' in result.stderr  # the traceback points at the page's own line


def test_markers_and_paths_are_checked(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: skip -->\n```bash\necho hi\n```\n")
    with pytest.raises(DocBlockError, match="needs a reason"):
        read_blocks(page)
    page.write_text("<!-- docs-test: skip needs a GPU -->\n\n```bash\necho hi\n```\n")
    with pytest.raises(DocBlockError, match="on the line before a code block"):
        read_blocks(page)
    page.write_text("```python\nprint(1)\n")
    with pytest.raises(DocBlockError, match="never closed"):
        read_blocks(page)
    page.write_text("```bash\nmmsa predict --image examples/no_such.jpg --output runs/x/preds.jsonl\n```\n")
    (block,) = read_blocks(page)
    assert missing_paths(block) == ["examples/no_such.jpg"]


def test_generated_pages_are_up_to_date():
    sys.path.insert(0, str(ROOT / "scripts"))
    import render_docs

    assert render_docs.main(["--check"]) == 0, "run python scripts/render_docs.py"
    documented = {name for field in render_docs.config_fields() for name in field["names"]}
    from mmsa import MmsaConfig

    fields = set(MmsaConfig.__annotations__) | {"num_labels", "id2label", "label2id"}
    assert fields == documented, "every MmsaConfig field is documented in its docstring, and only those"
