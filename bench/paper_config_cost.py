"""What `configs/paper_bert_resnet50.yaml` costs on this machine: seconds per training step and peak memory.

    MVSA_SINGLE_DIR=../shared/data/MVSA_Single python bench/paper_config_cost.py [--steps 4]

The paper's configuration (BERT-base + ResNet-50, both fine-tuned, batch 16, 128 tokens) with randomly initialised
towers of the real shapes in place of the Hub checkpoints (`mmsa.testing_utils.write_random_paper_towers`), trained
for a few steps on real posts by `train_hf.py` in a child process. Prints the mean seconds per step (the first step
excluded: it allocates) and the child's peak resident memory.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

STEP_TIMER = """
import json, sys, time
import train_hf
from transformers import TrainerCallback

class StepTimer(TrainerCallback):
    def __init__(self):
        self.times = []
    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())

timer = StepTimer()
class Trainer(train_hf.MmsaTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(timer)
train_hf.MmsaTrainer = Trainer
train_hf.main(sys.argv[2:])
json.dump([b - a for a, b in zip(timer.times, timer.times[1:])], open(sys.argv[1], "w"))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cpu_threads", type=int, default=None, help="train_hf.py --cpu_threads (default: all cores)")
    args = parser.parse_args()
    data = os.environ.get("MVSA_SINGLE_DIR")
    if not data:
        parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")
    sys.path.insert(0, str(ROOT))
    from mmsa.testing_utils import TRAIN_ONLY_FLAGS, write_random_paper_towers

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = ROOT / "backbones" / "text"
        text, vision = write_random_paper_towers(Path(tmp) / "towers", tokenizer if tokenizer.is_dir() else None)
        times = Path(tmp) / "times.json"
        command = [
            sys.executable,
            "-c",
            STEP_TIMER,
            str(times),
            str(ROOT / "configs" / "paper_bert_resnet50.yaml"),
            "--text_model_name_or_path",
            str(text),
            "--vision_model_name_or_path",
            str(vision),
            "--dataset_name_or_path",
            data,
            "--output_dir",
            str(Path(tmp) / "run"),
            "--max_train_samples",
            str(16 * args.steps),
            "--max_eval_samples",
            "16",
            "--max_steps",
            str(args.steps),
            *TRAIN_ONLY_FLAGS,
        ] + (["--cpu_threads", str(args.cpu_threads)] if args.cpu_threads else [])
        subprocess.run(
            command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL
        )
        step_seconds = json.loads(times.read_text())
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"paper configuration (BERT-base + ResNet-50, fine-tuned, batch 16): "
        f"{sum(step_seconds) / len(step_seconds):.1f} s per training step (mean of steps 2-{args.steps}), "
        f"peak RSS {peak_mb:.0f} MB, {args.cpu_threads or os.cpu_count()} training thread(s)"
    )


if __name__ == "__main__":
    main()
