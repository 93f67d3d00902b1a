"""Callbacks and provenance: the run fingerprint written into every checkpoint (so that only the same run is
resumed) and the run information the model card is made from, collected while the run happens (as setfit does)."""

import json
from collections import Counter
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..file_utils import write_text_atomic


def git_commit(folder: str | Path) -> str | None:
    """The commit of the checkout holding `folder` (with `+dirty` when tracked files differ from it)."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


RUN_FINGERPRINT = "mmsa_run_fingerprint.json"


def run_fingerprint(model_args: dict, data_args: dict, source: str, dataset) -> dict:
    """What makes two runs the same run: the data (source, split, the posts of each split) and the model arguments.
    Recorded in every checkpoint; a checkpoint is resumed only by a run with the same fingerprint."""
    import hashlib

    data_keys = (
        "dataset_variant",
        "split_seed",
        "split_file",
        "max_text_length",
        "text_normalization",
        "max_train_samples",
        "max_eval_samples",
        "cache_frozen_features",
    )
    recorded = {key: data_args.get(key) for key in data_keys}
    if data_args.get("calibration_holdout"):  # the posts training leaves out (recorded only when some are)
        recorded["calibration_holdout"] = data_args["calibration_holdout"]
        recorded["calibration_holdout_seed"] = data_args.get("calibration_holdout_seed")
    return {
        "dataset": str(source),
        "posts": {
            name: hashlib.sha256(json.dumps(list(split["id"])).encode()).hexdigest()[:16]
            for name, split in dataset.items()
        },
        "data_args": recorded,
        "model_args": model_args,
    }


def fingerprint_mismatch(checkpoint: str | Path, fingerprint: dict) -> str | None:
    """`None` if `checkpoint` was saved by a run with this fingerprint, else what differs."""
    path = Path(checkpoint) / RUN_FINGERPRINT
    if not path.is_file():
        return f"{checkpoint} records no run fingerprint ({RUN_FINGERPRINT})"
    recorded = json.loads(path.read_text())
    differences = []
    for group in ("dataset", "posts", "data_args", "model_args"):
        old, new = recorded.get(group), fingerprint[group]
        if isinstance(new, dict):
            old = old or {}
            differences += [
                f"{group}.{key}: {old.get(key)!r} -> {new.get(key)!r}"
                for key in sorted(set(new) | set(old))
                if old.get(key) != new.get(key)
            ]
        elif old != new:
            differences.append(f"{group}: {old!r} -> {new!r}")
    return "; ".join(differences) or None


class RunFingerprintCallback(TrainerCallback):
    """Writes the run fingerprint into every checkpoint folder."""

    def __init__(self, fingerprint: dict):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                (folder / RUN_FINGERPRINT).write_text(json.dumps(self.fingerprint, indent=2) + "\n")


TRAINING_KEYS = (
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "seed",
    "metric_for_best_model",
    "optim",
    "world_size",
    "cpu_threads",
)


class RunInfoCallback(TrainerCallback):
    """Records what the model card needs while the run happens (as setfit does): the arguments, the data and its
    label counts, library versions, git commit and thread count when training begins; written to
    `output_dir/run_info.json` when training ends (and by `write`)."""

    def __init__(self, model_args: dict, data_args: dict, source: str, dataset, label_names):
        self.info = {
            "model_args": model_args,
            "data_args": data_args,
            "dataset": str(source),
            "label_counts": {
                name: {
                    label_names[k] if k >= 0 else "no post label": v
                    for k, v in sorted(Counter(int(x) for x in split["label"]).items())
                }
                for name, split in dataset.items()
            },
        }

    def on_train_begin(self, args, state, control, **kwargs):
        self.collect(args)

    def collect(self, args):
        import platform

        import datasets
        import timm
        import transformers

        from .. import __version__

        self.info["training_args"] = {
            key: value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
            for key in TRAINING_KEYS
            for value in [getattr(args, key, None)]
        }
        self.info["git_commit"] = git_commit(Path(__file__).resolve().parent)
        self.info["torch_threads"] = torch.get_num_threads()
        self.info["versions"] = {
            "mmsa": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
        }

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(args.output_dir)

    def write(self, output_dir: str | Path):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(output_dir) / "run_info.json", json.dumps(self.info, indent=2) + "\n")
