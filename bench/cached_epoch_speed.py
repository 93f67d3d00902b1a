"""Training seconds on cached features, for two checkouts of this repository side by side (alternating runs).

    MVSA_SINGLE_DIR=... python bench/cached_epoch_speed.py OLD_CHECKOUT NEW_CHECKOUT [--repeats 2]

Each run is `train_hf.main` of that checkout (in its own process): configs/offline_minilm_effnet.yaml, `naive_combine`,
split seed 1, two epochs with no evaluation or checkpoints, frozen towers read from the feature cache. It prints each
run's `train_runtime` and `train_loss` (equal losses: the two checkouts train the same model).
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


RUN = """
import json, os, sys
root, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
os.chdir(root)
import train_hf
train_hf.main([
    "configs/offline_minilm_effnet.yaml", "--fusion", "naive_combine", "--num_train_epochs", "2", "--split_seed", "1",
    "--output_dir", out, "--disable_tqdm", "true", "--do_predict", "false", "--save_strategy", "no",
    "--eval_strategy", "no", "--load_best_model_at_end", "false", "--early_stopping_patience", "0",
])
print("RESULT " + json.dumps(json.load(open(os.path.join(out, "train_results.json")))))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs=2, type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.repeats):
        for checkout in args.checkouts:
            with tempfile.TemporaryDirectory() as out:
                printed = subprocess.run(
                    [sys.executable, "-c", RUN, str(checkout.resolve()), out],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            result = json.loads(printed.split("RESULT ", 1)[1])
            print(f"{checkout}: {result['train_runtime']:.1f} s for 2 epochs, train_loss {result['train_loss']!r}")


if __name__ == "__main__":
    main()
