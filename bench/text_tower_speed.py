"""Seconds per training epoch when the text tower is fine-tuned and the frozen image tower is read from the cache.

    MVSA_SINGLE_DIR=... python bench/text_tower_speed.py [--steps 12] [--cpu_threads 2] [--pairs NAME ...]

For each pair (MiniLM-L6 + EfficientNet-Lite0 from backbones/, MPNet + EfficientNet-Lite2 from backbones-large/):
every text layer trained; the top two only, running the whole tower at each step and then from the cached hidden
states entering the first trained layer (`--cache_text_hidden_states`); and every layer but the embeddings, cached
(`--text_trainable_layers L`). `train_hf.py` runs `--steps` training steps of batch 16 (after the image features,
and where cached the hidden states, are in the cache), and the time per step, times the steps of one epoch of the
seed-42 train split, is the time per epoch. The settings run one after the other in one process, so their ratios are
side by side. Results go to bench/results/text_tower_speed.json.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAIRS = {
    "MiniLM-L6 + EfficientNet-Lite0": ("backbones/text", "backbones/vision", 6),
    "MPNet + EfficientNet-Lite2": ("backbones-large/text", "backbones-large/vision", 12),
}
"""Name -> (text tower, image tower, text layers)."""


STEPS_PER_EPOCH = -(-3608 // 16)
"""Training steps of one epoch of the seed-42 train split at batch 16."""


def time_steps(flags: list[str], steps: int, cpu_threads: int) -> dict:
    """Runs `steps` training steps of `train_hf.py` (the main job's config with `naive_combine` and `flags`), after
    its caches are filled, and returns the seconds per step, per epoch, and the wall time with set-up."""
    import train_hf

    with tempfile.TemporaryDirectory() as scratch:
        argv = [
            "configs/offline_minilm_effnet.yaml", "--fusion", "naive_combine", *flags,
            "--max_steps", str(steps), "--eval_strategy", "no", "--save_strategy", "no",
            "--load_best_model_at_end", "false", "--do_eval", "false", "--do_predict", "false",
            "--calibration", "none", "--calibration_holdout", "0",
            "--cpu_threads", str(cpu_threads), "--output_dir", scratch, "--disable_tqdm", "true",
            "--logging_strategy", "no",
        ]  # fmt: skip
        start = time.perf_counter()
        train_hf.main(argv)
        wall = time.perf_counter() - start
        metrics = json.loads((Path(scratch) / "train_results.json").read_text())
    seconds_per_step = metrics["train_runtime"] / steps
    return {
        "seconds_per_step": round(seconds_per_step, 3),
        "seconds_per_epoch": round(seconds_per_step * STEPS_PER_EPOCH, 1),
        "steps_per_epoch": STEPS_PER_EPOCH,
        "wall_seconds_including_setup": round(wall, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "text_tower_speed.json")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    args = parser.parse_args()
    if not os.environ.get("MVSA_SINGLE_DIR"):
        parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")
    results = []
    for name in args.pairs:
        text, vision, depth = PAIRS[name]
        for layers, cached in ((None, False), (2, False), (2, True), (depth, True)):
            flags = [
                "--text_model_name_or_path", str(ROOT / text), "--vision_model_name_or_path", str(ROOT / vision),
                "--freeze_text_backbone", "false", "--text_learning_rate", "2e-5",
                "--cache_text_hidden_states", str(cached).lower(),
            ]  # fmt: skip
            if layers:
                flags += ["--text_trainable_layers", str(layers)]
            timing = time_steps(flags, args.steps, args.cpu_threads)
            results.append(
                {
                    "towers": name,
                    "trained_text_layers": "all" if layers is None else f"{layers} of {depth}",
                    "hidden_states_cached": cached,
                    **timing,
                }
            )
            print(json.dumps(results[-1]), flush=True)
    command = "python bench/text_tower_speed.py " + " ".join(sys.argv[1:])
    for row in results:
        row["command"] = command
    if args.output.is_file():  # the rows of pairs not measured this time stay as they were measured
        earlier = json.loads(args.output.read_text())
        kept = [
            {**row, "command": row.get("command", earlier.get("command"))}
            for row in earlier["results"]
            if row["towers"] not in args.pairs
        ]
        results = kept + results
    results.sort(key=lambda row: list(PAIRS).index(row["towers"]))
    args.output.write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
