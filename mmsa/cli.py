"""The `mmsa` command line.

    mmsa predict --model M --text T --image I
    mmsa predict --model M --input posts.jsonl --output preds.jsonl [--batch_size 32]
    mmsa evaluate --model M --dataset D [--split test] [--output_dir DIR]

Both take `--device`, `--dtype bfloat16` (faster on CPUs with AVX512-BF16/AMX and on recent GPUs) and `--compile`
(compiles the image tower: a compilation on the first batch, then faster batches; for batch jobs).

`--model` is a saved model folder or a Hub id. In batch mode every input line is a JSON object with `text` and
`image` (a file path, relative to the input file's folder, or a URL) and optionally `id`; each output line holds the
prediction, or an `error` for a row that cannot be read (missing or broken image, empty text), and the rest go on.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers.image_utils import load_image


logger = logging.getLogger(__name__)


DTYPES = ("float32", "bfloat16", "float16")


def load_classifier(model: str, device: str | None = None, trust_remote_code: bool = False,
                    dtype: str | None = None, torch_compile: bool = False):
    """The `multimodal-sentiment` pipeline for a folder or Hub id (in-library classes; remote code only if asked).

    `dtype` ("float32", "bfloat16", "float16"; default: float32) is the precision the model is loaded in;
    `torch_compile` compiles the image tower (see `MmsaPreTrainedModel.optimize_for_inference`).
    """
    import torch
    from transformers import pipeline

    from .pipeline_mmsa import MultimodalSentimentPipeline

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    # The in-library pipeline class, so that no code from the model folder or repository is run.
    return pipeline("multimodal-sentiment", model=model, device=device, trust_remote_code=trust_remote_code,
                    pipeline_class=None if trust_remote_code else MultimodalSentimentPipeline,
                    dtype=getattr(torch, dtype or "float32"), torch_compile=torch_compile)


def read_post(row: dict, base: Path, config) -> dict:
    """Validates one input row and loads its image; raises ValueError with what is wrong."""
    text, image = row.get("text"), row.get("image")
    if config.uses_text and not (isinstance(text, str) and text.strip()):
        raise ValueError("empty or missing 'text'")
    post = {"text": text}
    if config.uses_vision:
        if not image:
            raise ValueError("missing 'image'")
        location = image if str(image).startswith(("http://", "https://")) else str(base / image)
        if location == str(base / image) and not (base / image).is_file():
            raise ValueError(f"image file {base / image} does not exist")
        try:
            post["image"] = load_image(location)
            post["image"].load()
        except Exception as error:  # missing file, truncated or undecodable image, unreachable URL
            raise ValueError(f"cannot read image {image!r}: {type(error).__name__}: {error}") from error
    return post


def predict_file(classifier, input_path: Path, output_path: Path, batch_size: int, top_k) -> dict:
    """Batch prediction over a JSONL file; returns counts of predicted and failed rows."""
    lines = [line for line in input_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    config = classifier.model.config
    counts = {"predicted": 0, "errors": 0}
    with output_path.open("w", encoding="utf-8") as out, tqdm(total=len(lines), desc="predicting", unit="post") as bar:
        for start in range(0, len(lines), batch_size):
            records, posts, slots = [], [], []
            for number, line in enumerate(lines[start : start + batch_size], start=start + 1):
                record = {"line": number}
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("a line must be a JSON object with 'text' and 'image'")
                    record["id"] = row.get("id")
                    posts.append(read_post(row, input_path.parent, config))
                    slots.append(len(records))
                except json.JSONDecodeError as error:
                    record["error"] = f"invalid JSON: {error}"
                except ValueError as error:
                    record["error"] = str(error)
                records.append(record)
            if posts:
                predictions = classifier(posts, batch_size=batch_size, top_k=top_k)
                for slot, prediction in zip(slots, predictions):
                    if top_k == 1:
                        records[slot].update(prediction[0])
                    else:
                        records[slot]["scores"] = prediction
            for record in records:
                counts["errors" if "error" in record else "predicted"] += 1
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            bar.update(len(records))
    return counts


def evaluate_model(model: str, dataset: str, split: str, output_dir: Path | None, batch_size: int,
                   device: str | None = None, dtype: str | None = None, torch_compile: bool = False) -> dict:
    """Metrics of a model on a dataset split (raw MVSA folder, saved folder or Hub id)."""
    from .data import LABELS, load_mvsa
    from .metrics import load_sentiment_metrics
    from .training import write_test_report

    classifier = load_classifier(model, device=device, dtype=dtype, torch_compile=torch_compile)
    data = load_mvsa(dataset)[split]
    posts = [{"text": row["text"], "image": row["image"]} for row in data]
    predictions = []
    outputs = classifier((post for post in posts), batch_size=batch_size)  # a generator in, an iterator out
    for output in tqdm(outputs, total=len(posts), desc="evaluating", unit="post"):
        predictions.append(classifier.model.config.label2id[output[0]["label"]])
    references = list(data["label"])
    metrics = load_sentiment_metrics().compute(predictions=predictions, references=references, labels=list(LABELS))
    metrics = {f"{split}_{key}": value for key, value in metrics.items()}
    metrics[f"{split}_samples"] = len(references)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_test_report(output_dir, metrics, np.asarray(predictions), np.asarray(references), dict(enumerate(LABELS)))
    return metrics


def run(argv=None):
    """Runs one `mmsa` command and returns its result (the prediction(s), counts or metrics)."""
    parser = argparse.ArgumentParser(prog="mmsa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    inference = argparse.ArgumentParser(add_help=False)
    inference.add_argument("--model", required=True, help="saved model folder or Hub id")
    inference.add_argument("--batch_size", type=int, default=32)
    inference.add_argument("--device", default=None)
    inference.add_argument("--dtype", choices=DTYPES, default="float32", help="precision the model runs in")
    inference.add_argument("--compile", action="store_true", help="torch.compile the image tower")
    predict = commands.add_parser("predict", parents=[inference],
                                  help="classify one post, or every post of a JSONL file")
    predict.add_argument("--text")
    predict.add_argument("--image", help="image file path or URL")
    predict.add_argument("--input", type=Path, help="JSONL file of posts")
    predict.add_argument("--output", type=Path, help="JSONL file of predictions (with --input)")
    predict.add_argument("--all_scores", action="store_true", help="every label's score, not only the best")
    evaluate = commands.add_parser("evaluate", parents=[inference], help="metrics and confusion matrix on a dataset split")
    evaluate.add_argument("--dataset", required=True, help="raw MVSA folder, saved dataset folder or Hub id")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--output_dir", type=Path, default=None, help="write metrics + confusion matrix here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "predict":
        top_k = None if args.all_scores else 1
        if args.input:
            if not args.output:
                parser.error("--input needs --output")
            classifier = load_classifier(args.model, device=args.device, dtype=args.dtype, torch_compile=args.compile)
            counts = predict_file(classifier, args.input, args.output, args.batch_size, top_k)
            print(f"{counts['predicted']} predicted, {counts['errors']} errors -> {args.output}", file=sys.stderr)
            return counts
        classifier = load_classifier(args.model, device=args.device, dtype=args.dtype, torch_compile=args.compile)
        try:
            post = read_post({"text": args.text, "image": args.image}, Path.cwd(), classifier.model.config)
        except ValueError as error:
            parser.error(str(error))
        result = classifier(post, top_k=top_k)
        print(json.dumps(result, ensure_ascii=False))
        return result

    metrics = evaluate_model(args.model, args.dataset, args.split, args.output_dir, args.batch_size, args.device,
                             args.dtype, args.compile)
    print(json.dumps(metrics, indent=2))
    return metrics


def main(argv=None) -> int:
    """The console script: exit status 0 on success (errors exit through argparse or an exception)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
