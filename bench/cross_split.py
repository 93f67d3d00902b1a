"""A split-robust protocol: one training run on each of five stratified 8:1:1 splits of MVSA-Single.

    python bench/cross_split.py --name cmac --config configs/offline_minilm_effnet.yaml -- --fusion cmac
    python bench/cross_split.py --name best_offline --config configs/best_offline.yaml

Each run is `accelerate launch train_hf.py CONFIG --split_seed K --seed S FLAGS` for split seeds 1-5 (all drawn by
`build_mvsa`); everything chosen during a run (early stopping, the best checkpoint) is chosen on that split's
validation set, and the test set of the split is scored once at the end. With 450 test posts one split's accuracy
swings by a few points, so a method is reported as the mean ± std over the five test sets. Results go to
`bench/results/cross_split/<name>/split<K>.json` (a run whose file exists is not repeated), with the git commit and
behaviour probe of the code that trained it; the README's tables are rendered from them (`bench/results_tables.py`).
"""

import argparse
import json
import os
import shlex

import results_tables
from paper_table import provenance, run
from results_tables import RESULTS, ROOT


SPLIT_SEEDS = (1, 2, 3, 4, 5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the row's name; results go to bench/results/cross_split/NAME")
    parser.add_argument("--config", default="configs/offline_minilm_effnet.yaml")
    parser.add_argument("--split_seeds", nargs="+", type=int, default=list(SPLIT_SEEDS))
    parser.add_argument("--seed", type=int, default=42, help="the training seed of every run")
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="flags passed on to train_hf.py (after --)")
    args = parser.parse_args(argv)
    flags = [a for a in args.flags if a != "--"]
    folder = RESULTS / "cross_split" / args.name
    if not args.table_only:
        if not os.environ.get("MVSA_SINGLE_DIR"):
            parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")
        folder.mkdir(parents=True, exist_ok=True)
        probe = provenance()
        for split_seed in args.split_seeds:
            path = folder / f"split{split_seed}.json"
            if path.exists():
                continue
            result = run(
                None,
                args.seed,
                [*flags, "--split_seed", str(split_seed)],
                ROOT / "runs" / "cross_split" / args.name / f"split{split_seed}",
                probe=probe,
                config=ROOT / args.config,
            )
            record = {"name": args.name, "split_seed": split_seed, "flags": shlex.join(flags), **result}
            path.write_text(json.dumps(record, indent=2) + "\n")
    results_tables.main([])


if __name__ == "__main__":
    main()
