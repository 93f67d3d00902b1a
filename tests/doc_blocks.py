"""The code blocks of the README and of docs/: found, checked and run (by `tests/test_docs.py`).

    python tests/doc_blocks.py FILE.md     # runs FILE's runnable blocks in the current folder, in document order

A fenced `python` or `bash` block runs unless the line before it is `<!-- docs-test: skip REASON -->` (the reason is
required). A page's Python blocks share one namespace, as in a notebook; bash blocks run with `set -euo pipefail`.
A failing block stops the run with exit status 1 and a message naming its file and line.
"""

import dataclasses
import re
import subprocess
import sys
import traceback
from pathlib import Path


RUNNABLE = ("python", "bash")
SKIP = re.compile(r"^<!-- docs-test: skip(?P<reason>.*?)-->$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
ROOT = Path(__file__).resolve().parents[1]
REPO_PREFIXES = ("examples/", "configs/", "bench/", "scripts/", "mmsa/", "tests/", "docs/", "requirements/", "space/")
REPO_FILES = ("train_hf.py", "push_to_hub.py", "app.py", "setup.cfg", "constraints.txt", "mkdocs.yml", "Makefile")
_PREFIXES = "|".join(re.escape(prefix) for prefix in REPO_PREFIXES)
_FILES = "|".join(re.escape(name) for name in REPO_FILES)
PATH_TOKEN = re.compile(rf"(?<![\w./$-])((?:{_PREFIXES})[\w./-]*|(?:{_FILES}))(?![\w/-])")


class DocBlockError(ValueError):
    """A code block that is malformed (an unclosed fence, a skip marker without a reason) or names a missing path."""


@dataclasses.dataclass
class Block:
    path: Path
    line: int
    """The line of the opening fence (1-based); the code starts on the next line."""
    lang: str
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.lang in RUNNABLE and self.skip_reason is None


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with the skip marker on the line before it."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            if SKIP.match(lines[index].strip()) and not (index + 1 < len(lines) and FENCE.match(lines[index + 1])):
                raise DocBlockError(f"{path}:{index + 1}: a docs-test marker must be on the line before a code block")
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].rstrip() == "```"), None)
        if end is None:
            raise DocBlockError(f"{path}:{index + 1}: code block never closed")
        reason = None
        marker = SKIP.match(lines[index - 1].strip()) if index else None
        if marker:
            reason = marker["reason"].strip()
            if not reason:
                raise DocBlockError(f"{path}:{index}: a docs-test skip marker needs a reason")
        blocks.append(Block(Path(path), index + 1, fence["lang"], "\n".join(lines[index + 1 : end]) + "\n", reason))
        index = end + 1
    return blocks


def missing_paths(block: Block, root: Path = ROOT) -> list[str]:
    """The repository paths a block names that do not exist under `root`."""
    missing = []
    for token in PATH_TOKEN.findall(block.code):
        token = token.rstrip(".,:;")
        if "<" in token or "*" in token or "{" in token:
            continue
        if not (root / token).exists():
            missing.append(token)
    return missing


def run_blocks(blocks: list[Block]) -> int:
    """Runs the runnable blocks in order in the current folder; returns how many ran. Raises `SystemExit(1)` with a
    message naming the failing block."""
    namespace = {"__name__": "__docs__"}
    ran = 0
    for block in blocks:
        if not block.runnable:
            continue
        print(f"--- {block.where} ({block.lang})", flush=True)
        if block.lang == "python":
            try:
                exec(compile("\n" * block.line + block.code, str(block.path), "exec"), namespace)
            except BaseException:  # noqa: BLE001 - any failure of a documented example is a failure of the docs
                traceback.print_exc()
                print(f"FAILED: the python block at {block.where}", file=sys.stderr)
                raise SystemExit(1) from None
        else:
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code])
            if result.returncode:
                print(f"FAILED: the bash block at {block.where} (exit status {result.returncode})", file=sys.stderr)
                raise SystemExit(1)
        ran += 1
    print(f"ran {ran} blocks of {len(blocks)}", flush=True)
    return ran


if __name__ == "__main__":
    run_blocks(read_blocks(Path(sys.argv[1])))
