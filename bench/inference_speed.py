"""Batched inference throughput (posts/s) and peak memory with the offline backbones on this CPU:
the `multimodal-sentiment` pipeline vs a direct processor + model call, side by side.

    python bench/inference_speed.py [--model RUN_DIR] [--posts 256] [--batch_size 32]

Posts are MVSA-Single test posts when MVSA_SINGLE_DIR is set (JPEGs decoded as part of the timing), else generated
photos. Without --model, a model is built from backbones/ (text + vision towers, mm_transformer fusion).
"""

import argparse
import io
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsa import MmsaForSequenceClassification, MmsaProcessor  # noqa: E402
from mmsa.cli import load_classifier  # noqa: E402


def load_posts(n: int):
    raw = os.environ.get("MVSA_SINGLE_DIR")
    if raw:
        from mmsa.data import build_mvsa

        test = build_mvsa(raw)["test"].cast_column("image", __import__("datasets").Image(decode=False))
        rows = [test[i % len(test)] for i in range(n)]
        return [{"text": r["text"], "image": r["image"]["bytes"]} for r in rows], "MVSA-Single test posts"
    rng = np.random.default_rng(0)
    posts = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        posts.append({"text": f"post {i} what a day #happy @friend http://t.co/x", "image": buffer.getvalue()})
    return posts, "generated 500x375 JPEGs"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--posts", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model_dir = args.model
    if model_dir is None:
        model = MmsaForSequenceClassification.from_text_vision_pretrained(
            str(ROOT / "backbones" / "text"), str(ROOT / "backbones" / "vision"), fusion="mm_transformer")
        from transformers import AutoTokenizer

        processor = MmsaProcessor.from_model_config(model.config, AutoTokenizer.from_pretrained(ROOT / "backbones" / "text"),
                                                    max_length=64)
        model_dir = Path("/tmp/mmsa-inference-bench")
        model.save_pretrained(model_dir)
        processor.save_pretrained(model_dir)
    posts, source = load_posts(args.posts)
    print(f"{len(posts)} {source}, batch size {args.batch_size}, {torch.get_num_threads()} threads; "
          f"baseline peak RSS {peak_rss_mb():.0f} MB")

    model = MmsaForSequenceClassification.from_pretrained(model_dir).eval()
    processor = MmsaProcessor.from_pretrained(model_dir)

    def direct():
        for start in range(0, len(posts), args.batch_size):
            chunk = posts[start : start + args.batch_size]
            batch = processor(text=[p["text"] for p in chunk], images=[Image.open(io.BytesIO(p["image"])) for p in chunk])
            model(**batch).logits.argmax(-1)

    classifier = load_classifier(str(model_dir))

    def through_pipeline():
        list(classifier(({"text": p["text"], "image": Image.open(io.BytesIO(p["image"]))} for p in posts),
                        batch_size=args.batch_size))

    for name, function in (("direct model call", direct), ("pipeline", through_pipeline)):
        function() if name == "direct model call" else None  # warm-up of kernels on the first run only
        start = time.perf_counter()
        function()
        seconds = time.perf_counter() - start
        print(f"{name:>18}: {len(posts) / seconds:6.1f} posts/s ({seconds:.1f} s), peak RSS so far "
              f"{peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
