"""Hyperparameter variants of one fusion strategy, selected on the validation split (never on test).

    python bench/fusion_sweep.py --fusion mm_transformer --seeds 42 43 44 \\
        --variant "lr 3e-4=--head_learning_rate 3e-4" --variant "lr 1e-4=--head_learning_rate 1e-4"

Each variant is `NAME=FLAGS`, the flags passed on to `accelerate launch train_hf.py configs/offline_minilm_effnet.yaml
--fusion F --seed S`. The base variant, with no flags, is the paper table's run of the same fusion and seed (the same
command, so the same result), trained here if the paper table lacks it. Results go to `bench/results/sweep/<fusion>/`;
a run whose result file exists is not repeated. The README's sweep table is rendered from them
(`bench/results_tables.py`): per variant, mean validation macro-F1 (the selection criterion) and the test metrics.
"""

import argparse
import json
import os
import re
import shlex

import results_tables
from paper_table import provenance, run
from results_tables import RESULTS, ROOT


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusion", default="mm_transformer")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--variant", action="append", default=[], help="NAME=FLAGS for train_hf.py")
    parser.add_argument("--table_only", action="store_true")
    parser.add_argument(
        "--skip_base",
        action="store_true",
        help="do not fill in the base variant (another process does), e.g. to run variants in parallel",
    )
    args = parser.parse_args()
    folder = RESULTS / "sweep" / args.fusion
    folder.mkdir(parents=True, exist_ok=True)
    variants = {} if args.skip_base else {"base config": []}
    for spec in args.variant:
        name, _, flags = spec.partition("=")
        variants[name.strip()] = shlex.split(flags)
    if not args.table_only:
        if not os.environ.get("MVSA_SINGLE_DIR"):
            parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")
        probe = provenance()
        for name, flags in variants.items():
            for seed in args.seeds:
                path = folder / f"{slug(name)}_seed{seed}.json"
                if path.exists():
                    continue
                base = RESULTS / f"{args.fusion}_seed{seed}.json"
                if not flags and base.exists():
                    result = json.loads(base.read_text())
                else:
                    output_dir = ROOT / "runs" / "sweep" / args.fusion / f"{slug(name)}_seed{seed}"
                    result = run(args.fusion, seed, flags, output_dir, probe=probe)
                path.write_text(json.dumps({"variant": name, "flags": shlex.join(flags), **result}, indent=2) + "\n")
    results_tables.main([])


if __name__ == "__main__":
    main()
