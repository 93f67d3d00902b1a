"""Seconds to explain one post (`mmsa.explain`, words + heatmap + shares), on real test posts of MVSA-Single.

    MVSA_SINGLE_DIR=../shared/data/MVSA_Single python bench/explain_speed.py --model runs/offline_minilm_effnet

Posts are explained one after another (as the demo and `mmsa explain` do), after one warm-up post; image reading is
included. Prints the mean, median and slowest time per post, the thread count and the model.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/offline_minilm_effnet")
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "explain_speed.json")
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    import mmsa  # noqa: F401
    from mmsa.data import load_mvsa
    from mmsa.explain import explain

    model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    test = load_mvsa(os.environ["MVSA_SINGLE_DIR"])["test"].select(range(args.posts + 1))
    times = []
    for index, row in enumerate(test):
        start = time.perf_counter()
        explain(model, processor, row["text"], row["image"], n_steps=args.steps)
        if index:  # the first post warms up
            times.append(time.perf_counter() - start)
    result = {
        "command": "python bench/explain_speed.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "fusion": model.config.fusion,
        "posts": len(times),
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "mean_seconds": round(statistics.mean(times), 3),
        "median_seconds": round(statistics.median(times), 3),
        "max_seconds": round(max(times), 3),
    }
    print(json.dumps(result, indent=2))
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
