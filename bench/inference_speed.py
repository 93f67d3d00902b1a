"""Batched inference throughput (posts/s), peak memory and predictions, with the offline backbones on this CPU.

    python bench/inference_speed.py [--model RUN_DIR] [--posts N] [--batch_size 32] [--output FILE]

Side by side, each setting in a fresh process (so that its peak RSS is its own):

- `float32, plain`: the model as loaded, default memory format (the baseline);
- `float32`: what the `multimodal-sentiment` pipeline runs by default (image tower in channels-last format);
- `float32, fast decode`: the same with `MmsaImageProcessor(fast_decode=True)` (JPEG draft mode);
- `onnx float32` / `onnx int8` (each also with fast decode): the model exported by `mmsa.onnx.export_onnx` (one
  graph; int8 by ONNX Runtime dynamic quantisation) under ONNX Runtime, the pipeline column through
  `OnnxSentimentClassifier` (`mmsa predict --backend onnx`);
- `bfloat16`: the pipeline default loaded with `dtype=torch.bfloat16`;
- `bfloat16, compiled`: plus `torch_compile=True` (the image tower compiled, static shapes, inductor freezing).

bfloat16 settings are skipped on CPUs without AVX512-BF16/AMX (`--all_settings` runs them). For each: a direct
processor + model call and the pipeline over the same posts (after one warm-up pass, which for
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
    "float32, fast decode": {
        "dtype": "float32",
        "optimize": True,
        "compile": False,
        "fast_decode": True,
        "description": "float32, channels-last, fast JPEG decode",
    },
    "onnx float32": {"backend": "onnx", "variant": "float32", "description": "ONNX Runtime float32"},
    "onnx float32, fast decode": {
        "backend": "onnx",
        "variant": "float32",
        "fast_decode": True,
        "description": "ONNX Runtime float32, fast JPEG decode",
    },
    "onnx int8": {"backend": "onnx", "variant": "int8", "description": "ONNX Runtime dynamic int8"},
    "onnx int8, fast decode": {
        "backend": "onnx",
        "variant": "int8",
        "fast_decode": True,
        "description": "ONNX Runtime dynamic int8, fast JPEG decode",
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
    """One setting, in this process: direct and pipeline throughput, predictions and peak RSS. Images are given as
    JPEG bytes, so decoding is part of the timing."""
    with open(posts_file, "rb") as file:
        posts = pickle.load(file)  # written by main() of this script, in its own scratch folder
    if setting.get("backend") == "onnx":
        return measure_onnx(model_dir, posts, setting, batch_size)
    import torch

    from mmsa import MmsaForSequenceClassification, MmsaProcessor
    from mmsa.pipeline_mmsa import MultimodalSentimentPipeline, multimodal_sentiment_pipeline

    torch.set_grad_enabled(False)
    model = MmsaForSequenceClassification.from_pretrained(model_dir, dtype=getattr(torch, setting["dtype"])).eval()
    processor = MmsaProcessor.from_pretrained(model_dir)
    processor.image_processor.fast_decode = setting.get("fast_decode", False)
    if setting["optimize"]:
        model.optimize_for_inference(compile_vision=setting["compile"])
    result = {"rss_after_load_mb": peak_rss_mb(), "model_mb": folder_mb(model_dir, "model.safetensors")}

    def direct():
        predictions = []
        for start in range(0, len(posts), batch_size):
            chunk = posts[start : start + batch_size]
            batch = processor(text=[p["text"] for p in chunk], images=[p["image"] for p in chunk])
            predictions += model(**batch).logits.argmax(-1).tolist()
        return predictions

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
        through_pipeline(classifier, posts, batch_size, model.config, result)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def measure_onnx(onnx_dir: str, posts: list, setting: dict, batch_size: int) -> dict:
    """An ONNX export under ONNX Runtime, in a process where torch, torchvision and timm cannot be imported (as with
    `pip install "mmsa[onnx]"`): the model call on preprocessed inputs, `OnnxSentimentClassifier` (the pipeline's
    interface, `mmsa predict --backend onnx`) and where the time goes, stage by stage."""
    for name in ("torch", "torchvision", "timm"):
        sys.modules[name] = None
    from mmsa.onnx_runtime import OnnxSentimentClassifier

    classifier = OnnxSentimentClassifier(onnx_dir, variant=setting["variant"], fast_decode=setting.get("fast_decode"))
    model_file = classifier.model.manifest["files"][setting["variant"]]  # the export's own record of its files
    result = {"rss_after_load_mb": peak_rss_mb(), "model_mb": folder_mb(onnx_dir, model_file)}

    def direct():
        predictions = []
        for start in range(0, len(posts), batch_size):
            batch = classifier.preprocess(posts[start : start + batch_size])
            predictions += classifier.model(**batch).argmax(-1).tolist()
        return predictions

    _, result["warmup_seconds"] = timed(direct)
    result["predictions"], seconds = timed(direct)
    result["direct_posts_per_s"] = len(posts) / seconds
    through_pipeline(classifier, posts, batch_size, classifier.model.config, result)
    result["peak_rss_mb"] = peak_rss_mb()
    result["stages_ms_per_post"] = stage_times(classifier, Path(onnx_dir) / model_file, posts, batch_size)
    return result


def graph_stages(model_path: Path) -> dict[str, str]:
    """Each node of an ONNX graph named by the stage it belongs to, from the inputs it depends on: only the text
    inputs (text tower), only `pixel_values` (image tower), both (fusion and head)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    origin = {i.name: {"image"} if i.name == "pixel_values" else {"text"} for i in graph.input}
    stages = {}
    for node in graph.node:  # ONNX graphs are stored in topological order
        depends = set().union(*(origin.get(name, set()) for name in node.input))
        for name in node.output:
            origin[name] = depends
        stages[node.name] = {frozenset({"text"}): "text tower", frozenset({"image"}): "image tower"}.get(
            frozenset(depends), "fusion and head" if depends else "constants"
        )
    return stages


def stage_times(classifier, model_path: Path, posts: list, batch_size: int) -> dict[str, float]:
    """Milliseconds per post in each stage, one stage at a time (no overlap): JPEG decoding, image preprocessing
    (resize, crop, normalise), tokenisation, then the graph's nodes under ONNX Runtime's profiler, summed by stage
    (`graph_stages` of the graph ONNX Runtime optimised), and the rest of the session call."""
    import onnxruntime as ort

    from mmsa.image_io import load_rgb_image

    processor = classifier.image_processor
    times = {}
    images, times["JPEG decode"] = timed(
        lambda: [load_rgb_image(p["image"], draft=processor.draft_size) for p in posts]
    )
    pixels, times["image preprocessing"] = timed(lambda: [processor.transform(image) for image in images])
    inputs = []
    for start in range(0, len(posts), batch_size):
        chunk = posts[start : start + batch_size]
        encoded, seconds = timed(lambda chunk=chunk: classifier.preprocess_text(chunk))
        times["tokenisation"] = times.get("tokenisation", 0.0) + seconds
        inputs.append({**encoded, "pixel_values": np.stack(pixels[start : start + batch_size])})
    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        session.run(["logits"], {k: inputs[0][k] for k in names})  # warm-up
        _, run_seconds = timed(lambda: [session.run(["logits"], {k: batch[k] for k in names}) for batch in inputs])
        events = json.loads(Path(session.end_profiling()).read_text())
        stages = graph_stages(Path(scratch) / "optimized.onnx")
    runs = sorted(e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    warmup_end = runs[0]  # nodes that ran after the warm-up run
    node_seconds = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] > warmup_end:
            stage = stages.get(event["name"].removesuffix("_kernel_time"), "other nodes")
            node_seconds[stage] = node_seconds.get(stage, 0.0) + event["dur"] / 1e6
    times.update(node_seconds)
    times["session overhead"] = max(run_seconds - sum(node_seconds.values()), 0.0)
    return {stage: round(1000 * seconds / len(posts), 3) for stage, seconds in times.items()}


def timed(function):
    start = time.perf_counter()
    output = function()
    return output, time.perf_counter() - start


def through_pipeline(classifier, posts, batch_size, config, result):
    """Times `classifier` over the posts (images as JPEG bytes) and records its rate and agreement with direct."""

    def run():
        outputs = classifier([{"text": p["text"], "image": p["image"]} for p in posts], batch_size=batch_size)
        return [config.label2id[output[0]["label"]] for output in outputs]

    predictions, seconds = timed(run)
    result["pipeline_posts_per_s"] = len(posts) / seconds
    result["pipeline_matches_direct"] = predictions == result["predictions"]


def folder_mb(folder: str, name: str) -> float:
    return round((Path(folder) / name).stat().st_size / 2**20, 1)


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

    import torch

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
        onnx_dir = str(Path(scratch) / "onnx")
        if any(setting.get("backend") == "onnx" for setting in SETTINGS.values()):
            from mmsa.onnx import export_onnx

            export_onnx(model_dir, onnx_dir, quantize="int8")
            print(f"  exported to ONNX (float32 + int8) in {onnx_dir}", flush=True)
        results = {}
        for name in SETTINGS:
            if SETTINGS[name].get("dtype") == "bfloat16" and not (cpu_bf16_support() or args.all_settings):
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
                    onnx_dir if SETTINGS[name].get("backend") == "onnx" else model_dir,
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
