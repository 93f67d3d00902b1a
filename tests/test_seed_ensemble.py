"""`bench/seed_ensemble.py`: the average of several trained runs of one split, scored on its validation and test posts."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import seed_ensemble  # noqa: E402


def test_the_average_is_the_normalised_geometric_mean_of_the_members():
    rng = np.random.default_rng(0)
    members = [np.log(rng.dirichlet(np.ones(3), size=5)) for _ in range(3)]
    averaged = np.exp(seed_ensemble.average_log_probabilities(members))
    expected = np.prod([np.exp(m) for m in members], axis=0) ** (1 / 3)
    np.testing.assert_allclose(averaged, expected / expected.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(averaged.sum(-1), 1.0, rtol=1e-12)


def _with_temperature(run: Path, folder: Path, temperature: float) -> Path:
    """A copy of `run` whose post temperature is `temperature`: the same predictions, other probabilities."""
    shutil.copytree(run, folder)
    config = json.loads((folder / "config.json").read_text())
    config["temperature"] = temperature
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_an_ensemble_of_one_run_at_two_temperatures_keeps_its_predictions(tiny_run, tmp_path):
    sharp = _with_temperature(tiny_run, tmp_path / "sharp", 0.5)
    flat = _with_temperature(tiny_run, tmp_path / "flat", 3.0)
    output = tmp_path / "ensemble.json"
    seed_ensemble.main(["--models", str(sharp), str(flat), "--output", str(output)])
    result = json.loads(output.read_text())
    members = [result["models"][str(sharp)], result["models"][str(flat)]]
    ensemble = result["ensemble"]
    # dividing the logits by either temperature keeps their order, and so does the average of the two
    for key in ("validation_macro_f1", "test_accuracy", "test_macro_f1", "test_weighted_f1"):
        assert members[0][key] == pytest.approx(members[1][key])
        assert ensemble[key] == pytest.approx(members[0][key])
    assert members[1]["test_mean_confidence"] < ensemble["test_mean_confidence"] < members[0]["test_mean_confidence"]
    assert result["members_mean"]["test_nll"] == pytest.approx((members[0]["test_nll"] + members[1]["test_nll"]) / 2)


def test_runs_of_different_splits_are_refused(tiny_run, tmp_path):
    other = tmp_path / "other_split"
    shutil.copytree(tiny_run, other)
    info = json.loads((other / "run_info.json").read_text())
    info["data_args"]["split_seed"] += 1
    (other / "run_info.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit, match="different splits"):
        seed_ensemble.main(["--models", str(tiny_run), str(other)])


def test_runs_holding_out_the_same_posts_are_compared_there(tmp_path):
    """`--calibration_holdout_seed`: two runs of one split trained with different seeds hold out the same training
    posts, and the models and their average are scored on those posts (which none of them trained on)."""
    from sklearn.metrics import accuracy_score, f1_score
    from training.run_helpers import tiny_args

    import train_hf
    from mmsa.cli import load_explainer, split_logits
    from mmsa.data import build_mvsa
    from mmsa.testing_utils import fake_mvsa_posts, write_fake_mvsa, write_tiny_towers
    from mmsa.training import calibration_holdout_rows

    text, vision = write_tiny_towers(tmp_path / "towers")
    assets = {
        "text": str(text),
        "vision": str(vision),
        "raw": str(write_fake_mvsa(tmp_path / "raw", fake_mvsa_posts(80))),
    }
    frozen = ("--num_train_epochs", "1", "--freeze_text_backbone", "true", "--freeze_vision_backbone", "true")
    holdout = ("--calibration_holdout", "0.25")
    runs = {}
    for name, seed, holdout_seed in (("a", 1, 7), ("b", 2, 7), ("c", 3, None)):
        chosen = ("--calibration_holdout_seed", str(holdout_seed)) if holdout_seed is not None else ()
        runs[name] = tmp_path / name
        train_hf.main(tiny_args(assets, runs[name], *frozen, *holdout, "--seed", str(seed), *chosen))
    recorded = {name: json.loads((run / "run_info.json").read_text()) for name, run in runs.items()}
    assert [recorded[name]["data_args"]["calibration_holdout_seed"] for name in "abc"] == [7, 7, 3]  # default: --seed

    output = tmp_path / "shared.json"
    seed_ensemble.main(["--models", str(runs["a"]), str(runs["b"]), "--output", str(output)])
    result = json.loads(output.read_text())
    train = build_mvsa(assets["raw"])["train"]
    held = calibration_holdout_rows(train["label"], 0.25, 7)[1]
    assert (
        result["held_out_posts"]
        == len(held)
        == json.loads((runs["a"] / "calibration_results.json").read_text())["posts"]
    )
    posts = train.select(held)
    for name in "ab":
        figures = result["models"][str(runs[name])]
        assert figures["seed"] == {"a": 1, "b": 2}[name]
        model, processor = load_explainer(str(runs[name]))
        predicted = split_logits(model, processor, posts, 16)["logits"].argmax(-1)
        assert figures["held_out_accuracy"] == pytest.approx(100 * accuracy_score(posts["label"], predicted))
        assert figures["held_out_macro_f1"] == pytest.approx(
            100 * f1_score(posts["label"], predicted, average="macro")
        )
    assert {"held_out_accuracy", "held_out_macro_f1"} <= set(result["ensemble"])

    other = tmp_path / "other.json"
    seed_ensemble.main(["--models", str(runs["a"]), str(runs["c"]), "--output", str(other)])
    result = json.loads(other.read_text())
    assert result["held_out_posts"] is None and "held_out_accuracy" not in result["ensemble"]


def test_a_models_log_probabilities_are_read_back_until_its_files_change(tiny_run, tmp_path, monkeypatch):
    import mmsa.cli
    from mmsa.data import load_mvsa

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "run_info.json").read_text())
    posts = load_mvsa(info["dataset"], seed=info["data_args"]["split_seed"])["test"]
    computed = seed_ensemble.log_probabilities(run, {"test": posts}, 8)["test"]
    assert (run / seed_ensemble.CACHE).is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(mmsa.cli, "load_explainer", refuse)
    np.testing.assert_array_equal(seed_ensemble.log_probabilities(run, {"test": posts}, 8)["test"], computed)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "temperature": 2 * config["temperature"]}))
    with pytest.raises(AssertionError, match="ran again"):  # another temperature: other log-probabilities
        seed_ensemble.log_probabilities(run, {"test": posts}, 8)
