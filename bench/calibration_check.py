"""How well a trained model's probabilities match its accuracy, measured as a user would: through `mmsa predict`.

    python bench/calibration_check.py --model runs/offline_minilm_effnet [--dataset $MVSA_SINGLE_DIR] [--split test]

Writes the split's posts (the run's own split: its recorded dataset and split seed) as a JSONL file with image files,
runs `mmsa predict --all_scores` on it in a subprocess, and compares the predicted distributions with the labels:
accuracy, mean top-class probability, ECE (10 equal-width bins), NLL, Brier score, the share of posts given more
than 99%, and the ECE a perfectly calibrated model with the same top-class probabilities would score on these posts
(`mmsa.calibration.calibrated_ece`: the floor that sampling noise alone sets). The figures go to
`bench/results/calibration_<run name>.json` and are printed.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_posts(split, folder: Path) -> Path:
    """The split's posts as `posts.jsonl` beside their images (as `mmsa predict --input` reads them)."""
    from datasets import Image as ImageFeature

    rows = split.cast_column("image", ImageFeature(decode=False))
    lines = []
    for row in rows:
        name = f"{row['id']}.jpg"
        (folder / name).write_bytes(row["image"]["bytes"] or Path(row["image"]["path"]).read_bytes())
        lines.append(json.dumps({"id": row["id"], "text": row["text"], "image": name}, ensure_ascii=False))
    path = folder / "posts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a train_hf.py output folder")
    parser.add_argument("--dataset", default=None, help="default: the dataset recorded in the run's run_info.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    from mmsa.calibration import calibrated_ece, calibration_metrics
    from mmsa.data import load_mvsa

    info = json.loads((args.model / "run_info.json").read_text())
    dataset = args.dataset or info["dataset"]
    split = load_mvsa(dataset, seed=info["data_args"]["split_seed"], split_file=info["data_args"]["split_file"])[
        args.split
    ]
    names = split.features["label"].names
    with tempfile.TemporaryDirectory() as tmp:
        posts = write_posts(split, Path(tmp))
        predictions = Path(tmp) / "predictions.jsonl"
        command = [sys.executable, "-m", "mmsa.cli", "predict", "--model", str(args.model), "--input", str(posts),
                   "--output", str(predictions), "--all_scores"]  # fmt: skip
        subprocess.run(command, check=True, cwd=ROOT)
        records = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    by_id = {record["id"]: record for record in records}
    probabilities = np.asarray(
        [[{s["label"]: s["score"] for s in by_id[i]["scores"]}[name] for name in names] for i in split["id"]]
    )
    references = np.asarray(split["label"])
    metrics = calibration_metrics(probabilities, references)
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == references
    result = {
        "model": str(args.model),
        "split": args.split,
        "posts": len(references),
        "accuracy": float(correct.mean()),
        **metrics,
        "posts_over_99_percent": int((confidence > 0.99).sum()),
        "accuracy_of_posts_over_99_percent": float(correct[confidence > 0.99].mean()) if (confidence > 0.99).any()
        else None,
        "ece_of_a_calibrated_model": dict(zip(("mean", "std"), calibrated_ece(confidence))),
        "temperature": json.loads((args.model / "config.json").read_text()).get("temperature", 1.0),
        "command": f"python bench/calibration_check.py --model {args.model}",
    }  # fmt: skip
    output = args.output or ROOT / "bench" / "results" / f"calibration_{args.model.name}.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
