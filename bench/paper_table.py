"""The paper's ablation on MVSA-Single with the offline backbones: every fusion strategy, several seeds.

    python bench/paper_table.py [--fusions ote text_only ...] [--seeds 42 43 44] [--table_only]

Each (fusion, seed) run is `train_hf.py configs/offline_minilm_effnet.yaml --fusion F --seed S` (model selection on
the validation split, test split of seed 42 fixed). A run whose result file `bench/results/<fusion>_seed<S>.json`
exists is not repeated, so the table can be filled over several sessions. The table (mean +/- std over the seeds
that have results) is written to `bench/results/paper_table.md` and `.json`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONFIG = ROOT / "configs" / "offline_minilm_effnet.yaml"
ORDER = ("text_only", "image_only", "naive_cat", "naive_combine", "cmac", "hstec", "ote", "mm_transformer")
METRICS = ("test_accuracy", "test_macro_f1", "test_weighted_f1")
PUBLISHED = [
    ("Paper: BERT only (bert-base)", "70.5", "", ""),
    ("Paper: ResNet only (ResNet-50)", "65.75", "", ""),
    ("Paper: ote (BERT + ResNet-50)", "74.5", "73", ""),
    ("CLMLF (Li et al., 2022)", "75.33", "", "73.46"),
]


def run(fusion: str, seed: int, extra: list[str], output_dir: Path | None = None) -> dict:
    output_dir = output_dir or ROOT / "runs" / "paper_table" / f"{fusion}_seed{seed}"
    command = [sys.executable, str(ROOT / "train_hf.py"), str(CONFIG), "--fusion", fusion, "--seed", str(seed),
               "--output_dir", str(output_dir), "--save_total_limit", "1", "--disable_tqdm", "true", *extra]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    test = json.loads((output_dir / "test_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {
        "fusion": fusion,
        "seed": seed,
        **{key: test[key] for key in METRICS},
        "per_class_f1": {k[len("test_f1_"):]: v for k, v in test.items() if k.startswith("test_f1_")},
        "best_validation_macro_f1": state["best_metric"],
        "best_checkpoint": Path(state["best_model_checkpoint"]).name if state.get("best_model_checkpoint") else None,
        "epochs_run": state["epoch"],
        "seconds": round(time.perf_counter() - start, 1),
        "command": " ".join(["python", "train_hf.py", "configs/offline_minilm_effnet.yaml", "--fusion", fusion,
                             "--seed", str(seed), *extra]),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table() -> dict:
    rows = {}
    for path in sorted(RESULTS.glob("*_seed*.json")):
        result = json.loads(path.read_text())
        rows.setdefault(result["fusion"], []).append(result)
    summary = {}
    for fusion in [f for f in ORDER if f in rows] + sorted(set(rows) - set(ORDER)):
        results = sorted(rows[fusion], key=lambda r: r["seed"])
        entry = {"seeds": [r["seed"] for r in results]}
        for key in METRICS:
            values = [100 * r[key] for r in results]
            mean, std = mean_std(values)
            entry[key] = {"mean": mean, "std": std, "values": values}
        summary[fusion] = entry
    lines = [
        "| model | seeds | test accuracy | test macro-F1 | test weighted-F1 |",
        "|---|---|---|---|---|",
    ]
    for fusion, entry in summary.items():
        cells = [f"{entry[k]['mean']:.2f} ± {entry[k]['std']:.2f}" if len(entry["seeds"]) > 1
                 else f"{entry[k]['mean']:.2f}" for k in METRICS]
        lines.append(f"| `{fusion}` (MiniLM-L6 + EfficientNet-Lite0) | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    for name, accuracy, macro, weighted in PUBLISHED:
        lines.append(f"| {name} | published | {accuracy} | {macro} | {weighted} |")
    markdown = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "paper_table.md").write_text(markdown)
    (RESULTS / "paper_table.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusions", nargs="+", default=list(ORDER))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--table_only", action="store_true", help="only rebuild the table from existing results")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed on to train_hf.py (after --)")
    args = parser.parse_args()
    if not args.table_only:
        if not os.environ.get("MVSA_SINGLE_DIR"):
            parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")
        extra = [a for a in args.extra if a != "--"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            for fusion in args.fusions:
                path = RESULTS / f"{fusion}_seed{seed}.json"
                if path.exists():
                    continue
                path.write_text(json.dumps(run(fusion, seed, extra), indent=2) + "\n")
                table()
    table()


if __name__ == "__main__":
    main()
