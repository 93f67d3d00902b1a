"""The paper's ablation on MVSA-Single with the offline backbones: every fusion strategy, several seeds.

    python bench/paper_table.py [--fusions ote text_only ...] [--seeds 42 43 44] [--table_only]

Each (fusion, seed) run is `accelerate launch train_hf.py configs/offline_minilm_effnet.yaml --fusion F --seed S`,
the main job's launcher and config (model selection on the validation split, test split of split seed 42 fixed). A
run whose result file `bench/results/<fusion>_seed<S>.json` exists is not repeated. Each result file records the
git commit, the `mmsa` version and the behaviour probe of the code that trained it. The README's tables are then
rendered from the result files (`bench/results_tables.py`).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import results_tables
from results_tables import METRICS, ORDER, RESULTS, ROOT


CONFIG = ROOT / "configs" / "offline_minilm_effnet.yaml"


CALIBRATION_METRICS = (
    "test_ece",
    "test_nll",
    "test_brier",
    "test_mean_confidence",
    "test_text_sentiment_accuracy",
    "test_image_sentiment_accuracy",
)
"""Recorded when the run reports them (runs with calibration, runs with modality heads)."""


def provenance() -> dict:
    """The `mmsa` version and behaviour probe of the code in this checkout (in float32, as it ran, and in float64,
    `code_probe`, which the staleness check compares since it does not depend on the CPU)."""
    sys.path.insert(0, str(ROOT))
    import mmsa
    from mmsa.testing_utils import behaviour_probe, code_probe

    return {"mmsa_version": mmsa.__version__, "behaviour_probe": behaviour_probe(), "code_probe": code_probe()}


def search_summary(output_dir: Path) -> dict:
    """What a run's hyperparameter search (`--hp_search_trials`) chose, and its best trial's score."""
    record = json.loads((output_dir / "hp_search.json").read_text())
    return {key: record[key] for key in ("n_trials", "best_trial", "best_objective", "best_hyperparameters")}


def validation_figures(output_dir: Path) -> dict:
    """The saved model's validation figures, as evaluated after training and calibration (`eval_results.json`): its
    macro-F1 and, where the run reports them, its ECE and NLL (a check of the calibration when that was fitted on
    posts held out of the training split, not on these)."""
    path = output_dir / "eval_results.json"
    if not path.is_file():
        return {}
    evaluated = json.loads(path.read_text())
    figures = {"final_validation_macro_f1": evaluated["eval_macro_f1"]}
    figures.update(
        {f"validation_{key}": evaluated[f"eval_{key}"] for key in ("ece", "nll") if f"eval_{key}" in evaluated}
    )
    return figures


def run(
    fusion: str | None,
    seed: int,
    extra: list[str],
    output_dir: Path | None = None,
    probe: dict | None = None,
    config: Path = CONFIG,
) -> dict:
    """One `accelerate launch train_hf.py CONFIG [--fusion F] --seed S EXTRA` run and its test figures."""
    output_dir = output_dir or ROOT / "runs" / "paper_table" / f"{fusion}_seed{seed}"
    fusion_flags = ["--fusion", fusion] if fusion else []
    arguments = [str(config.relative_to(ROOT)), *fusion_flags, "--seed", str(seed), *extra]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "train_hf.py",
        *arguments,
        "--output_dir",
        str(output_dir),
        "--save_total_limit",
        "1",
        "--disable_tqdm",
        "true",
    ]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    test = json.loads((output_dir / "test_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    info = json.loads((output_dir / "run_info.json").read_text())
    return {
        "fusion": info.get("model_args", {}).get("fusion", fusion),
        "seed": seed,
        **{key: test[key] for key in METRICS},
        **{key: test[key] for key in CALIBRATION_METRICS if key in test},
        **(
            {"calibration": json.loads((output_dir / "calibration_results.json").read_text())}
            if (output_dir / "calibration_results.json").is_file()
            else {}
        ),
        "per_class_f1": {k[len("test_f1_") :]: v for k, v in test.items() if k.startswith("test_f1_")},
        "best_validation_macro_f1": state["best_metric"],
        **validation_figures(output_dir),
        "best_checkpoint": Path(state["best_model_checkpoint"]).name if state.get("best_model_checkpoint") else None,
        "epochs_run": state["epoch"],
        "seconds": round(time.perf_counter() - start, 1),
        "command": " ".join(["accelerate", "launch", "train_hf.py", *arguments]),
        **({"hp_search": search_summary(output_dir)} if (output_dir / "hp_search.json").exists() else {}),
        "git_commit": info.get("git_commit"),
        "torch_threads": info.get("torch_threads"),
        **(probe or provenance()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusions", nargs="+", default=list(ORDER))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--table_only", action="store_true", help="only re-render the tables from existing results")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed on to train_hf.py (after --)")
    args = parser.parse_args()
    if not args.table_only:
        if not os.environ.get("MVSA_SINGLE_DIR"):
            parser.error("set MVSA_SINGLE_DIR to the raw MVSA-Single folder")
        extra = [a for a in args.extra if a != "--"]
        RESULTS.mkdir(parents=True, exist_ok=True)
        probe = provenance()
        for seed in args.seeds:
            for fusion in args.fusions:
                path = RESULTS / f"{fusion}_seed{seed}.json"
                if not path.exists():
                    path.write_text(json.dumps(run(fusion, seed, extra, probe=probe), indent=2) + "\n")
    results_tables.main([])


if __name__ == "__main__":
    main()
