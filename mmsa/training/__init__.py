"""Training MMSA models with the `Trainer`, one module a job:

- `setup`: a run's set-up (config overrides, class weights, the model and processor, threads, label coverage);
- `data`: transforms of a `datasets` split or its cached tower features, the collator, the feature-cache fill;
- `trainer`: `MmsaTrainer` (per-part learning rates, layer-wise decay);
- `search`: hyperparameter search with Optuna;
- `calibrate`: temperature scaling and the labelling rule's weight, on the validation split;
- `reports`: metrics and each split's report files;
- `callbacks`: the run fingerprint and the run information for the model card.

`train_hf.py` calls them in that order.
"""

from .calibrate import calibrate, calibration_holdout_rows, choose_rule_weight
from .callbacks import RunFingerprintCallback, RunInfoCallback, fingerprint_mismatch, git_commit, run_fingerprint
from .data import MmsaDataCollator, make_transform
from .reports import (
    build_compute_metrics,
    modality_accuracies,
    modality_logits,
    post_logits,
    report_files,
    write_test_report,
)
from .search import default_hp_space, search_hyperparameters, split_hyperparameters
from .setup import (
    CONFIG_FIELDS,
    build_model_and_processor,
    check_label_coverage,
    class_weights_from,
    cores_per_process,
    format_config_overrides,
    parse_config_overrides,
    set_cpu_threads,
)
from .trainer import MmsaTrainer


__all__ = [
    "CONFIG_FIELDS",
    "MmsaDataCollator",
    "MmsaTrainer",
    "RunFingerprintCallback",
    "RunInfoCallback",
    "build_compute_metrics",
    "build_model_and_processor",
    "calibrate",
    "calibration_holdout_rows",
    "check_label_coverage",
    "choose_rule_weight",
    "class_weights_from",
    "cores_per_process",
    "default_hp_space",
    "fingerprint_mismatch",
    "format_config_overrides",
    "git_commit",
    "make_transform",
    "modality_accuracies",
    "modality_logits",
    "parse_config_overrides",
    "post_logits",
    "report_files",
    "run_fingerprint",
    "search_hyperparameters",
    "set_cpu_threads",
    "split_hyperparameters",
    "write_test_report",
]
