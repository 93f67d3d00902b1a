"""The `mmsa` command line.

    mmsa predict --model M --text T --image I
    mmsa predict --model M --input posts.jsonl --output preds.jsonl [--batch_size 32] [--timeout 10]
    mmsa evaluate --model M --dataset D [--split test] [--output_dir DIR]
    mmsa explain --model M --text T --image I --output why.html|why.png|why.json [--target LABEL]
    mmsa explain --model M --input posts.jsonl --output DIR [--format html|png]
    mmsa export-onnx --model M --output DIR [--quantize int8] [--opset 18]
    mmsa calibrate --model DIR --dataset D [--split validation]
    mmsa data check DIR       # what a raw MVSA folder holds: posts, labels, undecodable files, checksums

`predict` and `evaluate` take `--device`, `--dtype bfloat16` (faster on CPUs with AVX512-BF16/AMX and on recent GPUs) and `--compile`
(compiles the image tower: a compilation on the first batch, then faster batches; for batch jobs).

`--model` is a saved model folder or a Hub id; a folder whose weights do not cover its config is refused. In batch
mode every input line is a JSON object with `text` and `image` (a file path, relative to the input file's folder,
or a URL fetched within `--timeout` seconds) and optionally `id`. Each input row gets exactly one output line, in
input order: the prediction, or an `error` naming what is wrong with that row (bad JSON, invalid UTF-8, wrong
types, unreadable or missing image, an image URL that does not answer, empty text); the other rows go on. The output
is written to a temporary file beside `--output` and renamed into place at the end, so an interrupted run leaves no
partial output. Exit status: 0 when every row was predicted, 3 when some rows failed (their number is printed).

Batch prediction shards over processes with accelerate: `accelerate launch --multi_gpu --num_processes N -m mmsa.cli
predict --input posts.jsonl --output preds.jsonl` gives each process a contiguous share of the rows (one GPU each
where there are GPUs, CPU processes where there are none) and writes one output in input order, the same as one
process would. (`accelerate launch --cpu` starts a single process whatever `--num_processes` says, in accelerate
1.x; CPU processes come from the `--multi_gpu` launcher on a machine without GPUs, or from `--mpirun_hostfile`.)
`explain` in batch mode writes `DIR/explanations.jsonl` (one record per input row, the same way) and one figure per
explained row (`DIR/line-<n>.html`); see `mmsa.explain` for what the numbers mean.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .file_utils import atomic_file, atomic_folder, atomic_path, check_output_file, check_output_folder
from .image_io import DEFAULT_IMAGE_TIMEOUT
from .posts import InvalidPost, check_text, read_post


logger = logging.getLogger(__name__)


DTYPES = ("float32", "bfloat16", "float16")
ROWS_FAILED_STATUS = 3
IMAGE_READERS = 8
"""Images of a batch are read by this many threads, so that slow URLs wait side by side, not one after another."""


def load_model(model: str, dtype: str | None = None, trust_remote_code: bool = False):
    """The model of a folder or Hub id, refused with a clear message when it cannot be loaded as it is (no such
    folder, or weights that do not cover the config: see `MmsaPreTrainedModel.from_pretrained`)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}.")
    local = Path(model).is_dir()
    if not local and (Path(model).exists() or model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise ValueError(f"model folder {model} does not exist")
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            model, dtype=getattr(torch, dtype or "float32"), trust_remote_code=trust_remote_code
        )
    except OSError as error:
        where = f"model folder {model}" if local else f"{model}: no such folder here, and as a Hub id"
        raise ValueError(f"{where} cannot be loaded: {error}") from error


def load_classifier(
    model: str,
    device: str | None = None,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    torch_compile: bool = False,
    backend: str = "torch",
    onnx_variant: str = "float32",
):
    """The `multimodal-sentiment` pipeline for a folder or Hub id (in-library classes; remote code only if asked).

    `dtype` ("float32", "bfloat16", "float16"; default: float32) is the precision the model is loaded in;
    `torch_compile` compiles the image tower (see `MmsaPreTrainedModel.optimize_for_inference`).
    `backend="onnx"`: `model` is a folder written by `mmsa export-onnx`, run by ONNX Runtime (`onnx_variant`
    "float32" or "int8") behind the same interface.
    """
    if backend == "onnx":  # needs neither torch nor timm
        from .onnx_runtime import OnnxSentimentClassifier

        return OnnxSentimentClassifier(model, variant=onnx_variant)
    from transformers import AutoProcessor

    from .pipeline_mmsa import MultimodalSentimentPipeline, multimodal_sentiment_pipeline

    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    # The in-library pipeline class, so that no code from the model folder or repository is run.
    return multimodal_sentiment_pipeline(
        loaded,
        processor,
        device=device,
        trust_remote_code=trust_remote_code,
        pipeline_class=None if trust_remote_code else MultimodalSentimentPipeline,
        torch_compile=torch_compile,
    )


def read_row(row, base: Path, config, timeout: float = DEFAULT_IMAGE_TIMEOUT, draft: int | None = None) -> dict:
    """One input row checked and its image loaded (`mmsa.posts.read_post`; image paths relative to `base`)."""
    return read_post(row, config.uses_text, config.uses_vision, base=base, timeout=timeout, draft=draft)


def read_rows(input_path: Path):
    """`(line number, row or error message)` for each non-blank line of a JSONL file, and the number of blank
    lines. Lines are split on b"\\n" only (U+2028 and friends inside strings are data), each decoded on its own
    (a bad byte spoils only its line); a UTF-8 byte-order mark is accepted; numbers are physical line numbers."""
    rows, blank = [], 0
    data = input_path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    for number, raw in enumerate(lines, start=1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            blank += 1
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            rows.append((number, f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})"))
            continue
        try:
            rows.append((number, json.loads(text)))
        except json.JSONDecodeError as error:
            rows.append((number, f"invalid JSON: {error}"))
    return rows, blank


def json_line(record: dict) -> str:
    """One output line; strings that are not valid Unicode (lone surrogates) are written escaped."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record, ensure_ascii=True)
    return line + "\n"


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def distributed_state():
    """accelerate's `PartialState` when this process is one of several started by `accelerate launch`, else None.
    On a machine without CUDA the processes are CPU processes (gloo)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def predict_file(
    classifier, input_path: Path, output_path: Path, batch_size: int, top_k, timeout: float = DEFAULT_IMAGE_TIMEOUT
) -> dict:
    """Batch prediction over a JSONL file: one output record per input row, in order, written atomically.
    Returns counts of predicted and failed rows, and of blank lines.

    Under `accelerate launch` with several processes, each process predicts one contiguous shard of the rows into a
    part file; when all are done, the main process joins the parts in order into `output_path` (atomically) and
    every process returns the totals."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if same_file(input_path, output_path):
        raise ValueError(f"--output {output_path} is the input file: choose another path")
    rows, blank = read_rows(input_path)
    state = distributed_state()
    if state is None:
        with atomic_file(output_path) as out:
            counts = predict_rows(classifier, rows, input_path.parent, out, batch_size, top_k, timeout)
        return {**counts, "blank_lines": blank}
    from accelerate.utils import gather_object

    rank, world = state.process_index, state.num_processes
    bounds = [len(rows) * i // world for i in range(world + 1)]
    parts = [output_path.with_name(f".{output_path.name}.part{i}-of-{world}") for i in range(world)]
    with atomic_file(parts[rank]) as out:
        counts = predict_rows(
            classifier, rows[bounds[rank] : bounds[rank + 1]], input_path.parent, out, batch_size, top_k, timeout,
            show_progress=state.is_main_process,
        )  # fmt: skip
    everyone = gather_object([counts])
    if state.is_main_process:
        with atomic_file(output_path) as out:
            for part in parts:
                out.write(part.read_text(encoding="utf-8"))
        for part in parts:
            part.unlink()
    state.wait_for_everyone()
    totals = {key: sum(c[key] for c in everyone) for key in counts}
    return {**totals, "blank_lines": blank, "processes": world}


def classify(classifier, posts, batch_size: int, top_k) -> list[dict]:
    """One record per post: `label` and `score` (top_k=1) or `scores` (every label), plus `text_sentiment` and
    `image_sentiment` (`{"label", "score"}`) when the model has modality heads."""
    modalities = bool(getattr(classifier.model.config, "modality_heads", False))
    extra = {"return_modalities": True} if modalities else {}
    records = []
    for prediction in classifier(posts, batch_size=batch_size, top_k=top_k, **extra):
        scores = prediction["scores"] if modalities else prediction
        record = dict(scores[0]) if top_k == 1 else {"scores": scores}
        if modalities:
            record.update(text_sentiment=prediction["text_sentiment"], image_sentiment=prediction["image_sentiment"])
        records.append(record)
    return records


@contextmanager
def reader_pool(workers: int):
    """A thread pool that is waited for when the block ends normally, and abandoned (pending reads cancelled) when
    it ends by an error or an interruption, so that SIGTERM or Ctrl-C is not held up by a slow image URL."""
    pool = ThreadPoolExecutor(workers)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def predict_rows(
    classifier, rows, base: Path, out, batch_size: int, top_k, timeout: float, show_progress: bool = True
) -> dict:
    """Writes one record per `(line number, row)` to `out`, in order; returns the counts."""
    config = classifier.model.config
    draft = getattr(classifier.image_processor, "draft_size", None)
    counts = {"rows": len(rows), "predicted": 0, "errors": 0}
    with (
        tqdm(total=len(rows), desc="predicting", unit="post", disable=not show_progress) as bar,
        reader_pool(IMAGE_READERS) as readers,
    ):

        def prepare(item):
            number, row = item
            record = {"line": number}
            if isinstance(row, str):  # the line could not be parsed
                return record, None, row
            if isinstance(row, dict):
                record["id"] = row.get("id")
            try:
                return record, read_row(row, base, config, timeout, draft), None
            except InvalidPost as error:
                return record, None, str(error)

        for start in range(0, len(rows), batch_size):
            prepared = list(readers.map(prepare, rows[start : start + batch_size]))
            posts = [post for _, post, _ in prepared if post is not None]
            predictions = iter(classify(classifier, posts, batch_size, top_k) if posts else [])
            for record, post, error in prepared:
                if post is None:
                    record["error"] = error
                else:
                    record.update(next(predictions))
                counts["errors" if "error" in record else "predicted"] += 1
                out.write(json_line(record))
            bar.update(len(prepared))
    return counts


def load_explainer(model: str):
    """The model (eval mode) and processor of a folder or Hub id, for `mmsa.explain`."""
    from transformers import AutoProcessor

    return load_model(model).eval(), AutoProcessor.from_pretrained(model)


EXPLANATION_SUFFIXES = (".html", ".png", ".json")


def save_explanation(explanation, path: Path) -> None:
    """`.html` (a page with the figure inline), `.png` (the side-by-side figure) or `.json` (the numbers), written
    to a temporary file beside `path` and renamed into place, so an interrupted run leaves no partial figure."""
    if path.suffix not in EXPLANATION_SUFFIXES:
        raise ValueError(f"--output {path}: the file name must end in .html, .png or .json")
    with atomic_path(path) as partial:
        if path.suffix == ".html":
            partial.write_text(f"<!doctype html>\n<meta charset='utf-8'>\n{explanation.to_html()}\n", encoding="utf-8")
        elif path.suffix == ".png":
            explanation.save_png(partial)
        else:
            partial.write_text(
                json.dumps(explanation.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )


def explain_file(
    model,
    processor,
    input_path: Path,
    output_dir: Path,
    fmt: str = "html",
    target=None,
    n_steps: int = 16,
    timeout: float = DEFAULT_IMAGE_TIMEOUT,
    overwrite: bool = False,
) -> dict:
    """Explains every row of a JSONL file of posts: `output_dir/explanations.jsonl` has one record per input row,
    in order (the explanation's numbers, or an `error`), and `output_dir/line-<n>.<fmt>` one figure per explained
    row. Returns counts of explained and failed rows, and of blank lines.

    The folder is written beside `output_dir` and moved into place once complete, so the records always describe
    the figures beside them; a non-empty `output_dir` is refused unless `overwrite` (then replaced as a whole)."""
    from .explain import explain

    if fmt not in ("html", "png"):
        raise ValueError(f"format must be html or png, got {fmt!r}")
    check_output_folder(output_dir, overwrite=overwrite)
    rows, blank = read_rows(input_path)
    counts = {"rows": len(rows), "explained": 0, "errors": 0, "blank_lines": blank}
    with atomic_folder(output_dir, overwrite=overwrite) as staging, atomic_file(staging / "explanations.jsonl") as out:
        for number, row in tqdm(rows, desc="explaining", unit="post"):
            record = {"line": number, "id": row.get("id") if isinstance(row, dict) else None}
            try:
                if isinstance(row, str):
                    raise InvalidPost(row)
                post = read_row(row, input_path.parent, model.config, timeout)
                explanation = explain(model, processor, post.get("text"), post.get("image"), target, n_steps)
                figure = f"line-{number}.{fmt}"
                save_explanation(explanation, staging / figure)
                record.update(explanation.to_dict(), figure=figure)
            except ValueError as error:
                record["error"] = str(error)
            counts["errors" if "error" in record else "explained"] += 1
            out.write(json_line(record))
    return counts


def evaluate_model(
    model: str,
    dataset: str,
    split: str,
    output_dir: Path | None,
    batch_size: int,
    device: str | None = None,
    dtype: str | None = None,
    torch_compile: bool = False,
    backend: str = "torch",
    onnx_variant: str = "float32",
) -> dict:
    """Metrics of a model on a dataset split (raw MVSA folder, saved folder or Hub id). Predictions and references
    are compared by label name, so the model's label order need not be the dataset's; a model whose label set
    differs from the dataset's is refused."""
    from .data import load_mvsa
    from .metrics import load_sentiment_metrics
    from .training import write_test_report

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if output_dir is not None:  # a run folder is the usual target: its other files stay, this split's are replaced
        check_output_folder(output_dir, overwrite=True, what="--output_dir")
    try:
        import sklearn  # noqa: F401  (the metrics module and the report need it)
    except ImportError:
        raise ValueError("mmsa evaluate needs scikit-learn and matplotlib: pip install 'mmsa[train]'") from None
    splits = load_mvsa(dataset)
    if split not in splits:
        raise ValueError(f"{dataset} has no split {split!r}; its splits are {', '.join(splits)}")
    data = splits[split]
    names = data.features["label"].names
    classifier = load_classifier(
        model, device=device, dtype=dtype, torch_compile=torch_compile, backend=backend, onnx_variant=onnx_variant
    )
    model_labels = set(classifier.model.config.id2label.values())
    if model_labels != set(names):
        raise ValueError(f"the model's labels {sorted(model_labels)} are not the dataset's {sorted(names)}")
    posts = ({"text": row["text"], "image": row["image"]} for row in data)  # a generator in, an iterator out
    probabilities = []
    outputs = classifier(posts, batch_size=batch_size, top_k=None)
    for output in tqdm(outputs, total=len(data), desc="evaluating", unit="post"):
        scores = {item["label"]: item["score"] for item in output}
        probabilities.append([scores[name] for name in names])
    probabilities = np.asarray(probabilities)
    predictions = probabilities.argmax(-1).tolist()
    references = list(data["label"])
    metrics = load_sentiment_metrics().compute(
        predictions=predictions, references=references, labels=list(names), probabilities=probabilities
    )
    metrics = {f"{split}_{key}": value for key, value in metrics.items()}
    metrics[f"{split}_samples"] = len(references)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_test_report(
            output_dir,
            metrics,
            np.asarray(predictions),
            np.asarray(references),
            dict(enumerate(names)),
            post_ids=list(data["id"]),
            prefix=split,
            probabilities=probabilities,
        )
    return metrics


def split_logits(model, processor, data, batch_size: int) -> dict[str, np.ndarray]:
    """The model's `logits` (and `text_logits`, `image_logits` with modality heads) on every post of a split."""
    import torch

    from .image_io import load_rgb_image

    config, outputs = model.config, {}
    for start in tqdm(range(0, len(data), batch_size), desc="predicting", unit="batch"):
        rows = data[start : start + batch_size]
        inputs = processor(
            text=rows["text"] if config.uses_text else None,
            images=[load_rgb_image(image) for image in rows["image"]] if config.uses_vision else None,
        )
        with torch.no_grad():
            result = model(**inputs)
        for key in ("logits", "text_logits", "image_logits"):
            if getattr(result, key, None) is not None:
                outputs.setdefault(key, []).append(getattr(result, key).float().numpy())
    return {key: np.concatenate(values) for key, values in outputs.items()}


RULE_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def calibrate_folder(model_dir: Path, dataset: str, split: str = "validation", batch_size: int = 32) -> dict:
    """Fits the temperature(s) of a saved model folder on a split (by negative log-likelihood) and, with modality
    heads, its rule weight (by macro-F1), and writes them into the folder's `config.json` (atomically; every other
    file and key stays as it was). Predictions never change with the temperature."""
    from .data import load_mvsa
    from .file_utils import write_text_atomic
    from .training.calibrate import CONFIG_KEYS, fit_calibration

    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise ValueError(f"--model {model_dir}: mmsa calibrate writes into a local model folder with a config.json")
    splits = load_mvsa(dataset)
    if split not in splits:
        raise ValueError(f"{dataset} has no split {split!r}; its splits are {', '.join(splits)}")
    model, processor = load_explainer(str(model_dir))
    config = model.config
    config.temperature = config.text_temperature = config.image_temperature = 1.0
    config.rule_weight = 0.0
    data = splits[split]
    logits = split_logits(model, processor, data, batch_size)
    info = fit_calibration(
        logits["logits"], data["label"], config.label2id, logits.get("text_logits"), logits.get("image_logits"),
        data, RULE_WEIGHT_GRID,
    )  # fmt: skip
    fitted = {key: info[key] for key in CONFIG_KEYS if key in info}
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    write_text_atomic(config_path, json.dumps({**saved, **fitted}, indent=2, sort_keys=True) + "\n")
    return {**info, "split": split}


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {value}")
    return number


def inference_arguments() -> argparse.ArgumentParser:
    """The options `predict` and `evaluate` share: the model, its backend, precision and batch, image URLs."""
    inference = argparse.ArgumentParser(add_help=False)
    inference.add_argument(
        "--model", required=True, help="saved model folder or Hub id (an ONNX export: --backend onnx)"
    )
    inference.add_argument("--backend", choices=("torch", "onnx"), default="torch", help="PyTorch, or ONNX Runtime")
    inference.add_argument(
        "--onnx_variant", choices=("float32", "int8"), default="float32", help="which model of an ONNX export"
    )
    inference.add_argument("--batch_size", type=positive_int, default=32)
    inference.add_argument("--device", default=None)
    inference.add_argument("--dtype", choices=DTYPES, default="float32", help="precision the model runs in")
    inference.add_argument("--compile", action="store_true", help="torch.compile the image tower")
    inference.add_argument(
        "--fast_decode", action="store_true", help="decode JPEG files at a reduced scale (PIL draft mode)"
    )
    inference.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_IMAGE_TIMEOUT,
        help="seconds an image URL may take (default: %(default)s)",
    )
    return inference


def add_predict_and_evaluate(commands) -> None:
    inference = inference_arguments()
    predict = commands.add_parser(
        "predict", parents=[inference], help="classify one post, or every post of a JSONL file"
    )
    predict.add_argument("--text")
    predict.add_argument("--image", help="image file path or URL")
    predict.add_argument("--input", type=Path, help="JSONL file of posts")
    predict.add_argument("--output", type=Path, help="JSONL file of predictions (with --input)")
    predict.add_argument("--all_scores", action="store_true", help="every label's score, not only the best")
    evaluate = commands.add_parser(
        "evaluate", parents=[inference], help="metrics and confusion matrix on a dataset split"
    )
    evaluate.add_argument("--dataset", required=True, help="raw MVSA folder, saved dataset folder or Hub id")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument("--output_dir", type=Path, default=None, help="write metrics + confusion matrix here")


def add_explain(commands) -> None:
    explainer = commands.add_parser(
        "explain", help="why the model classified a post so: word scores, image heatmap, modality shares"
    )
    explainer.add_argument("--model", required=True, help="saved model folder or Hub id")
    explainer.add_argument("--text")
    explainer.add_argument("--image", help="image file path or URL")
    explainer.add_argument("--input", type=Path, help="JSONL file of posts")
    explainer.add_argument(
        "--output", type=Path, required=True, help="out.html, out.png or out.json; a folder with --input"
    )
    explainer.add_argument("--format", choices=("html", "png"), default="html", help="figure format with --input")
    explainer.add_argument("--target", default=None, help="label to explain (default: the predicted one)")
    explainer.add_argument("--steps", type=positive_int, default=16, help="integrated-gradients steps")
    explainer.add_argument("--timeout", type=positive_float, default=DEFAULT_IMAGE_TIMEOUT)
    explainer.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --output folder (with --input) once complete"
    )


def add_calibrate_and_export(commands) -> None:
    calibrator = commands.add_parser(
        "calibrate", help="fit a model folder's temperature on a dataset split and write it into its config.json"
    )
    calibrator.add_argument("--model", required=True, type=Path, help="a saved model folder (written in place)")
    calibrator.add_argument("--dataset", required=True, help="raw MVSA folder, saved dataset folder or Hub id")
    calibrator.add_argument("--split", default="validation", help="never the test split you report on")
    calibrator.add_argument("--batch_size", type=positive_int, default=32)
    exporter = commands.add_parser(
        "export-onnx", help="export a model folder to ONNX (one graph), optionally with a dynamic-int8 variant"
    )
    exporter.add_argument("--model", required=True, help="saved model folder or Hub id")
    exporter.add_argument("--output", type=Path, required=True, help="folder to write")
    exporter.add_argument("--quantize", choices=("int8",), default=None, help="also write model_int8.onnx")
    exporter.add_argument("--opset", type=positive_int, default=18)
    exporter.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --output folder once the new export is complete"
    )


def add_data(commands) -> None:
    from .data import add_check_command

    data = commands.add_parser("data", help="check a raw MVSA release folder (`mmsa data check DIR`)")
    add_check_command(data.add_subparsers(dest="data_command", required=True), prog="mmsa data")


def build_parser() -> argparse.ArgumentParser:
    """The `mmsa` argument parser, one subcommand each: predict, evaluate, explain, calibrate, export-onnx, data."""
    parser = argparse.ArgumentParser(
        prog="mmsa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_predict_and_evaluate(commands)
    add_explain(commands)
    add_calibrate_and_export(commands)
    add_data(commands)
    return parser


def run_evaluate(parser, args) -> dict:
    metrics = evaluate_model(
        args.model,
        args.dataset,
        args.split,
        args.output_dir,
        args.batch_size,
        args.device,
        args.dtype,
        args.compile,
        args.backend,
        args.onnx_variant,
    )
    print(json.dumps(metrics, indent=2))
    return metrics


def run_calibrate(parser, args) -> dict:
    result = calibrate_folder(args.model, args.dataset, args.split, args.batch_size)
    print(json.dumps(result, indent=2))
    return result


def run_data(parser, args) -> dict:
    """`mmsa data check DIR`: prints what the folder holds; a folder that is not usable exits with status 1."""
    from .data import run_check

    status = run_check(parser, args)
    if status:
        parser.exit(status)
    return {"usable": True}


def run_export(parser, args) -> Path:
    from .onnx import export_onnx

    folder = export_onnx(args.model, args.output, quantize=args.quantize, opset=args.opset, overwrite=args.overwrite)
    print(f"-> {folder}", file=sys.stderr)
    return folder


def run(argv=None):
    """Runs one `mmsa` command and returns its result (the prediction(s), counts or metrics)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    commands = {
        "predict": run_predict,
        "evaluate": run_evaluate,
        "explain": run_explain,
        "calibrate": run_calibrate,
        "export-onnx": run_export,
        "data": run_data,
    }
    try:
        return commands[args.command](parser, args)
    except ValueError as error:  # a problem with what was asked: the message says what, no traceback
        parser.exit(2, f"mmsa {args.command}: error: {error}\n")


def report_counts(counts: dict, done: str, output: Path) -> dict:
    """Prints a batch's summary line to stderr ("N rows: n predicted, m failed -> OUT") and returns the counts."""
    blank = f", {counts['blank_lines']} blank lines ignored" if counts["blank_lines"] else ""
    processes = f" by {counts['processes']} processes" if counts.get("processes", 1) > 1 else ""
    print(
        f"{counts['rows']} rows: {counts[done]} {done}{processes}, {counts['errors']} failed{blank} -> {output}",
        file=sys.stderr,
    )
    return counts


def run_predict(parser, args):
    top_k = None if args.all_scores else 1
    if args.input:
        if not args.output:
            parser.error("--input needs --output")
        if not args.input.is_file():
            parser.error(f"--input {args.input} is not a file")
        if same_file(args.input, args.output):
            parser.error(f"--output {args.output} is the input file: choose another path")
        check_output_file(args.output)  # before the batch runs, not after
    elif args.text is not None:
        check_text(args.text)  # invalid UTF-8 on the command line arrives as lone surrogates
    state = distributed_state() if args.input else None
    device = args.device
    if device is None and state is not None and state.device.type != "cpu":
        device = str(state.device)  # one accelerator per process
    classifier = load_classifier(
        args.model,
        device,
        dtype=args.dtype,
        torch_compile=args.compile,
        backend=args.backend,
        onnx_variant=args.onnx_variant,
    )
    classifier.image_processor.fast_decode = args.fast_decode
    if args.input:
        counts = predict_file(classifier, args.input, args.output, args.batch_size, top_k, args.timeout)
        if state is not None and not state.is_main_process:
            return counts
        return report_counts(counts, "predicted", args.output)
    draft = getattr(classifier.image_processor, "draft_size", None)
    post = read_row({"text": args.text, "image": args.image}, Path.cwd(), classifier.model.config, args.timeout, draft)
    if getattr(classifier.model.config, "modality_heads", False):
        result = classify(classifier, [post], 1, top_k)[0]  # with text_sentiment and image_sentiment
    else:
        result = classifier(post, top_k=top_k)
    print(json.dumps(result, ensure_ascii=False))
    return result


def run_explain(parser, args):
    from .explain import explain

    if args.input:
        if not args.input.is_file():
            parser.error(f"--input {args.input} is not a file")
        check_output_folder(args.output, overwrite=args.overwrite)
        model, processor = load_explainer(args.model)
        counts = explain_file(
            model, processor, args.input, args.output, args.format, args.target, args.steps, args.timeout,
            overwrite=args.overwrite,
        )  # fmt: skip
        return report_counts(counts, "explained", args.output)
    if args.output.suffix not in EXPLANATION_SUFFIXES:
        parser.error(f"--output {args.output}: the file name must end in .html, .png or .json")
    check_output_file(args.output)
    if args.text is not None:
        check_text(args.text)
    model, processor = load_explainer(args.model)
    post = read_row({"text": args.text, "image": args.image}, Path.cwd(), model.config, args.timeout)
    explanation = explain(model, processor, post.get("text"), post.get("image"), args.target, args.steps)
    save_explanation(explanation, args.output)
    result = explanation.to_dict()
    print(json.dumps(result, ensure_ascii=False))
    return result


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that the temporary files of atomic writes are removed on the way out."""


def exit_on_sigterm() -> None:
    """Turns SIGTERM into `Terminated` in the main thread (Python's default ends the process without running
    `finally` blocks, leaving temporary files behind)."""

    def stop(signum, frame):
        raise Terminated(128 + signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def main(argv=None) -> int:
    """The console script: 0 on success, 3 when some rows of a batch failed, 2 for a bad request, 143 on SIGTERM
    (once the temporary files are removed; threads still waiting on image URLs are not waited for)."""
    exit_on_sigterm()
    try:
        result = run(argv)
    except Terminated as stop:
        sys.stderr.flush()
        os._exit(stop.code)
    if isinstance(result, dict) and result.get("errors"):
        return ROWS_FAILED_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
