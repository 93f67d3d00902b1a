"""push_to_hub.py and the model card: what a release uploads, and that it loads and predicts without mmsa."""

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image

import push_to_hub
from mmsa import MmsaForSequenceClassification, MmsaProcessor
from mmsa.data import build_mvsa, save_mvsa
from mmsa.testing_utils import example_posts, fake_mvsa_posts, write_fake_mvsa


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


CLEAN_ROOM = textwrap.dedent(
    """
    import json, sys
    sys.modules["mmsa"] = None  # the package cannot be imported: only the folder's own code can run
    import torch
    from PIL import Image
    from transformers import AutoModelForSequenceClassification, AutoProcessor, pipeline

    folder, photo, result_file = sys.argv[1:4]
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    classifier = pipeline("multimodal-sentiment", model=folder, trust_remote_code=True)
    posts = [{"text": "i love this great day", "image": Image.new("RGB", (70, 50), (200, 30, 30))},
             {"text": "sad awful", "image": photo}, {"text": "the photo", "image": Image.new("L", (20, 90), 100)}]
    batch = processor(text=[p["text"] for p in posts],
                      images=[p["image"] if not isinstance(p["image"], str) else Image.open(p["image"]) for p in posts])
    with torch.no_grad():
        logits = model(**batch).logits
    outputs = classifier(posts, batch_size=2, top_k=None)
    exec(sys.argv[4])  # the model card's usage snippet
    torch.save({"logits": logits, "pipeline": outputs}, result_file)
    """
)


def test_dry_run_folder_loads_without_mmsa_and_predicts_the_same(run_dir, tmp_path):
    folder = tmp_path / "upload"
    push_to_hub.main(["--model_dir", str(run_dir), "--repo_id", "someone/mmsa-tiny", "--dry_run", str(folder)])
    names = {p.name for p in folder.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "configuration_mmsa.py",
        "modeling_mmsa.py",
        "processing_mmsa.py",
        "pipeline_mmsa.py",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "test_confusion_matrix.png",
        "explanation.png",
    } <= names
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["multimodal-sentiment"]["impl"] == "pipeline_mmsa.MultimodalSentimentPipeline"
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_mmsa.MmsaForSequenceClassification"

    card = ModelCard.load(folder / "README.md")
    test = json.loads((run_dir / "test_results.json").read_text())
    metrics = {m["name"]: m["value"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {
        "accuracy": test["test_accuracy"],
        "macro-F1": test["test_macro_f1"],
        "weighted-F1": test["test_weighted_f1"],
    }
    assert card.data.library_name == "transformers" and "mmsa" in card.data.tags
    assert "| 1 |" in card.text and "| 2 |" in card.text  # per-epoch validation table
    assert "![Confusion matrix" in card.text and "transformers" in card.text
    # the example explanation: its figure, its numbers as the model gives them, and the pointer to the demo
    assert "![Example explanation" in card.text and "python app.py --model someone/mmsa-tiny" in card.text
    from mmsa.explain import explain

    beach = json.loads((ROOT / "examples" / "posts.jsonl").read_text().splitlines()[0])
    direct = explain(
        MmsaForSequenceClassification.from_pretrained(run_dir).eval(),
        MmsaProcessor.from_pretrained(run_dir),
        beach["text"],
        str(ROOT / "examples" / beach["image"]),
    )
    assert f"classified\n**{direct.label}** ({100 * direct.probabilities[direct.label]:.0f}%)" in card.text
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1).replace("someone/mmsa-tiny", str(folder))

    posts = example_posts(tmp_path)
    model = MmsaForSequenceClassification.from_pretrained(run_dir).eval()
    processor = MmsaProcessor.from_pretrained(run_dir)
    images = [p["image"] if not isinstance(p["image"], str) else Image.open(p["image"]) for p in posts]
    with torch.no_grad():
        expected = model(**processor(text=[p["text"] for p in posts], images=images)).logits

    result_file = tmp_path / "result.pt"
    run = subprocess.run(
        [sys.executable, "-c", CLEAN_ROOM, str(folder), str(tmp_path / "photo.png"), str(result_file), snippet],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = torch.load(result_file)
    assert torch.equal(result["logits"], expected)
    probabilities = expected.softmax(-1)
    for post_output, row in zip(result["pipeline"], probabilities):
        labels = [model.config.id2label[i] for i in row.argsort(descending=True).tolist()]
        assert [o["label"] for o in post_output] == labels
        assert [o["score"] for o in post_output] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-6)
    assert "positive" in run.stdout or "negative" in run.stdout or "neutral" in run.stdout  # the snippet printed


def test_upload_goes_through_hfapi_in_one_commit(run_dir, tmp_path, monkeypatch, capsys):
    calls = []

    def record(name):
        def method(self, *args, **kwargs):
            if name == "upload_folder":
                kwargs["files"] = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
                kwargs["card"] = (Path(kwargs["folder_path"]) / "README.md").read_text()
            calls.append((name, args, kwargs))
            return f"https://huggingface.co/{args[0] if args else kwargs.get('repo_id')}"

        return method

    for name in ("create_repo", "create_branch", "upload_folder", "create_tag"):
        monkeypatch.setattr(HfApi, name, record(name))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_123456")
    push_to_hub.main(
        [
            "--model_dir",
            str(run_dir),
            "--repo_id",
            "someone/mmsa-tiny",
            "--tag",
            "v0.1.0",
            "--revision",
            "dev",
            "--private",
        ]
    )
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder", "create_tag"]
    (_, repo_args, repo_kwargs), (_, branch_args, branch_kwargs), (_, _, upload), (_, tag_args, tag) = calls
    assert repo_args == ("someone/mmsa-tiny",) and repo_kwargs["private"] is True
    assert branch_args == ("someone/mmsa-tiny",) and branch_kwargs["branch"] == "dev"
    assert upload["repo_id"] == "someone/mmsa-tiny" and upload["revision"] == "dev"
    assert {
        "model.safetensors",
        "config.json",
        "README.md",
        "modeling_mmsa.py",
        "pipeline_mmsa.py",
        "test_confusion_matrix.png",
    } <= set(upload["files"])
    test = json.loads((run_dir / "test_results.json").read_text())
    assert f"test accuracy {test['test_accuracy']:.4f}" in upload["commit_message"]
    assert tag_args == ("someone/mmsa-tiny",) and tag["tag"] == "v0.1.0" and tag["revision"] == "dev"
    # the card's snippet runs the repository's code only at the release it documents
    assert 'revision = "v0.1.0"' in upload["card"]
    assert upload["card"].count("trust_remote_code=True, revision=revision") == 3
    out = capsys.readouterr()
    assert "hf_not_a_real_token_123456" not in out.out + out.err


def test_dataset_is_published_alongside(run_dir, tmp_path, monkeypatch):
    pushed = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: pushed.append(("repo", repo_id, kw)))
    monkeypatch.setattr(
        HfApi,
        "upload_folder",
        lambda self, **kw: pushed.append(
            ("upload", kw["repo_id"], kw.get("repo_type"), sorted(p.name for p in Path(kw["folder_path"]).rglob("*")))
        ),
    )
    monkeypatch.setattr(HfApi, "create_tag", lambda self, *a, **kw: None)
    raw = write_fake_mvsa(tmp_path / "raw", fake_mvsa_posts(30))
    dataset, report = build_mvsa(raw, num_proc=1, return_report=True)
    save_mvsa(dataset, report, tmp_path / "saved")
    push_to_hub.main(
        ["--model_dir", str(run_dir), "--repo_id", "someone/mmsa-tiny", "--dataset_dir", str(tmp_path / "saved")]
    )
    dataset_uploads = [p for p in pushed if p[0] == "upload" and p[2] == "dataset"]
    assert len(dataset_uploads) == 1 and dataset_uploads[0][1] == "someone/mvsa-single"
    assert "train-00000-of-00001.parquet" in dataset_uploads[0][3]


def test_refuses_unfinished_or_broken_runs(run_dir, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("checkpoint-*", "test_results.json"))
    with pytest.raises(SystemExit) as exit_info:
        push_to_hub.main(["--model_dir", str(unfinished), "--repo_id", "a/b", "--dry_run", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "missing test_results.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((broken / "config.json").read_text())
    config["fusion_hidden_size"] = 24  # weights no longer fit the config
    config["fusion_num_heads"] = 4
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        push_to_hub.main(["--model_dir", str(broken), "--repo_id", "a/b", "--dry_run", str(tmp_path / "y")])
    assert "does not load" in capsys.readouterr().err
