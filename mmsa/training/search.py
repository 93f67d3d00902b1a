"""Hyperparameter search: `Trainer.hyperparameter_search` with Optuna, over cached features.

A trial builds a fresh model (`model_init(trial)`), trains it for the trial's epochs with no checkpoints, and is
scored by the best `metric_for_best_model` it reached on the search's evaluation set (`train_hf.py` holds out part
of the training split for it, so that the validation split, on which runs are compared, plays no part). Optuna's
TPE sampler (seeded by `--seed`) proposes the next trial and its median pruner stops trials that trail the others at
the same step. With frozen, cached towers a trial trains only the fusion layers and heads, so a search costs tens of
trials of a few seconds to a minute on a CPU.

A search-space parameter is applied where it belongs: a `TrainingArguments` field by the `Trainer` itself, a
`*_learning_rate` of a parameter group by `MmsaTrainer`, an `MmsaConfig` field by `model_init`.
"""

import json
import logging

from ..file_utils import write_text_atomic
from .setup import CONFIG_FIELDS


logger = logging.getLogger(__name__)

GROUP_LEARNING_RATES = {"text_learning_rate": "text", "vision_learning_rate": "vision", "head_learning_rate": "head"}
"""Search-space names of `MmsaTrainer`'s per-group learning rates, and their groups."""


def default_hp_space(trial) -> dict:
    """The default search space, for frozen towers and a trained fusion head: the head's learning rate, epochs,
    weight decay, batch size, fusion width and dropouts."""
    return {
        "head_learning_rate": trial.suggest_float("head_learning_rate", 1e-4, 1e-2, log=True),
        "num_train_epochs": trial.suggest_int("num_train_epochs", 5, 20),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 0.3, log=True),
        "per_device_train_batch_size": trial.suggest_categorical("per_device_train_batch_size", [16, 32, 64]),
        "fusion_hidden_size": trial.suggest_categorical("fusion_hidden_size", [64, 128, 256]),
        "projection_dropout": trial.suggest_float("projection_dropout", 0.0, 0.5),
        "classifier_dropout": trial.suggest_float("classifier_dropout", 0.0, 0.6),
    }


def split_hyperparameters(params: dict, training_args) -> tuple[dict, dict, dict]:
    """`params` as `(TrainingArguments fields, group learning rates, MmsaConfig fields)`; an unknown name is an
    error naming it."""
    training, rates, config = {}, {}, {}
    for key, value in params.items():
        if key in GROUP_LEARNING_RATES:
            rates[key] = value
        elif key in CONFIG_FIELDS:
            config[key] = value
        elif hasattr(training_args, key):
            training[key] = value
        else:
            raise ValueError(
                f"search-space parameter {key!r} is neither a TrainingArguments field, a group learning rate "
                f"({', '.join(GROUP_LEARNING_RATES)}) nor an MmsaConfig field."
            )
    return training, rates, config


def search_hyperparameters(
    trainer, n_trials: int, seed: int, hp_space=default_hp_space, output_file=None, scored_on: str | None = None
):
    """Runs `n_trials` Optuna trials with `trainer` (an `MmsaTrainer` built with `model_init`; its eval dataset is
    what trials are scored on, described by `scored_on`) and returns `(best hyperparameters, best objective,
    trials)`; `trials` lists each trial's number, state, objective and parameters, and is written as JSON to
    `output_file` (atomically) when given."""
    import optuna

    if trainer.args.metric_for_best_model is None:
        raise ValueError("A hyperparameter search needs --metric_for_best_model (the validation metric to maximise).")
    metric = trainer.args.metric_for_best_model
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    direction = "maximize" if trainer.args.greater_is_better is not False else "minimize"
    storage = optuna.storages.InMemoryStorage()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best = trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=lambda metrics: metrics[key],
        n_trials=n_trials,
        direction=direction,
        backend="optuna",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5),
        storage=storage,
        study_name="mmsa",
    )
    study = optuna.load_study(study_name="mmsa", storage=storage)
    trials = [
        {"number": t.number, "state": t.state.name, "objective": t.value, "params": t.params} for t in study.trials
    ]
    record = {
        "metric": key,
        "scored_on": scored_on,
        "direction": direction,
        "n_trials": n_trials,
        "sampler_seed": seed,
        "best_trial": int(best.run_id),
        "best_objective": best.objective,
        "best_hyperparameters": best.hyperparameters,
        "trials": trials,
    }
    if output_file is not None:
        write_text_atomic(output_file, json.dumps(record, indent=2) + "\n")  # never a half-written record
    logger.info(
        "Hyperparameter search: best %s %.4f (trial %s of %d): %s",
        key,
        best.objective,
        best.run_id,
        n_trials,
        best.hyperparameters,
    )
    return best.hyperparameters, best.objective, trials
