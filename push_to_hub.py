#!/usr/bin/env python
"""Publish a `train_hf.py` output folder to the Hugging Face Hub, in one commit.

    python push_to_hub.py --model_dir runs/offline_minilm_effnet --repo_id USER/NAME [--tag v0.1.0]
        [--revision BRANCH] [--private] [--dry_run DIR] [--dataset_dir SAVED_DATASET [--dataset_repo_id USER/DATA]]

Uploads model.safetensors, config.json (with `auto_map` and `custom_pipelines`), the custom code, the processor
files, the model card (README.md, built from the run's own results) and its images. `--dry_run DIR` writes exactly
that folder and uploads nothing. The token comes from `HF_TOKEN` or the stored login (`hf auth login`); it is never
printed. `--dataset_dir` also publishes a dataset saved by `python -m mmsa.data build`.
"""

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from huggingface_hub import HfApi

from mmsa import MmsaForSequenceClassification, MmsaProcessor
from mmsa.file_utils import OutputPathError, atomic_folder, check_output_folder, is_inside
from mmsa.model_card import build_model_card
from mmsa.pipeline_mmsa import save_for_pipeline


logger = logging.getLogger("push_to_hub")

REQUIRED_FILES = ("config.json", "model.safetensors", "test_results.json", "trainer_state.json", "run_info.json")
EXAMPLES = Path(__file__).resolve().parent / "examples"
EXTRA_FILES = (
    "test_confusion_matrix.png",
    "test_confusion_matrix.json",
    "test_results.json",
    "test_classification_report.txt",
    "all_results.json",
)
"""Report files of the test split copied beside the model (named by their split, so a validation report written by
`mmsa evaluate --split validation` is never published as the test one)."""


class PublishError(RuntimeError):
    """The folder is not fit to publish; the message says why."""


def read_test_results(model_dir: Path) -> dict:
    """`test_results.json` as a dict of numbers, or `PublishError` naming the file and what is wrong with it."""
    path = model_dir / "test_results.json"
    try:
        test = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PublishError(f"{path} is not valid JSON ({error}): re-run the evaluation to write it again.") from None
    if not isinstance(test, dict):
        raise PublishError(f"{path}: expected a JSON object of metrics, got {type(test).__name__}.")
    wrong = [key for key, value in test.items() if isinstance(value, bool) or not isinstance(value, (int, float))]
    if wrong:
        raise PublishError(f"{path}: the metrics {', '.join(wrong)} are not numbers.")
    return test


def check_model_dir(model_dir: Path):
    """Refuses a folder without test results, or one whose model or processor does not load cleanly."""
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise PublishError(
            f"{model_dir} is not a finished train_hf.py run: missing {', '.join(missing)}. Publish only runs that "
            "were evaluated on the test split (test_results.json)."
        )
    test = read_test_results(model_dir)
    absent = [key for key in ("test_accuracy", "test_macro_f1", "test_weighted_f1") if key not in test]
    if absent:
        raise PublishError(f"{model_dir / 'test_results.json'} lacks {', '.join(absent)}.")
    try:
        model, info = MmsaForSequenceClassification.from_pretrained(model_dir, output_loading_info=True)
        processor = MmsaProcessor.from_pretrained(model_dir)
    except Exception as error:
        raise PublishError(f"{model_dir} does not load: {type(error).__name__}: {error}") from error
    problems = {kind: keys for kind, keys in info.items() if keys and kind != "error_msgs"}
    if problems:
        raise PublishError(f"{model_dir} does not load cleanly: {problems}")
    return model, processor


def explain_example(model, processor, figure: Path) -> dict | None:
    """Explains the first example post of `examples/posts.jsonl` (made for the demo, not MVSA data) and saves the
    figure; None, with a warning, when captum is not installed."""
    from mmsa.explain import explain

    try:
        import captum  # noqa: F401
    except ImportError:
        logger.warning("captum is not installed: the model card gets no example explanation")
        return None
    post = json.loads((EXAMPLES / "posts.jsonl").read_text().splitlines()[0])
    config = model.config
    explanation = explain(
        model,
        processor,
        post["text"] if config.uses_text else None,
        str(EXAMPLES / post["image"]) if config.uses_vision else None,
    )
    explanation.save_png(figure)
    return {**explanation.to_dict(), "text": post["text"]}


def check_stage_folder(model_dir: Path, folder: Path, overwrite: bool = False) -> None:
    """Refuses, before any work, an upload folder that is the model folder, lies inside it or holds it (writing
    there would rewrite the source), a file, or a non-empty folder unless `overwrite`."""
    if is_inside(folder, model_dir) or is_inside(model_dir, folder):
        raise PublishError(
            f"--dry_run {folder} is, or overlaps, the model folder {model_dir}: writing there would rewrite the "
            "model's own files; choose a new folder"
        )
    try:
        check_output_folder(folder, overwrite=overwrite, what="--dry_run")
    except OutputPathError as error:
        raise PublishError(str(error)) from None


def stage(
    model_dir: Path,
    folder: Path,
    repo_id: str,
    dataset_id: str | None,
    license: str,
    overwrite=False,
    revision: str | None = None,
) -> Path:
    """Writes the folder to upload: model (with auto_map, custom_pipelines, code), processor, card, images. It is
    written beside `folder` and moved into place once complete (an existing folder is replaced only then)."""
    check_stage_folder(model_dir, folder, overwrite)
    model, processor = check_model_dir(model_dir)
    with atomic_folder(folder, overwrite=overwrite, what="--dry_run") as staging:
        explanation = explain_example(model, processor, staging / "explanation.png")
        save_for_pipeline(model, processor, staging)
        for name in EXTRA_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, staging / name)
        card = build_model_card(
            model_dir, repo_id, dataset_id=dataset_id, license=license, explanation=explanation, revision=revision
        )
        card.save(staging / "README.md")
    return folder


def publish(args) -> str:
    model_dir = Path(args.model_dir)
    if args.dry_run:
        folder = stage(
            model_dir,
            Path(args.dry_run),
            args.repo_id,
            args.dataset_repo_id,
            args.license,
            overwrite=args.overwrite,
            revision=args.tag,
        )
        print(f"dry run: wrote {folder} ({', '.join(sorted(p.name for p in folder.iterdir()))}); nothing uploaded")
        return str(folder)

    api = HfApi()  # token: HF_TOKEN or the stored login, never printed
    with tempfile.TemporaryDirectory() as tmp:
        folder = stage(
            model_dir, Path(tmp) / "upload", args.repo_id, args.dataset_repo_id, args.license, revision=args.tag
        )
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        if args.revision:
            api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        test = read_test_results(model_dir)
        message = args.commit_message or (
            f"Upload MMSA model ({json.loads((folder / 'config.json').read_text())['fusion']}; "
            f"test accuracy {test['test_accuracy']:.4f}, macro-F1 {test['test_macro_f1']:.4f})"
        )
        commit = api.upload_folder(
            repo_id=args.repo_id, folder_path=str(folder), revision=args.revision, commit_message=message
        )
    if args.tag:
        api.create_tag(args.repo_id, tag=args.tag, revision=args.revision, tag_message=f"Release {args.tag}")
    if args.dataset_dir:
        from datasets import load_from_disk

        from mmsa.data import REPORT_FILE, push_mvsa

        report = json.loads((Path(args.dataset_dir) / REPORT_FILE).read_text())
        push_mvsa(load_from_disk(args.dataset_dir), report, args.dataset_repo_id, private=args.private)
    print(f"published {args.repo_id}" + (f" (tag {args.tag})" if args.tag else ""))
    return str(commit)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a train_hf.py output folder")
    parser.add_argument("--repo_id", required=True, help="Hub repository, USER/NAME")
    parser.add_argument("--tag", default=None, help="create this release tag on the new commit")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry_run", metavar="DIR", default=None, help="write the upload folder here, upload nothing")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="with --dry_run: replace a non-empty folder once the new one is complete",
    )
    parser.add_argument("--commit_message", default=None)
    parser.add_argument(
        "--license", default="other", help="model license for the card (default: other, research-only)"
    )
    parser.add_argument("--dataset_dir", default=None, help="also publish this saved MVSA dataset folder")
    parser.add_argument(
        "--dataset_repo_id",
        default=None,
        help="Hub dataset repository (default: USER/mvsa-single, USER taken from --repo_id)",
    )
    args = parser.parse_args(argv)
    if args.dataset_repo_id is None:
        args.dataset_repo_id = f"{args.repo_id.split('/')[0]}/mvsa-single" if "/" in args.repo_id else "mvsa-single"
    return args


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return publish(parse_args(argv))
    except (PublishError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
