"""What averaging several trained models of one configuration would give: the runs of one split, trained with
different seeds, scored alone and as the mean of their log-probabilities on that split's validation and test posts.

    python bench/seed_ensemble.py --models runs/best_offline_split1 runs/seed_ensemble/split1_seed43 \\
        runs/seed_ensemble/split1_seed44 --output bench/results/seed_ensemble/best_offline_split1.json

Every model must be a `train_hf.py` output folder of the same split (its `run_info.json`: dataset, split seed and
split file); each one's calibrated probabilities come from its own forward (its temperature applied), on every post of
the two splits. For each model and for the average the figures are validation macro-F1 and accuracy, test accuracy,
macro-F1, weighted-F1, ECE, NLL and mean top-class probability, in percent.

Each model chose its checkpoint on the validation posts, which flatters it there and not the average. So when the
models held out the same training posts for their calibration (`--calibration_holdout` with one
`--calibration_holdout_seed`), the figures include `held_out_macro_f1` and `held_out_accuracy` on those posts, which
no model trained on or chose anything with but its temperatures (which change no model's argmax): there a model and
the average compare on equal terms. Without a shared holdout, each seed's holdout is drawn with its seed and the
models were also trained on different 90% of the training split.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPLITS = ("validation", "test")
HELD_OUT = "held_out"
"""The training posts that every model held out for its calibration, when they all held out the same ones."""


def run_info(model_dir: Path) -> dict:
    path = model_dir / "run_info.json"
    if not path.is_file():
        raise SystemExit(f"--models {model_dir}: no run_info.json (not a train_hf.py output folder)")
    return json.loads(path.read_text())


def run_split(info: dict) -> tuple[str, int, str | None]:
    """The dataset, split seed and split file a run was trained on, from its `run_info.json`."""
    return info["dataset"], info["data_args"]["split_seed"], info["data_args"].get("split_file")


def shared_held_out_rows(infos, train_labels) -> list[int] | None:
    """The rows of the training split that every model (its `run_info.json`) held out of training
    (`--calibration_holdout`, drawn with one `--calibration_holdout_seed`): posts none of them trained on or chose its
    checkpoint with, so that the models and their average compare there on equal terms (on validation each model's
    checkpoint is its best of several epochs, which flatters it and not the average). `None` when the models held
    out different posts, or none, or trained with the conflicting posts (whose rows the draw skips)."""
    from mmsa.training import calibration_holdout_rows

    draws = {
        (
            info["data_args"].get("calibration_holdout") or 0.0,
            info["data_args"].get("calibration_holdout_seed"),
            bool(info["data_args"].get("conflicts_in_train")),
        )
        for info in infos
    }
    if len(draws) > 1:
        return None
    ((fraction, seed, conflicts),) = draws
    if not fraction or seed is None or conflicts:
        return None
    return calibration_holdout_rows(train_labels, fraction, seed)[1]


CACHE = "seed_ensemble_log_probs.npz"
"""Kept in each model folder: its log-probabilities on the posts scored, keyed by the model's files and the posts, so
that scoring the same run again in another average reads them instead of running the towers."""


def model_files_digest(model_dir: Path):
    """A hash of the model folder's JSON and safetensors files (its weights, config and temperatures)."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(p.name for p in model_dir.iterdir() if p.suffix in (".json", ".safetensors")):
        digest.update(name.encode() + (model_dir / name).read_bytes())
    return digest


def log_probabilities(model_dir: Path, data: dict, batch_size: int) -> dict[str, np.ndarray]:
    """The model's calibrated log-probabilities (its own temperature applied) on every post of each split of `data`
    (name -> posts), read from the folder's `CACHE` where they were computed before by the same model files."""
    import torch

    from mmsa.cli import load_explainer, split_logits
    from mmsa.file_utils import atomic_file

    files = model_files_digest(model_dir)
    keys = {}
    for split, posts in data.items():
        digest = files.copy()
        digest.update(json.dumps([str(i) for i in posts["id"]]).encode())
        keys[split] = digest.hexdigest()[:24]
    path = model_dir / CACHE
    cached = dict(np.load(path, allow_pickle=False)) if path.is_file() else {}
    missing = [split for split in data if keys[split] not in cached]
    if missing:
        model, processor = load_explainer(str(model_dir))
        for split in missing:
            logits = torch.as_tensor(split_logits(model, processor, data[split], batch_size)["logits"])
            cached[keys[split]] = torch.log_softmax(logits, dim=-1).numpy()
        with atomic_file(path, "wb") as handle:
            np.savez(handle, **cached)
    return {split: cached[keys[split]] for split in data}


def average_log_probabilities(members: list[np.ndarray]) -> np.ndarray:
    """The members' mean log-probabilities, renormalised over the classes: the ensemble's log-probabilities (the
    normalised geometric mean of the members' distributions, as the `ensemble` fusion averages its members)."""
    mean = np.mean(members, axis=0)
    return mean - np.logaddexp.reduce(mean, axis=-1, keepdims=True)


def scores(log_probs: dict[str, np.ndarray], references: dict[str, np.ndarray], names: list[str]) -> dict:
    from mmsa.calibration import calibration_metrics
    from mmsa.metrics import load_sentiment_metrics

    metric = load_sentiment_metrics()
    figures = {}
    for split in log_probs:
        probabilities = np.exp(log_probs[split])
        computed = metric.compute(
            predictions=probabilities.argmax(-1).tolist(),
            references=references[split].tolist(),
            labels=names,
            probabilities=probabilities,
        )
        if split != "test":
            figures[f"{split}_macro_f1"] = 100 * computed["macro_f1"]
            figures[f"{split}_accuracy"] = 100 * computed["accuracy"]
            continue
        calibration = calibration_metrics(probabilities, references[split])
        figures.update({f"test_{key}": 100 * computed[key] for key in ("accuracy", "macro_f1", "weighted_f1")})
        figures.update({f"test_{key}": 100 * calibration[key] for key in ("ece", "mean_confidence")})
        figures["test_nll"] = calibration["nll"]
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, type=Path, help="train_hf.py output folders")
    parser.add_argument("--dataset", default=None, help="default: the dataset recorded in the runs")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    if len(args.models) < 2:
        parser.error("--models needs at least two runs to average")

    from mmsa.data import load_mvsa
    from mmsa.file_utils import write_text_atomic

    infos = {model_dir: run_info(model_dir) for model_dir in args.models}
    recorded = {model_dir: run_split(info) for model_dir, info in infos.items()}
    if len({split[1:] for split in recorded.values()}) > 1:
        listed = ", ".join(
            f"{path} (split seed {split[1]}, split file {split[2]})" for path, split in recorded.items()
        )
        raise SystemExit(f"--models were trained on different splits: {listed}")
    dataset, split_seed, split_file = recorded[args.models[0]]
    splits = load_mvsa(args.dataset or dataset, seed=split_seed, split_file=split_file)
    names = splits["test"].features["label"].names
    data = {split: splits[split] for split in SPLITS}
    held_out = shared_held_out_rows(infos.values(), splits["train"]["label"])
    if held_out is not None:
        data[HELD_OUT] = splits["train"].select(held_out)
    references = {split: np.asarray(posts["label"]) for split, posts in data.items()}

    members, per_model = [], {}
    for model_dir in args.models:
        log_probs = log_probabilities(model_dir, data, args.batch_size)
        members.append(log_probs)
        per_model[str(model_dir)] = {
            "seed": infos[model_dir].get("training_args", {}).get("seed"),
            **scores(log_probs, references, names),
        }
    averaged = {split: average_log_probabilities([member[split] for member in members]) for split in data}
    result = {
        "split_seed": split_seed,
        "held_out_posts": None if held_out is None else len(held_out),
        "models": per_model,
        "members_mean": {
            key: float(np.mean([m[key] for m in per_model.values()]))
            for key in next(iter(per_model.values()))
            if key != "seed"
        },
        "ensemble": scores(averaged, references, names),
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.output:
        write_text_atomic(args.output, text)
    print(text, end="")


if __name__ == "__main__":
    main()
