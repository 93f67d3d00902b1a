"""Seconds per training epoch on the real MVSA-Single train split: frozen towers cached vs run every step.

    MVSA_SINGLE_DIR=... python bench/feature_cache_speed.py [--fusion ote] [--max_train_samples N]

The same model (configs/offline_minilm_effnet.yaml: frozen MiniLM and EfficientNet-Lite0, the given fusion) is
trained for one epoch twice, side by side: towers run on every step (no cache), and both towers cached. A warm-up run fills the caches first (quick when earlier runs already did); its time is printed
separately.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_hf  # noqa: E402
from mmsa.testing_utils import TRAIN_ONLY_FLAGS  # noqa: E402


def epoch_seconds(fusion, output_dir, cache_dir, extra):
    args = [
        str(ROOT / "configs" / "offline_minilm_effnet.yaml"),
        "--fusion",
        fusion,
        "--output_dir",
        str(output_dir),
        "--num_train_epochs",
        "1",
        *TRAIN_ONLY_FLAGS,
        "--report_to",
        "none",
        *extra,
    ] + (["--feature_cache_dir", str(cache_dir)] if cache_dir else [])
    train_hf.main(args)
    return json.loads((Path(output_dir) / "train_results.json").read_text())["train_runtime"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusion", default="ote")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument(
        "--feature_cache_dir",
        default=None,
        help="cache folder (default: the usual one, so features cached by earlier runs are reused)",
    )
    args = parser.parse_args()
    extra = ["--max_train_samples", str(args.max_train_samples)] if args.max_train_samples else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        cache = args.feature_cache_dir
        epoch_seconds(args.fusion, tmp / "warm", cache, extra)  # fills both caches unless earlier runs did
        fill = time.perf_counter() - start
        results = {
            "no cache": epoch_seconds(args.fusion, tmp / "a", cache, extra + ["--cache_frozen_features", "false"]),
            "both towers cached": epoch_seconds(args.fusion, tmp / "b", cache, extra),
        }
    base = results["no cache"]
    print(f"\nfusion={args.fusion}; warm-up run (fills the caches if empty) + its epoch: {fill:.1f} s")
    for name, seconds in results.items():
        print(f"{name:>20}: {seconds:8.1f} s/epoch  ({base / seconds:5.1f}x)")


if __name__ == "__main__":
    main()
