"""`mmsa.training.search`: the hyperparameter search and how its results reach the final run."""

import json
import math

import pytest
from run_helpers import tiny_args

import train_hf
from mmsa.training import MmsaTrainer


@pytest.mark.parametrize("holdout", ["0.2", "0"])
def test_hyperparameter_search_trains_the_final_run_with_the_best_trial(assets, tmp_path, holdout):
    output_dir = tmp_path / "run"
    args = tiny_args(assets, output_dir, "--fusion", "naive_combine", "--freeze_text_backbone", "true")
    args += ["--freeze_vision_backbone", "true", "--hp_search_trials", "3", "--hp_search_holdout", holdout]
    train_hf.main(args + ["--do_predict", "false"])
    record = json.loads((output_dir / "hp_search.json").read_text())
    trials = record["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and record["metric"] == "eval_macro_f1"
    run_info = json.loads((output_dir / "run_info.json").read_text())
    sizes = {split: sum(counts.values()) for split, counts in run_info["label_counts"].items()}
    if holdout == "0":
        assert record["scored_on"] == f"the validation split ({sizes['validation']} posts)"
    else:  # a stratified fifth of the training split: the validation split plays no part in the search
        held_out = math.ceil(0.2 * sizes["train"])
        assert record["scored_on"] == f"{held_out} posts held out of the training split (0.2, stratified)"
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert record["best_objective"] == max(t["objective"] for t in complete)
    best = record["best_hyperparameters"]
    assert best == trials[record["best_trial"]]["params"]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3  # the sampler proposed three settings
    # The final run was built and trained with the best trial's values, wherever each one belongs.
    config = json.loads((output_dir / "config.json").read_text())
    assert {k: config[k] for k in ("fusion_hidden_size", "projection_dropout", "classifier_dropout")} == {
        k: best[k] for k in ("fusion_hidden_size", "projection_dropout", "classifier_dropout")
    }
    assert run_info["model_args"]["head_learning_rate"] == best["head_learning_rate"]
    training = run_info["training_args"]
    assert training["num_train_epochs"] == best["num_train_epochs"]
    assert training["weight_decay"] == best["weight_decay"]
    assert training["per_device_train_batch_size"] == best["per_device_train_batch_size"]
    assert not (output_dir / "hp_search").exists()  # trials keep no checkpoints


def test_a_search_trial_is_scored_by_its_best_evaluation_not_its_last():
    import optuna
    from transformers.trainer_utils import HPSearchBackend

    trainer = MmsaTrainer.__new__(MmsaTrainer)  # only the reporting path is exercised
    trainer.args = train_hf.MmsaTrainingArguments(output_dir="unused")
    trainer.hp_search_backend = HPSearchBackend.OPTUNA
    trainer.compute_objective = lambda metrics: metrics["eval_macro_f1"]
    trainer.objective = None
    trial = optuna.create_study(direction="maximize").ask()
    for step, score in enumerate([0.5, 0.7, 0.6], start=1):
        trainer._report_to_hp_search(trial, step, {"eval_macro_f1": score})
    assert trainer.objective == 0.7
    trainer.args.greater_is_better, trainer.objective = False, None
    for step, score in enumerate([0.5, 0.3, 0.4], start=1):
        trainer._report_to_hp_search(trial, 10 + step, {"eval_macro_f1": score})
    assert trainer.objective == 0.3


def test_a_search_space_name_that_belongs_nowhere_is_refused():
    from mmsa.training.search import split_hyperparameters

    args = train_hf.MmsaTrainingArguments(output_dir="unused")
    training, rates, config = split_hyperparameters(
        {"num_train_epochs": 3, "head_learning_rate": 1e-3, "fusion_hidden_size": 32}, args
    )
    assert (training, rates, config) == (
        {"num_train_epochs": 3},
        {"head_learning_rate": 1e-3},
        {"fusion_hidden_size": 32},
    )
    with pytest.raises(ValueError, match="'fusion_width' is neither a TrainingArguments field"):
        split_hyperparameters({"fusion_width": 32}, args)
