"""The README's result tables are what `bench/results/` renders, and every run behind them was trained by today's
modelling code (its recorded behaviour probe in double precision, `code_probe`, equals today's: the float32 probe
also depends on the CPU's kernels)."""

import sys
from pathlib import Path

import pytest

from mmsa.testing_utils import code_probe, parameter_order, probe_keys, probes_match


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import results_tables  # noqa: E402


CODE_TOLERANCE = 1e-5
"""Of the double-precision probe: far above its rounding on any CPU, far below any change of the computation."""


@pytest.fixture(scope="module")
def today():
    return code_probe()


@pytest.mark.parametrize("table", ["summary", "cross_split"])
def test_readme_and_docs_tables_are_rendered_from_the_results(table, tmp_path, monkeypatch, capsys):
    assert results_tables.main(["--check"]) == 0
    # ... and the check can fail: one number changed by hand, in the README's summary or on the results page.
    documents = results_tables.documents()
    source = next(path for path in documents if f"<!-- table:{table} -->" in path.read_text())
    text = source.read_text()
    start = text.index(f"<!-- table:{table} -->")
    row = text.index("| ", text.index("|---", start))
    digit = next(i for i in range(row, len(text)) if text[i].isdigit() and text[i - 1] == " ")
    changed = tmp_path / source.name
    changed.write_text(text[:digit] + str((int(text[digit]) + 1) % 10) + text[digit + 1 :])
    monkeypatch.setattr(results_tables, "documents", lambda: [changed if p == source else p for p in documents])
    assert results_tables.main(["--check"]) == 1
    assert source.name in capsys.readouterr().err


def test_every_run_comes_from_todays_modelling_code(today):
    runs = results_tables.all_runs()
    assert len(runs) >= 10  # at least two rows of the five-split protocol
    stale = [
        path.name
        for path, run in runs
        if not probes_match(run.get("code_probe", {}), today, tolerance=CODE_TOLERANCE, keys=probe_keys(run["fusion"]))
    ]
    assert stale == [], f"trained by other modelling code: {stale}"
    for path, run in runs:
        assert run["git_commit"] and run["mmsa_version"], path.name
        assert run["command"].startswith(
            (
                "accelerate launch train_hf.py configs/offline_minilm_effnet.yaml",
                "accelerate launch train_hf.py configs/best_offline.yaml",
                "accelerate launch train_hf.py configs/mpnet_lite2_naive_combine.yaml",
            )
        )


@pytest.mark.parametrize("change", ["logits", "order", "pixels", "missing"])
def test_a_stale_run_is_detected(change, today):
    path, run = results_tables.all_runs()[0]
    keys = probe_keys(run["fusion"])
    probe = dict(run["code_probe"])
    if change == "logits":
        probe[run["fusion"]] = [value + 0.01 for value in probe[run["fusion"]]]
    elif change == "order":
        # another parameter order: one step's logits agree, gradient-clipping sums do not
        probe[keys[1]] = [probe[keys[1]][0] + 1]
    elif change == "pixels":
        probe["pixels"] = [value + 0.01 for value in probe["pixels"]]
    else:
        probe.pop(keys[1])
    assert probes_match(run["code_probe"], today, tolerance=CODE_TOLERANCE, keys=keys)
    assert not probes_match(probe, today, tolerance=CODE_TOLERANCE, keys=keys)


def test_parameter_order_sees_registration_order():
    import torch

    first, second, again = torch.nn.Module(), torch.nn.Module(), torch.nn.Module()
    first.norm, first.proj = torch.nn.LayerNorm(8), torch.nn.Linear(8, 4)
    second.proj, second.norm = torch.nn.Linear(8, 4), torch.nn.LayerNorm(8)
    again.norm, again.proj = torch.nn.LayerNorm(8), torch.nn.Linear(8, 4)
    assert parameter_order(first) == parameter_order(again) != parameter_order(second)
    assert len(parameter_order(first)) == 1 and 0 < parameter_order(first)[0] < 2**48


def config_at(path: str, commit: str | None) -> str:
    """A config file as it was at `commit` (a run's `git_commit`, `+dirty` or not), else as it is today."""
    import subprocess

    if commit:
        shown = subprocess.run(
            ["git", "show", f"{commit.removesuffix('+dirty')}:{path}"],
            cwd=results_tables.ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if shown.returncode == 0:
            return shown.stdout
    return (results_tables.ROOT / path).read_text()


def run_settings(command: str, commit: str | None = None) -> dict:
    """The settings a five-split row's command trained with: its config file as it was at the run's commit, then its
    flags (a bare flag is true)."""
    import shlex

    import yaml

    words = shlex.split(command)[3:]
    settings = yaml.safe_load(config_at(words[0], commit))
    index = 1
    while index < len(words):
        name = words[index][2:]
        if index + 1 < len(words) and not words[index + 1].startswith("--"):
            value = yaml.safe_load(words[index + 1])
            if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; the flag parser as a number
                try:
                    value = float(value)
                except ValueError:
                    pass
            index += 2
        else:
            value, index = True, index + 1
        settings[name] = value
    return settings


def test_the_configs_are_the_models_selected_on_validation_across_splits():
    """The main job trains the fusion with the best mean validation macro-F1 over the five splits (of the eight, with
    its towers); configs/best_offline.yaml trains the best of every eligible five-split row calibrated on held-out
    training posts, on the same criterion."""
    import yaml

    summary = results_tables.cross_split_summary()
    config = yaml.safe_load((results_tables.ROOT / "configs" / "offline_minilm_effnet.yaml").read_text())
    assert config["fusion"] == results_tables.best_on_validation(summary, results_tables.ORDER)
    best = results_tables.recommended_row(summary)
    assert summary[best]["split_seeds"] == [1, 2, 3, 4, 5]
    recommended = yaml.safe_load((results_tables.ROOT / "configs" / "best_offline.yaml").read_text())
    trained = run_settings(summary[best]["command"], summary[best]["git_commit"])
    ignored = {"output_dir", "seed", "split_seed"}
    assert {k: v for k, v in recommended.items() if k not in ignored} == {
        k: v for k, v in trained.items() if k not in ignored
    }, best


def test_a_row_searched_on_the_validation_split_is_not_selected_on_it():
    rows = {
        "plain": {"split_seeds": [1, 2, 3, 4, 5], "validation_macro_f1": [60.0] * 5},
        "searched_on_validation": {
            "split_seeds": [1, 2, 3, 4, 5],
            "validation_macro_f1": [65.0] * 5,
            "validation_searched": True,
        },
        "searched_on_a_holdout": {"split_seeds": [1, 2, 3, 4, 5], "validation_macro_f1": [61.0] * 5},
        "two_splits": {"split_seeds": [1, 2], "validation_macro_f1": [70.0] * 2},
    }
    assert results_tables.best_on_validation(rows, list(rows)) == "searched_on_a_holdout"
    assert results_tables.best_on_validation(rows, ["plain", "searched_on_validation"]) == "plain"


def test_a_row_whose_rule_weight_was_chosen_on_validation_is_not_selected_on_it():
    """Choosing the labelling rule's weight among several on the validation posts makes the saved model's validation
    score the best of those weights: such a row is shown but not eligible; chosen on held-out training posts, it is."""
    on_validation = {"calibration": {"rule_weight_macro_f1": {"0.0": 0.6, "0.5": 0.66}}}
    held_out = {
        "calibration": {"calibrated_on": "361 posts held out of the training split", **on_validation["calibration"]}
    }
    assert results_tables.rule_chosen_on_validation(on_validation)
    assert not results_tables.rule_chosen_on_validation(held_out)
    assert not results_tables.rule_chosen_on_validation({"calibration": {"rule_weight_macro_f1": {"0.0": 0.6}}})
    assert not results_tables.rule_chosen_on_validation({})  # trained before calibration
    rows = {
        "rule_on_validation": {
            "split_seeds": [1, 2, 3, 4, 5],
            "validation_macro_f1": [66.0] * 5,
            "rule_chosen_on_validation": True,
        },
        "no_rule": {"split_seeds": [1, 2, 3, 4, 5], "validation_macro_f1": [65.0] * 5},
    }
    assert results_tables.best_on_validation(rows, list(rows)) == "no_rule"


def test_the_recommended_model_is_calibrated_on_posts_held_out_of_training():
    """A row calibrated on the validation split (the posts that chose its checkpoint) or not calibrated at all is shown
    but not recommended, however high its validation score; the paper fusions' choice (the main job's) is unchanged."""
    held_out = {"calibration": {"calibrated_on": "361 posts held out of the training split", "temperature": 1.2}}
    on_validation = {"calibration": {"calibrated_on": "the validation split", "temperature": 1.2}}
    assert not results_tables.calibrated_on_validation(held_out)
    assert results_tables.calibrated_on_validation(on_validation)
    assert results_tables.calibrated_on_validation({"calibration": {"temperature": 1.2}})  # before the field existed
    assert not results_tables.calibrated_on_validation({})  # trained before calibration
    five = [1, 2, 3, 4, 5]
    rows = {
        "on_validation": {
            "split_seeds": five,
            "validation_macro_f1": [67.0] * 5,
            "calibrated": True,
            "calibrated_on_validation": True,
        },
        "uncalibrated": {"split_seeds": five, "validation_macro_f1": [66.0] * 5, "calibrated": False},
        "held_out": {
            "split_seeds": five,
            "validation_macro_f1": [64.0] * 5,
            "calibrated": True,
            "calibrated_on_validation": False,
        },
    }
    assert results_tables.best_on_validation(rows, list(rows), held_out_calibration=True) == "held_out"
    assert results_tables.best_on_validation(rows, list(rows)) == "on_validation"


def test_the_targets_table_says_by_how_much_the_recommended_model_misses_each_target(monkeypatch):
    five = [1, 2, 3, 4, 5]
    recommended = {
        "split_seeds": five,
        "validation_macro_f1": [66.0] * 5,
        "calibrated": True,
        "calibrated_on_validation": False,
        "test_accuracy": [74.0, 75.0, 76.0, 74.0, 75.0],  # mean 74.8: 0.20 short of 75
        "test_weighted_f1": [74.5] * 5,  # 74.5: met
        "test_macro_f1": [60.0] * 5,
        "minutes": 50.0,
    }
    lower = {**recommended, "validation_macro_f1": [60.0] * 5, "test_accuracy": [90.0] * 5}
    summary = {"recommended": recommended, "lower_on_validation": lower}
    for name in summary:
        monkeypatch.setitem(results_tables.CANDIDATES, name, name)
    rows = results_tables.targets_markdown(summary).splitlines()[2:]
    cells = {row.split(" | ")[0].lstrip("| "): row.split(" | ")[1:] for row in rows}
    assert cells["test accuracy ≥ 75"] == ["74.80 ± 0.84", "0.20 |"]  # the row chosen on validation, not on test
    assert cells["test weighted-F1 ≥ 74"] == ["74.50 ± 0.00", "met |"]
    assert cells["test macro-F1 ≥ 65"] == ["60.00 ± 0.00", "5.00 |"]
    assert cells["stretch: test weighted-F1 ≥ 76"][1] == "1.50 |"
    assert cells["one run ≤ 45 minutes (feature cache filled)"][1] == "5.0 minutes |"
    assert results_tables.targets_markdown({"lower_on_validation": {**lower, "split_seeds": [1]}}).startswith("No ")


def test_the_seed_ensemble_table_averages_each_row_over_the_splits(tmp_path, monkeypatch):
    import json

    def figures(seed, base):
        return {"seed": seed, "held_out_macro_f1": base, "validation_macro_f1": base + 1, "test_accuracy": base + 10}

    folder = tmp_path / "best_offline"
    folder.mkdir()
    for split_seed, base in ((1, 60.0), (2, 62.0)):
        result = {
            "split_seed": split_seed,
            "models": {"runs/b": figures(43, base + 2), "runs/a": figures(42, base)},
            "members_mean": {"held_out_macro_f1": base + 1, "test_accuracy": base + 11},
            "ensemble": {"held_out_macro_f1": base + 3, "test_accuracy": base + 13},
        }
        (folder / f"split{split_seed}.json").write_text(json.dumps(result))
    monkeypatch.setattr(results_tables, "SEED_ENSEMBLE", tmp_path)
    lines = results_tables.seed_ensemble_markdown().splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in lines[2:]}
    assert list(rows) == ["seed 42", "seed 43", "mean of 2 single models", "the average of 2 models"]
    assert rows["seed 42"][:4] == ["2", "61.00 ± 1.41", "62.00 ± 1.41", "71.00 ± 1.41"]
    assert rows["the average of 2 models"][:4] == ["2", "64.00 ± 1.41", "", "74.00 ± 1.41"]
    # a third seed on split 1 only: its average is a row of its own, and the two seeds' rows are not counted twice
    three = {**result, "split_seed": 1, "models": {**result["models"], "runs/c": figures(44, 70.0)}}
    (folder / "split1_3models.json").write_text(json.dumps(three))
    lines = results_tables.seed_ensemble_markdown().splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in lines[2:]}
    assert rows == {
        "seed 42": "2",
        "seed 43": "2",
        "seed 44": "1",
        "mean of 2 single models": "2",
        "the average of 2 models": "2",
        "mean of 3 single models": "1",
        "the average of 3 models": "1",
    }
    # a member's own five-split runs are not a row of the five-split tables, nor a candidate for the recommended model
    assert results_tables.SEED_MEMBER.match("best_offline_seed43")
    assert not any(results_tables.SEED_MEMBER.match(name) for name in results_tables.cross_split_summary())
