"""Helpers of the training tests: the arguments of a tiny run and a script runner."""

import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]


def tiny_args(assets, output_dir, *extra):
    return [
        "--text_model_name_or_path",
        assets["text"],
        "--vision_model_name_or_path",
        assets["vision"],
        "--dataset_name_or_path",
        assets["raw"],
        "--output_dir",
        str(output_dir),
        "--fusion_hidden_size",
        "16",
        "--fusion_num_heads",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--head_learning_rate",
        "2e-3",
        "--text_learning_rate",
        "1e-3",
        "--vision_learning_rate",
        "1e-3",
        "--feature_cache_dir",
        str(Path(output_dir).parent / "feature_cache"),
        "--disable_tqdm",
        "true",
        *extra,
    ]


def run_script(args, env_extra=None, launcher=(sys.executable,), timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
