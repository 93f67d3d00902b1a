"""Hyperparameter variants of one fusion strategy, selected on the validation split (never on test).

    python bench/fusion_sweep.py --fusion mm_transformer --seeds 42 43 44 \\
        --variant "lr 3e-4=--head_learning_rate 3e-4" --variant "lr 1e-4=--head_learning_rate 1e-4"

Each variant is `NAME=FLAGS`, the flags passed on to `train_hf.py configs/offline_minilm_effnet.yaml --fusion F
--seed S`; the base variant, with no flags, is trained here too, so that every row comes from the same code. Results
go to `bench/results/sweep/<fusion>/`; a run whose result file exists is not repeated. The table lists, per variant,
mean validation macro-F1 (the selection criterion) and the test metrics, and marks the selected variant.
"""

import argparse
import json
import os
import re
import shlex

from paper_table import METRICS, RESULTS, ROOT, mean_std, run


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusion", default="mm_transformer")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--variant", action="append", default=[], help="NAME=FLAGS for train_hf.py")
    parser.add_argument("--table_only", action="store_true")
    args = parser.parse_args()
    folder = RESULTS / "sweep" / args.fusion
    folder.mkdir(parents=True, exist_ok=True)
    variants = {"base config": []}
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        variants[name.strip()] = shlex.split(flags)
    if not args.table_only and not os.environ.get("MVSA_SINGLE_DIR"):
        parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")

    results = {}
    for name, flags in variants.items():
        for seed in args.seeds:
            path = folder / f"{slug(name)}_seed{seed}.json"
            if not path.exists() and not args.table_only:
                output_dir = ROOT / "runs" / "sweep" / args.fusion / f"{slug(name)}_seed{seed}"
                path.write_text(json.dumps({"variant": name, **run(args.fusion, seed, flags, output_dir)}, indent=2) + "\n")
            if path.exists():
                results.setdefault(name, []).append(json.loads(path.read_text()))

    rows = {}
    for name, runs in results.items():
        rows[name] = {"flags": " ".join(variants[name]), "seeds": [r["seed"] for r in runs],
                      "validation_macro_f1": mean_std([100 * r["best_validation_macro_f1"] for r in runs]),
                      **{key: mean_std([100 * r[key] for r in runs]) for key in METRICS}}
    complete = {n: r for n, r in rows.items() if len(r["seeds"]) == len(args.seeds)}
    selected = max(complete, key=lambda n: complete[n]["validation_macro_f1"][0]) if complete else None
    lines = [f"`{args.fusion}`, seeds {' '.join(map(str, args.seeds))}; selected on mean validation macro-F1 (**bold**).",
             "", "| variant | train_hf.py flags | validation macro-F1 | test accuracy | test macro-F1 | test weighted-F1 |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        cells = [f"{m:.2f} ± {s:.2f}" for m, s in
                 (row["validation_macro_f1"], *(row[key] for key in METRICS))]
        label = f"**{name}**" if name == selected else name
        lines.append(f"| {label} | `{row['flags'] or '(none)'}` | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    (folder / "sweep.md").write_text(markdown)
    (folder / "sweep.json").write_text(json.dumps({"selected": selected, "variants": rows}, indent=2) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
