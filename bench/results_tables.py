"""The result tables of the README and the documentation, rendered from the run files under `bench/results/`.

    python bench/results_tables.py            # rewrite the tables in README.md and docs/*.md (and bench/results/*.md)
    python bench/results_tables.py --check    # exit 1 if a table differs from what the results give

Each table sits in README.md or a page of docs/ between `<!-- table:NAME -->` and `<!-- /table:NAME -->`; nothing
between the markers is written by hand, and every table has a place in at least one of them. Every run file records the git commit it was trained at, the `mmsa` version and the behaviour
probe of its modelling code (`mmsa.testing_utils.behaviour_probe`), so a test can tell a row trained by other
modelling code from one today's code reproduces.
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
DOCS = ROOT / "docs"
ORDER = ("text_only", "image_only", "naive_cat", "naive_combine", "cmac", "hstec", "ote", "mm_transformer")
METRICS = ("test_accuracy", "test_macro_f1", "test_weighted_f1")
PUBLISHED = [
    ("Paper: BERT only (bert-base)", "70.5", "", ""),
    ("Paper: ResNet only (ResNet-50)", "65.75", "", ""),
    ("Paper: ote (BERT + ResNet-50), arXiv 2412.03625", "74.5", "", "73"),
    ("CLMLF (Li et al., NAACL 2022)", "75.33", "", "73.46"),
    ("MDSE", "76.22", "", "75.71"),
    ("Multi-channel multimodal joint learning (Applied AI, 2024)", "76.98", "", "76.23"),
]
"""Published single-split figures on MVSA-Single (accuracy, macro-F1, weighted-F1), from the papers."""
CROSS_SPLIT = RESULTS / "cross_split"
CANDIDATES = {
    "best_offline": "MPNet + EfficientNet-Lite2, `naive_combine` (`configs/mpnet_lite2_naive_combine.yaml`, "
    "`configs/best_offline.yaml` before the modality heads)",
    "best_offline_searched": "MPNet + EfficientNet-Lite2, `naive_combine`, hyperparameters searched "
    "(`--hp_search_trials 8`, trials scored on 20% of the training split)",
    "best_offline_searched_on_validation": "MPNet + EfficientNet-Lite2, `naive_combine`, hyperparameters searched "
    "(`--hp_search_trials 8 --hp_search_holdout 0`, trials scored on the validation split)",
    "mpnet_lite2_naive_combine_balanced": "MPNet + EfficientNet-Lite2, `naive_combine`, balanced class weights",
    "minilm_top2_naive_combine": "MiniLM-L6 with its top 2 layers trained (5 epochs; the fixed layers still with "
    "dropout, as before they ran in eval mode) + EfficientNet-Lite0, `naive_combine`",
    "mm_transformer_heads_rule_text_top2": "MiniLM-L6 with its top 2 layers trained (5e-5, 5 epochs, from cached "
    "hidden states) + EfficientNet-Lite0, `mm_transformer` + modality heads + labelling rule, calibrated",
    "mm_transformer_heads_rule_text_top2_lr2e-5": "MiniLM-L6 with its top 2 layers trained (2e-5, 5 epochs, from "
    "cached hidden states) + EfficientNet-Lite0, `mm_transformer` + modality heads + labelling rule, calibrated",
    "mm_transformer_heads_rule_text_all": "MiniLM-L6 with all 6 layers trained (2e-5, 3 epochs, the embeddings "
    "fixed and cached) + EfficientNet-Lite0, `mm_transformer` + modality heads + labelling rule, calibrated",
}
for _towers, _config, _fusion in (
    ("MiniLM-L6 + EfficientNet-Lite0", "mm_transformer", "`mm_transformer`"),
    ("MPNet + EfficientNet-Lite2", "mpnet_lite2", "`naive_combine`"),
):
    CANDIDATES.update(
        {
            f"{_config}_calibrated": f"{_towers}, {_fusion}, calibrated on the validation split",
            f"{_config}_heads": f"{_towers}, {_fusion} + modality heads, calibrated",
            f"{_config}_heads_rule": f"{_towers}, {_fusion} + modality heads + labelling rule, calibrated",
            f"{_config}_heads_conflicts": f"{_towers}, {_fusion} + modality heads, conflicting posts in training, "
            "calibrated",
            f"{_config}_heads_conflicts_rule": f"{_towers}, {_fusion} + modality heads + labelling rule, conflicting "
            "posts in training, calibrated",
        }
    )
_BOTH_PARTIAL_TOWERS = (
    "with its top 2 layers trained (1e-4, layer-wise decay 0.8, 8 epochs) + EfficientNet-Lite0 with its last stage "
    "trained (1e-4), both from cached inputs"
)
"""The recommended schedule's two partly trained towers, as the rows trained on it name them."""
_HELD_OUT = "calibrated on 10% of the training split held out"
CANDIDATES.update(
    {
        "ensemble_calibrated": "MiniLM-L6 + EfficientNet-Lite0, `ensemble` (`naive_cat`, `ote`, `mm_transformer`), "
        "calibrated",
        "ensemble_heads_rule": "MiniLM-L6 + EfficientNet-Lite0, `ensemble` (`naive_cat`, `ote`, `mm_transformer`) + "
        "modality heads + labelling rule, calibrated",
        "mm_transformer_heads_rule_tweet": "MiniLM-L6 + EfficientNet-Lite0, `mm_transformer` + modality heads + "
        "labelling rule, calibrated, tweet-normalised text",
        "mm_transformer_calibrated_holdout": "MiniLM-L6 + EfficientNet-Lite0, `mm_transformer`, calibrated on 10% of "
        "the training split held out (`--calibration_holdout 0.1`: the main job, `configs/offline_minilm_effnet.yaml`)",
        "mm_transformer_heads_rule_holdout": "MiniLM-L6 + EfficientNet-Lite0, `mm_transformer` + modality heads + "
        "labelling rule, calibrated on 10% of the training split held out",
        "mm_transformer_heads_holdout": "MiniLM-L6 + EfficientNet-Lite0, `mm_transformer` + modality heads, "
        "calibrated on 10% of the training split held out",
        "mm_transformer_heads_conflicts_holdout": "MiniLM-L6 + EfficientNet-Lite0, `mm_transformer` + modality heads, "
        "conflicting posts in training, calibrated on 10% of the training split held out",
        "mm_transformer_heads_conflicts_rule_holdout": "MiniLM-L6 + EfficientNet-Lite0, `mm_transformer` + modality "
        "heads + labelling rule, conflicting posts in training, calibrated on 10% of the training split held out",
        "mm_transformer_heads_rule_smooth0.1_holdout": "MiniLM-L6 + EfficientNet-Lite0, `mm_transformer` + modality "
        "heads + labelling rule, label smoothing 0.1, calibrated on 10% of the training split held out",
        "mm_transformer_heads_rule_text_top2_holdout": "MiniLM-L6 with its top 2 layers trained (5e-5, 5 epochs) + "
        "EfficientNet-Lite0, `mm_transformer` + modality heads + labelling rule, calibrated on 10% of the training "
        "split held out",
        "mm_transformer_heads_text_top2_lld0.8_8ep_holdout": "MiniLM-L6 with its top 2 layers trained (1e-4, "
        "layer-wise decay 0.8, 8 epochs) + EfficientNet-Lite0, `mm_transformer` + modality heads, calibrated on 10% of "
        "the training split held out",
        "mm_transformer_heads_text_top2_lld0.8_8ep_tweet_holdout": "MiniLM-L6 with its top 2 layers trained (1e-4, "
        "layer-wise decay 0.8, 8 epochs) + EfficientNet-Lite0, `mm_transformer` + modality heads, tweet-normalised "
        "text, calibrated on 10% of the training split held out",
        "mm_transformer_heads_conflicts_text_top2_lld0.8_8ep_holdout": "MiniLM-L6 with its top 2 layers trained "
        "(1e-4, layer-wise decay 0.8, 8 epochs) + EfficientNet-Lite0, `mm_transformer` + modality heads, conflicting "
        "posts in training, calibrated on 10% of the training split held out",
        "mm_transformer_heads_rule_text_top2_lr1e-4": "MiniLM-L6 with its top 2 layers trained (1e-4, 5 epochs) + "
        "EfficientNet-Lite0, heads + rule, held-out calibration",
        "mm_transformer_heads_rule_text_top2_warmup0.2_3ep": "MiniLM-L6 with its top 2 layers trained (5e-5, 20% "
        "warm-up, 3 epochs) + EfficientNet-Lite0, heads + rule, held-out calibration",
        "mm_transformer_heads_rule_text_top4": "MiniLM-L6 with its top 4 layers trained (5e-5, 5 epochs) + "
        "EfficientNet-Lite0, heads + rule, held-out calibration",
        "mm_transformer_heads_rule_vision_last1": "MiniLM-L6 + EfficientNet-Lite0 with its last stage trained (1e-4, 6 "
        "epochs, from cached feature maps), heads + rule, held-out calibration",
        "mpnet_lite2_heads_rule_text_top2": "MPNet with its top 2 layers trained (5e-5, 5 epochs) + EfficientNet-Lite2, "
        "heads + rule, held-out calibration",
        "mm_transformer_heads_rule_text_top2_lr2e-5_holdout": "MiniLM-L6 with its top 2 layers trained (2e-5, 5 "
        "epochs) + EfficientNet-Lite0, heads + rule, held-out calibration",
        "mm_transformer_heads_mixup0.4_holdout": "MiniLM-L6 + EfficientNet-Lite0, `mm_transformer` + modality heads, "
        "manifold mixup (α 0.4), calibrated on 10% of the training split held out",
        "mm_transformer_heads_text_top2_lld0.8_8ep_mixup0.4_holdout": "MiniLM-L6 with its top 2 layers trained (1e-4, "
        "layer-wise decay 0.8, 8 epochs) + EfficientNet-Lite0, `mm_transformer` + modality heads, manifold mixup "
        "(α 0.4), calibrated on 10% of the training split held out",
        "mm_transformer_heads_text_top4_lld0.8_8ep_holdout": "MiniLM-L6 with its top 4 layers trained (1e-4, "
        "layer-wise decay 0.8, 8 epochs) + EfficientNet-Lite0, `mm_transformer` + modality heads, calibrated on 10% of "
        "the training split held out",
        "mm_transformer_heads_text_top2_lld0.8_8ep_vision_last1_holdout": f"MiniLM-L6 {_BOTH_PARTIAL_TOWERS}, "
        f"`mm_transformer` + modality heads, {_HELD_OUT}",
        "ensemble_heads_text_top2_lld0.8_8ep_vision_last1_holdout": f"MiniLM-L6 {_BOTH_PARTIAL_TOWERS}, `ensemble` "
        f"(`naive_cat`, `ote`, `mm_transformer`) + modality heads, {_HELD_OUT}",
        "mpnet_heads_text_top2_lld0.8_8ep_vision_last1_holdout": f"MPNet {_BOTH_PARTIAL_TOWERS}, `mm_transformer` + "
        f"modality heads, {_HELD_OUT}",
        "image_only_holdout": f"`image_only`, EfficientNet-Lite0 frozen, {_HELD_OUT}",
        "image_only_lite2_holdout": f"`image_only`, EfficientNet-Lite2 frozen (`--vision_model_name_or_path "
        f"backbones-large/vision`), {_HELD_OUT}",
        "image_only_holdout0.2": "`image_only`, EfficientNet-Lite0 frozen, calibrated on 20% of the training split "
        "held out (`--calibration_holdout 0.2`)",
        "mm_transformer_heads_text_all_lld0.8_8ep_holdout": "MiniLM-L6 with all 6 layers trained (1e-4 at the top, "
        "layer-wise decay 0.8, 8 epochs; the embeddings fixed and cached) + EfficientNet-Lite0, `mm_transformer` + "
        "modality heads, calibrated on 10% of the training split held out",
    }
)
CALIBRATION = ("test_ece", "test_nll")
"""Reported by the runs trained with calibration (blank for the rows trained before it)."""
"""Cross-split rows that are candidates for the best offline model (the others are the paper fusions)."""


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}" if len(values) > 1 else f"{mean:.2f}"


def paper_runs() -> list[dict]:
    """The paper-table runs: `bench/results/<fusion>_seed<seed>.json`."""
    return [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*_seed*.json"))]


def sweep_runs(fusion: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((RESULTS / "sweep" / fusion).glob("*_seed*.json"))]


def all_runs() -> list[tuple[Path, dict]]:
    """Every run file that a README table is made from."""
    paths = (
        sorted(RESULTS.glob("*_seed*.json"))
        + sorted(RESULTS.glob("sweep/*/*_seed*.json"))
        + sorted(CROSS_SPLIT.glob("*/split*.json"))
    )
    return [(path, json.loads(path.read_text())) for path in paths]


def final_validation_macro_f1(run: dict) -> float:
    """The validation macro-F1 of the model a run saved: as evaluated after training (`final_validation_macro_f1`,
    recorded since calibration could be fitted off the validation split), or, for earlier runs, its best
    checkpoint's or, where the labelling rule's weight was chosen on validation after training (modality heads), the
    macro-F1 of that choice (the best of the grid: the saved model's, on the same posts)."""
    if "final_validation_macro_f1" in run:
        return 100 * run["final_validation_macro_f1"]
    scores = (run.get("calibration") or {}).get("rule_weight_macro_f1")
    return 100 * (max(scores.values()) if scores else run["best_validation_macro_f1"])


def rule_chosen_on_validation(run: dict) -> bool:
    """Whether the run chose its labelling rule's weight among several on the validation split (calibrated there,
    which runs before `--calibration_holdout` all were)."""
    calibration = run.get("calibration") or {}
    held_out = "held out" in calibration.get("calibrated_on", "")
    return len(calibration.get("rule_weight_macro_f1") or {}) > 1 and not held_out


def calibrated_on_validation(run: dict) -> bool:
    """Whether the run fitted its temperatures on the validation split (as calibrated runs did before
    `--calibration_holdout`): the posts that chose its checkpoint, which then cannot check its probabilities."""
    calibration = run.get("calibration")
    return bool(calibration) and "held out" not in calibration.get("calibrated_on", "")


SEED_MEMBER = re.compile(r"^(?P<config>.+)_seed(?P<seed>\d+)$")
"""A cross-split row of one configuration trained with another seed (`cross_split.py --name CONFIG_seedS --seed S`):
a member of that configuration's seed ensemble (`bench/results/seed_ensemble/`), not a row of its own."""
SEED_ENSEMBLE = RESULTS / "seed_ensemble"


def cross_split_summary() -> dict:
    """Per cross-split row (`bench/results/cross_split/<name>/`): the figures of its runs, one per split seed."""
    summary = {}
    for folder in sorted(p for p in CROSS_SPLIT.glob("*") if p.is_dir() and not SEED_MEMBER.match(p.name)):
        runs = sorted((json.loads(p.read_text()) for p in folder.glob("split*.json")), key=lambda r: r["split_seed"])
        if not runs:
            continue
        entry = {
            "split_seeds": [r["split_seed"] for r in runs],
            "fusion": runs[0]["fusion"],
            "validation_macro_f1": [final_validation_macro_f1(r) for r in runs],
            **{key: [100 * r[key] for r in runs] for key in METRICS},
            **{key: [100 * r[key] for r in runs] for key in CALIBRATION if all(key in r for r in runs)},
            "per_class_f1": {
                label: [100 * r["per_class_f1"][label] for r in runs] for label in runs[0]["per_class_f1"]
            },
            "minutes": statistics.mean(r["seconds"] for r in runs) / 60,
            # A search scored on the validation split makes that split's score the best of its trials: shown, but
            # not an estimate to compare rows on.
            "validation_searched": any(
                "--hp_search_trials" in r["flags"] and "--hp_search_holdout 0" in r["flags"] for r in runs
            ),
            # So does choosing the labelling rule's weight on the validation split: the saved model's validation
            # score is the best of the weights tried on those posts.
            "rule_chosen_on_validation": any(rule_chosen_on_validation(r) for r in runs),
            # Temperatures fitted on the posts that chose the checkpoint: measured overconfident on test (docs/results.md).
            "calibrated_on_validation": any(calibrated_on_validation(r) for r in runs),
            "calibrated": all(r.get("calibration") for r in runs),
            "command": runs[0]["command"].replace(f"--split_seed {runs[0]['split_seed']}", "--split_seed K"),
            "git_commit": runs[0].get("git_commit"),
        }
        summary[folder.name] = entry
    return summary


def best_on_validation(summary: dict, names, held_out_calibration: bool = False) -> str | None:
    """Of `names`, the row with all five splits and the best mean validation macro-F1 (test plays no part). Rows that
    chose something beyond the checkpoint on the validation split itself are not eligible: hyperparameters searched
    there, or the labelling rule's weight chosen there; their validation figure is the best of several settings on
    those posts, which overstates it. With `held_out_calibration` (the recommended model, whose probabilities users
    read), only rows calibrated on posts held out of the training split are: the others are uncalibrated, or
    calibrated on the posts that chose their checkpoint."""
    complete = [
        n
        for n in names
        if n in summary
        and len(summary[n]["split_seeds"]) == 5
        and not summary[n].get("validation_searched")
        and not summary[n].get("rule_chosen_on_validation")
        and (
            not held_out_calibration
            or (summary[n].get("calibrated") and not summary[n].get("calibrated_on_validation"))
        )
    ]
    return max(complete, key=lambda n: statistics.mean(summary[n]["validation_macro_f1"])) if complete else None


def recommended_row(summary: dict) -> str | None:
    """The recommended model (`configs/best_offline.yaml`): of every five-split row calibrated on held-out training
    posts, the one with the best mean validation macro-F1."""
    return best_on_validation(summary, [*CANDIDATES, *ORDER], held_out_calibration=True)


CROSS_SPLIT_HEADER = [
    "| model | splits | validation macro-F1 | test accuracy | test macro-F1 | test weighted-F1 "
    "| test F1 neg / neu / pos | test ECE | test NLL | minutes per run |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def cross_split_rows(on_validation: bool) -> list[str]:
    """The five-split table's rows (the candidates first, then the paper's fusions): those whose temperatures were
    fitted on the validation split (`on_validation`), or all the others (calibrated on held-out training posts, or
    trained before calibration); in bold the recommended model and the main job's fusion."""
    summary = cross_split_summary()
    bold = {recommended_row(summary), best_on_validation(summary, ORDER)}
    names = [n for n in CANDIDATES if n in summary] + [n for n in ORDER if n in summary]
    names += sorted(set(summary) - set(names))
    lines = []
    for name in (n for n in names if summary[n]["calibrated_on_validation"] == on_validation):
        entry = summary[name]
        label = CANDIDATES.get(name, f"`{name}` (MiniLM-L6 + EfficientNet-Lite0)")
        lines.append(table_row(f"**{label}**" if name in bold else label, len(entry["split_seeds"]), entry))
    return lines


def cross_split_markdown() -> str:
    published = [
        f"| {name} | 1 (published) |  | {accuracy} | {macro} | {weighted} |  |  |  |  |"
        for name, accuracy, macro, weighted in PUBLISHED
    ]
    return "\n".join([*CROSS_SPLIT_HEADER, *cross_split_rows(on_validation=False), *published]) + "\n"


def cross_split_validation_calibrated_markdown() -> str:
    return "\n".join([*CROSS_SPLIT_HEADER, *cross_split_rows(on_validation=True)]) + "\n"


SUMMARY_ROWS = ("naive_cat", "naive_combine", "cmac", "hstec", "ote")
"""The paper's fusions, with the main job's towers, in the README's summary."""
SUMMARY_PUBLISHED = 3
"""The paper's published row and the two strongest published rows after it."""


def summary_markdown() -> str:
    """The README's results summary (at most 10 rows): the recommended model and the main job's configuration (both
    chosen on validation), the paper's fusions with the main job's towers, and published single-split figures."""
    summary = cross_split_summary()
    recommended = recommended_row(summary)
    main_fusion = best_on_validation(summary, ORDER)
    rows = [(f"**recommended**: {CANDIDATES.get(recommended, recommended)}", recommended)]
    main_job = next(
        (name for name in (f"{main_fusion}_calibrated_holdout", f"{main_fusion}_calibrated") if name in summary),
        main_fusion,
    )
    held_out = " on 10% of the training split held out" if main_job.endswith("_holdout") else ""
    rows.append((f"main job: `{main_fusion}` (MiniLM-L6 + EfficientNet-Lite0), calibrated{held_out}", main_job))
    rows += [(f"`{name}` (the paper's fusion, MiniLM-L6 + EfficientNet-Lite0)", name) for name in SUMMARY_ROWS]
    lines = [
        "| model | splits | test accuracy | test weighted-F1 | test macro-F1 | test ECE |",
        "|---|---|---|---|---|---|",
    ]
    for label, name in rows:
        if name not in summary:
            continue
        entry = summary[name]
        ece = cell(entry["test_ece"]) if "test_ece" in entry else ""
        lines.append(
            f"| {label} | {len(entry['split_seeds'])} | {cell(entry['test_accuracy'])} | "
            f"{cell(entry['test_weighted_f1'])} | {cell(entry['test_macro_f1'])} | {ece} |"
        )
    published = [PUBLISHED[2], *sorted(PUBLISHED[3:], key=lambda row: float(row[1]))[-(SUMMARY_PUBLISHED - 1) :]]
    for name, accuracy, macro, weighted in published:
        lines.append(f"| {name} | 1 (published) | {accuracy} | {weighted} | {macro} |  |")
    return "\n".join(lines) + "\n"


TARGETS = (
    ("test accuracy", "test_accuracy", 75.0),
    ("test weighted-F1", "test_weighted_f1", 74.0),
    ("test macro-F1", "test_macro_f1", 65.0),
    ("stretch: test accuracy", "test_accuracy", 77.0),
    ("stretch: test weighted-F1", "test_weighted_f1", 76.0),
)
"""The accuracy targets for the model chosen on validation: (what, its key in a row, the five-split mean to reach)."""
TARGET_MINUTES = 45
"""The time target: one run of the chosen configuration from a warm feature cache, on a 2-core CPU."""


def targets_markdown(summary: dict | None = None) -> str:
    """The README's targets: for each, the recommended model's five-split mean and by how much it misses it (or
    "met"); the time target against its minutes per run."""
    summary = cross_split_summary() if summary is None else summary
    name = recommended_row(summary)
    if name is None:
        return "No five-split row is eligible as the recommended model.\n"
    entry = summary[name]
    lines = ["| target | the recommended model (five splits) | short by |", "|---|---|---|"]
    for label, key, goal in TARGETS:
        mean = statistics.mean(entry[key])
        lines.append(
            f"| {label} ≥ {goal:g} | {cell(entry[key])} | {'met' if mean >= goal else f'{goal - mean:.2f}'} |"
        )
    minutes = entry["minutes"]
    lines.append(
        f"| one run ≤ {TARGET_MINUTES} minutes (feature cache filled) | {minutes:.1f} minutes, other runs sharing "
        f"the CPU | {'met' if minutes <= TARGET_MINUTES else f'{minutes - TARGET_MINUTES:.1f} minutes'} |"
    )
    return "\n".join(lines) + "\n"


def table_row(label: str, runs: int, entry: dict, calibration: bool = True) -> str:
    """One row of a results table: runs, validation macro-F1, the test metrics, per-class F1, (ECE and NLL, in
    points and nats x 100, where the runs report them), minutes per run."""
    per_class = " / ".join(cell(v) for v in entry["per_class_f1"].values())
    calibrated = (
        "".join(f" | {cell(entry[key]) if key in entry else ''}" for key in CALIBRATION) if calibration else ""
    )
    return (
        f"| {label} | {runs} | {cell(entry['validation_macro_f1'])} | "
        + " | ".join(cell(entry[key]) for key in METRICS)
        + f" | {per_class}{calibrated} | {entry['minutes']:.1f} |"
    )


SEED_ENSEMBLE_COLUMNS = (
    ("held-out macro-F1", "held_out_macro_f1"),
    ("validation macro-F1", "validation_macro_f1"),
    ("test accuracy", "test_accuracy"),
    ("test macro-F1", "test_macro_f1"),
    ("test weighted-F1", "test_weighted_f1"),
    ("test ECE", "test_ece"),
)


def seed_ensemble_summary(config: str) -> dict:
    """`bench/results/seed_ensemble/<config>/split*.json` (`bench/seed_ensemble.py` on one split's runs, several files
    a split for averages of different numbers of models): per row (each seed's model, the mean of N single models,
    the average of N models), the split seeds and each figure's values over those splits."""
    files = sorted((SEED_ENSEMBLE / config).glob("split*.json"))
    results = sorted(
        (json.loads(path.read_text()) for path in files), key=lambda r: (r["split_seed"], len(r["models"]))
    )
    rows: dict[str, dict] = {}

    def add(row: str, split_seed: int, figures: dict) -> None:
        entry = rows.setdefault(row, {"split_seeds": []})
        if split_seed in entry["split_seeds"]:  # one seed's model, scored again in another file of the split
            return
        entry["split_seeds"].append(split_seed)
        for _, key in SEED_ENSEMBLE_COLUMNS:
            if key in figures:
                entry.setdefault(key, []).append(figures[key])

    for result in results:
        members = sorted(result["models"].values(), key=lambda figures: figures["seed"])
        for figures in members:
            add(f"seed {figures['seed']}", result["split_seed"], figures)
        add(f"mean of {len(members)} single models", result["split_seed"], result["members_mean"])
        add(f"the average of {len(members)} models", result["split_seed"], result["ensemble"])

    def place(row: str) -> tuple[int, int, bool]:  # the seeds, then for each N the mean of N models and their average
        number = int(re.search(r"\d+", row).group())
        return (0, number, False) if row.startswith("seed ") else (1, number, row.startswith("the average"))

    return {row: rows[row] for row in sorted(rows, key=place)}


def seed_ensemble_markdown(config: str = "best_offline") -> str:
    rows = seed_ensemble_summary(config)
    if not rows:
        return "No seed-ensemble runs yet.\n"
    headings = ["model", "splits", *(heading for heading, _ in SEED_ENSEMBLE_COLUMNS)]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for name, entry in rows.items():
        cells = [cell(entry[key]) if key in entry else "" for _, key in SEED_ENSEMBLE_COLUMNS]
        lines.append(f"| {name} | {len(entry['split_seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paper_summary() -> dict:
    rows = {}
    for result in paper_runs():
        rows.setdefault(result["fusion"], []).append(result)
    summary = {}
    for fusion in [f for f in ORDER if f in rows] + sorted(set(rows) - set(ORDER)):
        results = sorted(rows[fusion], key=lambda r: r["seed"])
        entry = {
            "seeds": [r["seed"] for r in results],
            "validation_macro_f1": [100 * r["best_validation_macro_f1"] for r in results],
        }
        for key in METRICS:
            entry[key] = [100 * r[key] for r in results]
        entry["per_class_f1"] = {
            label: [100 * r["per_class_f1"][label] for r in results] for label in results[0]["per_class_f1"]
        }
        entry["minutes"] = statistics.mean(r["seconds"] for r in results) / 60
        summary[fusion] = entry
    return summary


def paper_table_markdown() -> str:
    summary = paper_summary()
    best = best_on_validation(cross_split_summary(), ORDER)  # the main job's fusion, chosen across the five splits
    lines = [
        "| model | seeds | validation macro-F1 | test accuracy | test macro-F1 | test weighted-F1 | test F1 neg / neu / pos "
        "| minutes per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fusion, entry in summary.items():
        name = f"**`{fusion}`**" if fusion == best else f"`{fusion}`"
        lines.append(table_row(f"{name} (MiniLM-L6 + EfficientNet-Lite0)", len(entry["seeds"]), entry, False))
    for name, accuracy, macro, weighted in PUBLISHED:
        lines.append(f"| {name} | published |  | {accuracy} | {macro} | {weighted} |  |  |")
    return "\n".join(lines) + "\n"


def sweep_summary(fusion: str) -> tuple[dict, str | None]:
    rows = {"base config": []}
    for result in sweep_runs(fusion):
        rows.setdefault(result["variant"], []).append(result)
    rows = {name: runs for name, runs in rows.items() if runs}  # the base config first
    summary = {}
    for name, runs in rows.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        summary[name] = {
            "flags": runs[0].get("flags", ""),
            "seeds": [r["seed"] for r in runs],
            "validation_macro_f1": [100 * r["best_validation_macro_f1"] for r in runs],
            **{key: [100 * r[key] for r in runs] for key in METRICS},
        }
    most = max((len(r["seeds"]) for r in summary.values()), default=0)
    complete = {n: r for n, r in summary.items() if len(r["seeds"]) == most}
    selected = max(complete, key=lambda n: mean_std(complete[n]["validation_macro_f1"])[0]) if complete else None
    return summary, selected


def sweep_markdown(fusion: str) -> str:
    summary, selected = sweep_summary(fusion)
    seeds = sorted({s for row in summary.values() for s in row["seeds"]})
    lines = [
        f"`{fusion}`, seeds {' '.join(map(str, seeds))}; selected on mean validation macro-F1 (**bold**).",
        "",
        "| variant | train_hf.py flags | validation macro-F1 | test accuracy | test macro-F1 | test weighted-F1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        label = f"**{name}**" if name == selected else name
        lines.append(
            f"| {label} | `{row['flags'] or '(none)'}` | {cell(row['validation_macro_f1'])} | "
            + " | ".join(cell(row[key]) for key in METRICS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def inference_markdown() -> str:
    data = json.loads((RESULTS / "inference_speed.json").read_text())
    lines = [
        "| setting | direct processor + model call | pipeline | peak RSS | model file | predictions equal to float32 "
        "| test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in data["results"].items():
        if "skipped" in result:
            description = data["settings"][name].get("description", name)
            lines.append(f"| {description} | not measured: {result['skipped']} | | | | | |")
            continue
        pipeline = f"{result['pipeline_posts_per_s']:.1f}" if "pipeline_posts_per_s" in result else "-"
        model_size = f"{result['model_mb']:.0f} MB" if "model_mb" in result else "-"
        agreement = (
            "(baseline)" if name == next(iter(data["results"])) else f"{100 * result['agreement_with_baseline']:.1f}%"
        )
        lines.append(
            f"| {data['settings'][name].get('description', name)} | {result['direct_posts_per_s']:.1f} | "
            f"{pipeline} | {result['peak_rss_mb']:.0f} MB | {model_size} | {agreement} | {100 * result['accuracy']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def stages_markdown() -> str:
    """Milliseconds per post in each stage of the ONNX settings (`stages_ms_per_post` of bench/inference_speed.py)."""
    data = json.loads((RESULTS / "inference_speed.json").read_text())
    measured = {name: r["stages_ms_per_post"] for name, r in data["results"].items() if "stages_ms_per_post" in r}
    if not measured:
        return "No stage times measured.\n"
    stages = list(dict.fromkeys(stage for times in measured.values() for stage in times))
    lines = [
        "| setting | " + " | ".join(stages) + " | total | posts/s at that total |",
        "|---" * (len(stages) + 3) + "|",
    ]
    for name, times in measured.items():
        total = sum(times.values())
        lines.append(
            f"| {data['settings'][name].get('description', name)} | "
            + " | ".join(f"{times.get(stage, 0.0):.2f}" for stage in stages)
            + f" | {total:.2f} | {1000 / total:.0f} |"
        )
    return "\n".join(lines) + "\n"


def tower_speed_markdown(file: str, columns: tuple[tuple[str, str], ...]) -> str:
    """A tower-speed table (bench/text_tower_speed.py, bench/vision_tower_speed.py): `columns` are `(heading, field)`
    before the timings; a boolean field reads yes / no (a row measured before the field existed: no)."""
    path = RESULTS / file
    if not path.is_file():
        return "Not measured yet.\n"
    data = json.loads(path.read_text())
    headings = [heading for heading, _ in columns] + ["seconds per step", "seconds per epoch (226 steps)"]
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for row in data["results"]:
        cells = [row.get(field) for _, field in columns]
        cells = ["yes" if cell is True else "no" if cell in (False, None) else cell for cell in cells]
        cells += [f"{row['seconds_per_step']:.2f}", f"{row['seconds_per_epoch']:.0f}"]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    note = data.get("note")
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


def text_tower_speed_markdown() -> str:
    return tower_speed_markdown(
        "text_tower_speed.json",
        (
            ("towers", "towers"),
            ("text layers trained", "trained_text_layers"),
            ("hidden states entering them cached", "hidden_states_cached"),
        ),
    )


def vision_tower_speed_markdown() -> str:
    return tower_speed_markdown(
        "vision_tower_speed.json",
        (
            ("towers", "towers"),
            ("image stages trained", "trained_image_stages"),
            ("feature maps entering them cached", "feature_maps_cached"),
        ),
    )


def tables(readme_text: str = "") -> dict[str, str]:
    """Every table: the paper table, the inference table, and a sweep table for each sweep folder and each sweep the
    README has markers for (a marked sweep without runs renders as such, never as stale text)."""
    rendered = {
        "summary": summary_markdown(),
        "targets": targets_markdown(),
        "cross_split": cross_split_markdown(),
        "cross_split_validation_calibrated": cross_split_validation_calibrated_markdown(),
        "seed_ensemble": seed_ensemble_markdown(),
        "paper": paper_table_markdown(),
        "inference": inference_markdown(),
        "inference_stages": stages_markdown(),
        "text_tower_speed": text_tower_speed_markdown(),
        "vision_tower_speed": vision_tower_speed_markdown(),
    }
    sweeps = {folder.name for folder in (RESULTS / "sweep").glob("*") if folder.is_dir()}
    sweeps |= set(re.findall(r"^<!-- table:sweep:([\w-]+) -->$", readme_text, re.M))
    for fusion in sorted(sweeps):
        rendered[f"sweep:{fusion}"] = sweep_markdown(fusion) if sweep_runs(fusion) else f"No `{fusion}` sweep runs.\n"
    return rendered


def documents() -> list[Path]:
    """The files that hold result tables: the README and every page of the documentation."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def render(text: str, rendered: dict[str, str]) -> tuple[str, set[str]]:
    """`text` with the content between each table's markers replaced by its rendering, and the names it holds."""
    placed = set(re.findall(r"^<!-- table:([\w:-]+) -->$", text, re.M))  # a marker is a line of its own
    unknown = placed - set(rendered)
    if unknown:
        raise ValueError(f"markers of unknown tables: {sorted(unknown)}")
    for name in placed:
        pattern = re.compile(
            rf"(^<!-- table:{re.escape(name)} -->\n).*?(^<!-- /table:{re.escape(name)} -->$)", re.S | re.M
        )
        if not pattern.search(text):
            raise ValueError(f"<!-- table:{name} --> has no closing <!-- /table:{name} --> marker")
        text = pattern.sub(lambda m, body=rendered[name]: m.group(1) + body + m.group(2), text)
    return text, placed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a table is out of date")
    args = parser.parse_args(argv)
    paths = documents()
    current = {path: path.read_text() for path in paths}
    rendered = tables("".join(current.values()))
    expected, placed = {}, set()
    for path, text in current.items():
        expected[path], names = render(text, rendered)
        placed |= names
    missing = set(rendered) - placed
    if missing:
        raise ValueError(f"tables with no place in README.md or docs/: {sorted(missing)}")
    stale = [
        str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        for path in paths
        if expected[path] != current[path]
    ]
    if args.check:
        if stale:
            print(
                f"result tables differ from bench/results in {', '.join(stale)}: run python bench/results_tables.py",
                file=sys.stderr,
            )
            return 1
        return 0
    for path in paths:
        if expected[path] != current[path]:
            path.write_text(expected[path])
    (RESULTS / "paper_table.md").write_text(rendered["paper"])
    (RESULTS / "paper_table.json").write_text(json.dumps(paper_summary(), indent=2) + "\n")
    for name, markdown in rendered.items():
        folder = RESULTS / "sweep" / name.split(":", 1)[-1]
        if name.startswith("sweep:") and folder.is_dir():
            (folder / "sweep.md").write_text(markdown)
    print("\n\n".join(rendered.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
