"""Batched inference throughput (posts/s), peak memory and predictions, with the offline backbones on this CPU.

    python bench/inference_speed.py [--model RUN_DIR] [--posts N] [--batch_size 32] [--output FILE]

Side by side, each setting in a fresh process (so that its peak RSS is its own):

- `float32, plain`: the model as loaded, default memory format (the baseline);
- `float32`: what the `multimodal-sentiment` pipeline runs by default (image tower in channels-last format);
- `bfloat16`: the same, loaded with `dtype=torch.bfloat16`;
- `bfloat16, compiled`: plus `torch_compile=True` (the image tower compiled, static shapes, inductor freezing).

For each: a direct processor + model call and the pipeline over the same posts (after one warm-up pass, which for
the compiled setting includes the compilation and is reported separately), peak RSS, and how many predictions
agree with the baseline's. Posts are the MVSA-Single test split when MVSA_SINGLE_DIR is set (JPEG bytes, decoded as
part of the timing; accuracy is reported too), else generated photos. Without --model, a model is built from
backbones/ (text + vision towers, mm_transformer fusion, untrained fusion layers).
"""

import argparse
import io
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "float32, plain": {
        "dtype": "float32",
        "optimize": False,
        "compile": False,
        "description": "float32, model as loaded",
    },
    "float32": {
        "dtype": "float32",
        "optimize": True,
        "compile": False,
        "description": "float32, channels-last (pipeline default)",
    },
    "bfloat16": {"dtype": "bfloat16", "optimize": True, "compile": False, "description": "bfloat16"},
    "bfloat16, compiled": {
        "dtype": "bfloat16",
        "optimize": True,
        "compile": True,
        "description": "bfloat16, compiled image tower",
    },
}


def cpu_bf16_support() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere bfloat16 is emulated and slower
    than float32 (8x on an AVX2-only CPU, measured on one batch of the model)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def load_posts(n: int | None):
    """Posts as `{"text", "image" (JPEG bytes), "label"}`, and where they come from."""
    raw = os.environ.get("MVSA_SINGLE_DIR")
    if raw:
        import datasets

        from mmsa.data import build_mvsa

        test = build_mvsa(raw)["test"].cast_column("image", datasets.Image(decode=False))
        n = n or len(test)
        rows = [test[i % len(test)] for i in range(n)]
        posts = [{"text": r["text"], "image": r["image"]["bytes"], "label": r["label"]} for r in rows]
        return posts, f"MVSA-Single test posts ({len(test)} in the split)"
    rng = np.random.default_rng(0)
    posts = []
    for i in range(n or 256):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        posts.append(
            {"text": f"post {i} what a day #happy @friend http://t.co/x", "image": buffer.getvalue(), "label": None}
        )
    return posts, "generated 500x375 JPEGs"


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_default_model(model_dir: Path):
    from transformers import AutoTokenizer

    from mmsa import MmsaForSequenceClassification, MmsaProcessor

    model = MmsaForSequenceClassification.from_text_vision_pretrained(
        str(ROOT / "backbones" / "text"), str(ROOT / "backbones" / "vision"), fusion="mm_transformer"
    )
    processor = MmsaProcessor.from_model_config(
        model.config, AutoTokenizer.from_pretrained(ROOT / "backbones" / "text"), max_length=64
    )
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)


def measure(model_dir: str, posts_file: str, setting: dict, batch_size: int) -> dict:
    """One setting, in this process: direct and pipeline throughput, predictions and peak RSS."""

    from mmsa import MmsaForSequenceClassification, MmsaProcessor
    from mmsa.pipeline_mmsa import MultimodalSentimentPipeline, multimodal_sentiment_pipeline

    torch.set_grad_enabled(False)
    with open(posts_file, "rb") as file:
        posts = pickle.load(file)
    model = MmsaForSequenceClassification.from_pretrained(model_dir, dtype=getattr(torch, setting["dtype"])).eval()
    processor = MmsaProcessor.from_pretrained(model_dir)
    if setting["optimize"]:
        model.optimize_for_inference(compile_vision=setting["compile"])
    result = {"rss_after_load_mb": peak_rss_mb()}

    def direct():
        predictions = []
        for start in range(0, len(posts), batch_size):
            chunk = posts[start : start + batch_size]
            batch = processor(
                text=[p["text"] for p in chunk], images=[Image.open(io.BytesIO(p["image"])) for p in chunk]
            )
            predictions += model(**batch).logits.argmax(-1).tolist()
        return predictions

    def timed(function):
        start = time.perf_counter()
        output = function()
        return output, time.perf_counter() - start

    _, result["warmup_seconds"] = timed(direct)
    result["predictions"], seconds = timed(direct)
    result["direct_posts_per_s"] = len(posts) / seconds
    if setting["optimize"]:
        # The pipeline on the same model object (it runs `optimize_for_inference` itself; a second call is a no-op).
        classifier = multimodal_sentiment_pipeline(
            model,
            processor,
            pipeline_class=MultimodalSentimentPipeline,
            torch_compile=setting["compile"],
        )

        def through_pipeline():
            outputs = classifier(
                ({"text": p["text"], "image": Image.open(io.BytesIO(p["image"]))} for p in posts),
                batch_size=batch_size,
            )
            return [model.config.label2id[output[0]["label"]] for output in outputs]

        pipeline_predictions, seconds = timed(through_pipeline)
        result["pipeline_posts_per_s"] = len(posts) / seconds
        result["pipeline_matches_direct"] = pipeline_predictions == result["predictions"]
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a train_hf.py output folder (default: built from backbones/)")
    parser.add_argument("--posts", type=int, default=None, help="default: the whole test split (or 256 generated)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "inference_speed.json")
    parser.add_argument(
        "--all_settings", action="store_true", help="measure bfloat16 even on a CPU without native bfloat16"
    )
    parser.add_argument("--worker", nargs=3, metavar=("MODEL_DIR", "POSTS_FILE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        model_dir, posts_file, name = args.worker
        print(json.dumps(measure(model_dir, posts_file, SETTINGS[name], args.batch_size)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None:
            model_dir = str(Path(scratch) / "model")
            build_default_model(Path(model_dir))
        posts, source = load_posts(args.posts)
        posts_file = str(Path(scratch) / "posts.pkl")
        with open(posts_file, "wb") as file:
            pickle.dump(posts, file)
        print(
            f"{len(posts)} {source}, batch size {args.batch_size}, {torch.get_num_threads()} threads, "
            f"model {args.model or 'from backbones/'}",
            flush=True,
        )
        results = {}
        for name in SETTINGS:
            if SETTINGS[name]["dtype"] == "bfloat16" and not (cpu_bf16_support() or args.all_settings):
                results[name] = {"skipped": "no AVX512-BF16/AMX on this CPU (bfloat16 would be emulated)"}
                print(f"  skipped {name}: {results[name]['skipped']}", flush=True)
                continue
            completed = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--batch_size",
                    str(args.batch_size),
                    "--worker",
                    model_dir,
                    posts_file,
                    name,
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            results[name] = json.loads(completed.stdout.strip().splitlines()[-1])
            print(f"  measured {name}", flush=True)

    baseline = results["float32, plain"]["predictions"]
    labels = [p["label"] for p in posts]
    header = (
        f"{'setting':>20} | {'direct posts/s':>14} | {'pipeline posts/s':>16} | {'warm-up pass s':>14} | "
        f"{'peak RSS MB':>11} | {'agree w/ baseline':>17} | {'accuracy':>8}"
    )
    print(header + "\n" + "-" * len(header))
    for name, result in results.items():
        if "skipped" in result:
            continue
        predictions = result.pop("predictions")
        result["agreement_with_baseline"] = float(np.mean(np.asarray(predictions) == np.asarray(baseline)))
        result["accuracy"] = (
            float(np.mean(np.asarray(predictions) == np.asarray(labels))) if labels[0] is not None else None
        )
        pipeline_rate = result.get("pipeline_posts_per_s")
        print(
            f"{name:>20} | {result['direct_posts_per_s']:14.1f} | "
            f"{pipeline_rate if pipeline_rate is None else round(pipeline_rate, 1)!s:>16} | "
            f"{result['warmup_seconds']:14.1f} | {result['peak_rss_mb']:11.0f} | "
            f"{result['agreement_with_baseline']:17.4f} | "
            f"{'-' if result['accuracy'] is None else format(result['accuracy'], '.4f'):>8}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "command": "python bench/inference_speed.py " + " ".join(sys.argv[1:]),
                "posts": len(posts),
                "source": source,
                "batch_size": args.batch_size,
                "model": args.model,
                "threads": torch.get_num_threads(),
                "cpu": cpu_name(),
                "torch": torch.__version__,
                "settings": SETTINGS,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
