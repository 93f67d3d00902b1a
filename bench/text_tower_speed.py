"""Seconds per training epoch when the text tower is fine-tuned and the frozen image tower is read from the cache.

    MVSA_SINGLE_DIR=... python bench/text_tower_speed.py [--steps 12] [--cpu_threads 2]

For each pair (MiniLM-L6 + EfficientNet-Lite0 from backbones/, MPNet + EfficientNet-Lite2 from backbones-large/),
every text layer trained and the top two only: `train_hf.py` runs `--steps` training steps of batch 16 (after the
image features are cached), and the time per step, times the steps of one epoch of the seed-42 train split, is the
time per epoch. Results go to bench/results/text_tower_speed.json.
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
    "MiniLM-L6 + EfficientNet-Lite0": ("backbones/text", "backbones/vision"),
    "MPNet + EfficientNet-Lite2": ("backbones-large/text", "backbones-large/vision"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cpu_threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "text_tower_speed.json")
    args = parser.parse_args()
    if not os.environ.get("MVSA_SINGLE_DIR"):
        parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")
    import train_hf

    results = []
    for name, (text, vision) in PAIRS.items():
        for layers in (None, 2):
            with tempfile.TemporaryDirectory() as scratch:
                argv = [
                    "configs/offline_minilm_effnet.yaml",
                    "--text_model_name_or_path", str(ROOT / text), "--vision_model_name_or_path", str(ROOT / vision),
                    "--fusion", "naive_combine", "--freeze_text_backbone", "false", "--text_learning_rate", "2e-5",
                    "--max_steps", str(args.steps), "--eval_strategy", "no", "--save_strategy", "no",
                    "--load_best_model_at_end", "false", "--do_eval", "false", "--do_predict", "false",
                    "--cpu_threads", str(args.cpu_threads), "--output_dir", scratch, "--disable_tqdm", "true",
                    "--logging_strategy", "no",
                ]  # fmt: skip
                if layers:
                    argv += ["--text_trainable_layers", str(layers)]
                start = time.perf_counter()
                train_hf.main(argv)
                wall = time.perf_counter() - start
                metrics = json.loads((Path(scratch) / "train_results.json").read_text())
            seconds_per_step = metrics["train_runtime"] / args.steps
            steps_per_epoch = -(-3608 // 16)
            results.append(
                {
                    "towers": name,
                    "trained_text_layers": layers or "all",
                    "seconds_per_step": round(seconds_per_step, 3),
                    "seconds_per_epoch": round(seconds_per_step * steps_per_epoch, 1),
                    "steps_per_epoch": steps_per_epoch,
                    "wall_seconds_including_setup": round(wall, 1),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    args.output.write_text(
        json.dumps(
            {"command": "python bench/text_tower_speed.py " + " ".join(sys.argv[1:]), "results": results}, indent=2
        )
        + "\n"
    )
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
