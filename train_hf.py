#!/usr/bin/env python
"""Fine-tune an MMSA model (text tower + image tower + fusion head) on MVSA with the Hugging Face `Trainer`.

    accelerate launch train_hf.py configs/offline_minilm_effnet.yaml [--flag value ...]
    accelerate launch train_hf.py --text_model_name_or_path T --vision_model_name_or_path V --fusion cmac \\
        --config_overrides "fusion_hidden_size=128,fusion_num_layers=2" --dataset_name_or_path MVSA_Single
    torchrun --nproc_per_node 2 train_hf.py configs/offline_minilm_effnet.yaml --use_cpu true  # CPU DDP, gloo

Shaped like transformers' `examples/pytorch/text-classification/run_classification.py`. Arguments come from the
command line, from one YAML/JSON file, or from a file followed by flags that override it. Model hyperparameters are
`MmsaConfig` fields, set with `--config_overrides "name=value,..."`; each field may also be given as its own flag or
YAML key (`--fusion_hidden_size 128`), which is folded into the overrides, so the defaults live in `MmsaConfig`
alone. `--do_train`, `--do_eval` (validation) and `--do_predict` (test, with the report) are all on by default.
`--dataset_name_or_path` is a raw MVSA release folder, a `save_to_disk` folder or a Hub dataset id; without it the
raw folder in `$MVSA_SINGLE_DIR` is used. `output_dir` ends up a loadable model folder (config, weights, processor,
custom code) with `test_results.json`, `test_predictions.jsonl`, `test_classification_report.txt`,
`test_confusion_matrix.png`, `test_reliability_diagram.png` and `run_info.json`. `--push_to_hub` publishes it with
`push_to_hub.py` (model card and all).
"""

import dataclasses
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import transformers
from transformers import EarlyStoppingCallback, HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, SaveStrategy, get_last_checkpoint

from mmsa import list_fusions
from mmsa.calibration import softmax
from mmsa.configuration_mmsa import SENTIMENT_LABELS
from mmsa.data import load_mvsa
from mmsa.pipeline_mmsa import save_for_pipeline
from mmsa.training import (
    CONFIG_FIELDS,
    MmsaDataCollator,
    MmsaTrainer,
    RunFingerprintCallback,
    RunInfoCallback,
    build_compute_metrics,
    build_model_and_processor,
    calibrate,
    calibration_holdout_rows,
    check_label_coverage,
    class_weights_from,
    default_hp_space,
    fingerprint_mismatch,
    format_config_overrides,
    modality_accuracies,
    parse_config_overrides,
    post_logits,
    run_fingerprint,
    search_hyperparameters,
    set_cpu_threads,
    split_hyperparameters,
    write_test_report,
)
from mmsa.training.data import PreparedSplits, fill_feature_caches
from mmsa.training.setup import config_file_to_argv, fold_config_flags


logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    text_model_name_or_path: str | None = field(
        default="google-bert/bert-base-uncased",
        metadata={"help": "Text tower: a Hub id or a local folder with the model and its tokenizer."},
    )
    vision_model_name_or_path: str | None = field(
        default="timm/resnet50.a1_in1k",
        metadata={"help": "Image tower: a timm model in TimmWrapper format, as a Hub id or a local folder."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Continue from a saved MMSA model folder (overrides the tower and fusion arguments)."},
    )
    fusion: str = field(default="ote", metadata={"help": f"Fusion strategy, one of {', '.join(list_fusions())}."})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "MmsaConfig fields to change from their defaults, e.g. "
            '"fusion_hidden_size=128,fusion_num_layers=2,text_pooling=mean,freeze_vision_backbone=true".'
        },
    )
    class_weights: str | None = field(
        default=None,
        metadata={"help": "Loss class weights: 'balanced' (from the train split) or comma-separated, one per label."},
    )
    text_learning_rate: float = field(default=5e-6, metadata={"help": "Learning rate of the text tower."})
    vision_learning_rate: float = field(default=5e-6, metadata={"help": "Learning rate of the image tower."})
    head_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the fusion layers and heads."})
    layerwise_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Text tower layer-wise learning-rate decay: each layer below the top gets this factor times the "
            "learning rate of the layer above (1: one rate for the whole tower)."
        },
    )


@dataclass
class DataArguments:
    dataset_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Raw MVSA folder, save_to_disk folder or Hub dataset id (default: $MVSA_SINGLE_DIR)."},
    )
    dataset_variant: str = field(default="single", metadata={"help": "MVSA variant of a raw folder: single|multiple."})
    split_seed: int = field(default=42, metadata={"help": "Seed of the stratified 8:1:1 split of a raw folder."})
    split_file: str | None = field(default=None, metadata={"help": "JSON ids per split to use instead."})
    max_text_length: int = field(default=128, metadata={"help": "Texts are truncated to this many tokens."})
    text_normalization: str = field(
        default="none",
        metadata={
            "help": "Text normalisation of the processor, saved with it and applied in training and inference alike: "
            "'none', or 'tweet' (mentions and URLs to placeholders, '#hashtag' to '# hashtag', emoji to their names)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training posts."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation/test posts."}
    )
    cache_frozen_features: bool = field(
        default=True,
        metadata={
            "help": "Compute a frozen tower's features once per post and reuse them from disk (frozen image "
            "towers then see the deterministic eval transform: no augmentation)."
        },
    )
    cache_text_hidden_states: bool = field(
        default=True,
        metadata={
            "help": "With --text_trainable_layers N (and the feature cache): cache per post the hidden states "
            "entering the first trained layer, so that only the top N layers run in training (false: the whole "
            "text tower runs at every step; the same losses, slower)."
        },
    )
    cache_vision_hidden_states: bool = field(
        default=True,
        metadata={
            "help": "With --vision_trainable_blocks N (and the feature cache): cache per post the feature map "
            "entering the first trained stage (eval transform: no augmentation), so that only the last N stages run "
            "in training (false: the whole image tower runs at every step, on augmented images)."
        },
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where cached features live (default: $MMSA_CACHE/features or ~/.cache/mmsa/features)."},
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Stop after this many evaluations without improvement (0: never)."}
    )
    conflicts_in_train: bool = field(
        default=False,
        metadata={
            "help": "Add the posts whose text and image labels conflict (positive against negative) to the training "
            "split, without a post label, for the modality heads (a raw MVSA folder only; never in validation/test)."
        },
    )
    calibration_holdout: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of the training split (stratified, drawn with --calibration_holdout_seed) held out of "
            "training, on which the calibration (temperatures, rule weight) is fitted instead of the validation split: the validation "
            "split chose the checkpoint, which flatters the model there (0: calibrate on the validation split)."
        },
    )
    calibration_holdout_seed: int | None = field(
        default=None,
        metadata={
            "help": "The seed that draws the --calibration_holdout posts (default: --seed). Runs of one split trained "
            "with other seeds but this one hold out the same posts, which none of them trained on or chose a "
            "checkpoint with: the posts that compare them with their average (bench/seed_ensemble.py)."
        },
    )
    strict: bool = field(
        default=False,
        metadata={
            "help": "Refuse to train when the training split has a single class or a split lacks a class "
            "(otherwise a warning)."
        },
    )


@dataclass
class MmsaTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults of the paper's code and of this task."""

    output_dir: str | None = field(default="runs/mmsa", metadata={"help": "Where checkpoints and the model go."})
    do_train: bool = field(default=True, metadata={"help": "Train (off: evaluate --model_name_or_path as it is)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on the validation split."})
    do_predict: bool = field(default=True, metadata={"help": "Evaluate on the test split and write the report."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Batch size per device for evaluation."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Fallback learning rate (see the per-group ones)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_strategy: IntervalStrategy | str = field(
        default="epoch", metadata={"help": "When to evaluate on the validation split."}
    )
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "When to save checkpoints."})
    logging_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to log."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best one is kept too)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Restore the best validation checkpoint."})
    metric_for_best_model: str | None = field(default="macro_f1", metadata={"help": "Validation metric to select on."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Whether a larger metric is better."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False (on-the-fly transforms)."})
    dataloader_pin_memory: bool = field(default=False, metadata={"help": "Pin batches in memory (GPU runs)."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every built parameter is used, so DDP needs no unused-parameter search."}
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh, deleting the checkpoints in output_dir, instead of refusing to resume a "
            "checkpoint of another run (other dataset, split or model arguments)."
        },
    )
    hp_search_trials: int = field(
        default=0,
        metadata={
            "help": "Before training, search hyperparameters on the validation split with this many Optuna trials "
            "(mmsa.training.search.default_hp_space; 0: no search), then train with the best trial's values."
        },
    )
    hp_search_holdout: float = field(
        default=0.2,
        metadata={
            "help": "Fraction of the training split (stratified, drawn with --seed) that search trials train without "
            "and are scored on, so that the validation split plays no part in the search and stays a fair yardstick "
            "for early stopping and for comparing runs (0: score the trials on the validation split)."
        },
    )
    calibration: str = field(
        default="temperature",
        metadata={
            "help": "After training: 'temperature' fits the temperature(s) on the validation split by negative "
            "log-likelihood (stored in the config; predictions unchanged, probabilities calibrated), 'none' skips it."
        },
    )
    rule_weight_grid: str = field(
        default="0,0.25,0.5,0.75,1",
        metadata={
            "help": "With modality heads and calibration: the weights of the labelling rule's distribution tried "
            "on the validation split (macro-F1); the best becomes `rule_weight` ('' keeps 0)."
        },
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"],
        metadata={"help": "The post labels (the modality heads' labels are inputs, not prediction targets)."},
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={
            "help": "Intra-op CPU threads of each process (default: physical cores / processes on this machine). "
            "Set here, not taken from OMP_NUM_THREADS, which `accelerate launch` sets to 1: the thread "
            "count changes the order of float sums, so `python train_hf.py` and `accelerate launch "
            "train_hf.py` must use the same one to give the same result."
        },
    )


def parse_args(argv=None):
    """The three argument dataclasses from flags, a YAML/JSON file, or a file followed by overriding flags; an
    `MmsaConfig` field given as its own flag is folded into `--config_overrides`."""
    parser = HfArgumentParser((ModelArguments, DataArguments, MmsaTrainingArguments))
    own = {f.name for f in dataclasses.fields(ModelArguments)}  # e.g. class_weights: "balanced" is resolved here
    argv = fold_config_flags(config_file_to_argv(list(sys.argv[1:] if argv is None else argv)), CONFIG_FIELDS - own)
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if training_args.label_smoothing_factor:
        # The `Trainer`'s label smoother would replace the model's loss, dropping the modality heads' terms: the
        # model smooths its own cross-entropies instead (`MmsaConfig.label_smoothing`).
        overrides = parse_config_overrides(model_args.config_overrides)
        overrides.setdefault("label_smoothing", training_args.label_smoothing_factor)
        model_args.config_overrides = format_config_overrides(overrides)
        training_args.label_smoothing_factor = 0.0
    return model_args, data_args, training_args


def check_arguments(training_args, model_args) -> None:
    """Refuses, before any work, arguments that would train nothing or cannot be served."""
    if not training_args.do_train and not model_args.model_name_or_path:
        raise ValueError("Without --do_train, name the model to evaluate with --model_name_or_path.")
    if training_args.calibration not in ("temperature", "none"):
        raise ValueError(f"--calibration must be 'temperature' or 'none', got {training_args.calibration!r}")
    if training_args.do_train and training_args.max_steps <= 0 and not training_args.num_train_epochs > 0:
        raise ValueError(
            f"--num_train_epochs must be positive to train, got {training_args.num_train_epochs:g} "
            "(or set --max_steps; --do_train false evaluates a saved model without training)"
        )


def setup_logging(training_args) -> None:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    # Our own steps are logged at INFO on the main process (the libraries stay at `--log_level`, warnings by default).
    log_level = training_args.get_process_log_level()
    own_level = logging.INFO if training_args.should_log and training_args.log_level == "passive" else log_level
    logger.setLevel(own_level)
    logging.getLogger("mmsa").setLevel(own_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def load_data(data_args, training_args):
    """The run's `DatasetDict` (train / validation / test), limited by `--max_*_samples`, and where it came from."""
    source = data_args.dataset_name_or_path or os.environ.get("MVSA_SINGLE_DIR")
    if not source:
        raise ValueError(
            "Name a dataset with --dataset_name_or_path or set MVSA_SINGLE_DIR to the raw MVSA-Single folder."
        )
    with training_args.main_process_first(desc="building the dataset"):
        extra = {"conflicts_in_train": True} if data_args.conflicts_in_train else {}
        dataset = load_mvsa(
            source,
            variant=data_args.dataset_variant,
            seed=data_args.split_seed,
            split_file=data_args.split_file,
            **extra,
        )
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for name, limit in {**limits, "test": data_args.max_eval_samples}.items():
        if limit is not None:
            dataset[name] = dataset[name].select(range(min(limit, len(dataset[name]))))
    logger.info("Dataset %s: %s posts", source, {name: len(split) for name, split in dataset.items()})
    check_label_coverage(dataset, data_args.strict, SENTIMENT_LABELS)
    return dataset, source


def resumable_checkpoint(training_args, fingerprint: dict) -> str | None:
    """The checkpoint to resume: `--resume_from_checkpoint` or the last one in `output_dir`, only if it was saved by
    this very run (same data, split and model arguments); another run's is refused, or deleted with
    `--overwrite_output_dir`."""
    if not training_args.do_train:
        return None
    last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    checkpoint = training_args.resume_from_checkpoint or last
    if checkpoint is None:
        return None
    mismatch = fingerprint_mismatch(checkpoint, fingerprint)
    if mismatch is None:
        logger.info("Resuming this run from %s", checkpoint)
        return checkpoint
    if not training_args.overwrite_output_dir:
        raise ValueError(
            f"{training_args.output_dir} holds a checkpoint of another run, not resumed: {mismatch}. "
            "Pass --overwrite_output_dir to start afresh, or choose another --output_dir."
        )
    logger.warning("Starting afresh (--overwrite_output_dir): %s", mismatch)
    if training_args.process_index == 0:
        for old in Path(training_args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            shutil.rmtree(old)
    return None


def build_model(model_args, data_args, class_weights=None):
    """The model and processor these arguments describe (see `mmsa.training.build_model_and_processor`)."""
    return build_model_and_processor(
        model_args.text_model_name_or_path,
        model_args.vision_model_name_or_path,
        model_args.fusion,
        parse_config_overrides(model_args.config_overrides),
        class_weights=class_weights,
        max_text_length=data_args.max_text_length,
        model_name_or_path=model_args.model_name_or_path,
        text_normalization=data_args.text_normalization,
    )


def trainer_arguments(model_args, processor, id2label) -> dict:
    """What the search trainer and the run's trainer share: processor, collator, metrics and group learning rates."""
    return {
        "processing_class": processor,
        "data_collator": MmsaDataCollator(processor),
        "compute_metrics": build_compute_metrics(id2label),
        "learning_rates": {
            "text": model_args.text_learning_rate,
            "vision": model_args.vision_learning_rate,
            "head": model_args.head_learning_rate,
        },
        "layerwise_lr_decay": model_args.layerwise_lr_decay,
    }


def search_splits(splits, training_args):
    """The search's training and scoring sets: a stratified part of the training split held out of the trials
    (`--hp_search_holdout`), or, with 0, the validation split; and a description of what trials are scored on."""
    holdout = training_args.hp_search_holdout
    if not 0 <= holdout < 1:
        raise ValueError(f"--hp_search_holdout must be in [0, 1), got {holdout}.")
    if not holdout:
        search_eval = splits("validation", training=False)
        return splits("train", training=True), search_eval, f"the validation split ({len(search_eval)} posts)"
    train = splits("train", training=False).with_format(None).select_columns(["label"])
    numbered = train.add_column("row", list(range(len(train))))
    parts = numbered.train_test_split(test_size=holdout, stratify_by_column="label", seed=training_args.seed)
    fit_rows, score_rows = sorted(parts["train"]["row"]), sorted(parts["test"]["row"])
    scored_on = f"{len(score_rows)} posts held out of the training split ({holdout:g}, stratified)"
    return splits("train", training=True, rows=fit_rows), splits("train", training=False, rows=score_rows), scored_on


def search(model_args, data_args, training_args, class_weights, splits, processor, id2label) -> dict:
    """`--hp_search_trials N`: N Optuna trials (no checkpoints; each scored by the best `metric_for_best_model` it
    reached on its scoring set, see `search_splits`), written to `OUTPUT_DIR/hp_search.json`; returns the best
    trial's values."""
    if training_args.world_size > 1:
        raise ValueError("--hp_search_trials runs in one process: launch it without several processes.")
    search_train, search_eval, scored_on = search_splits(splits, training_args)
    search_args = dataclasses.replace(
        training_args,
        output_dir=str(Path(training_args.output_dir) / "hp_search"),
        save_strategy="no",
        load_best_model_at_end=False,
        hp_search_trials=0,
    )
    config_overrides = parse_config_overrides(model_args.config_overrides)

    def model_init(trial=None):
        fields = split_hyperparameters(default_hp_space(trial) if trial is not None else {}, training_args)[2]
        overrides = format_config_overrides({**config_overrides, **fields})
        return build_model(dataclasses.replace(model_args, config_overrides=overrides), data_args, class_weights)[0]

    trainer = MmsaTrainer(
        model_init=model_init,
        args=search_args,
        train_dataset=search_train,
        eval_dataset=search_eval,
        **trainer_arguments(model_args, processor, id2label),
    )
    logger.info("Searching hyperparameters: %d trials, scored on %s", training_args.hp_search_trials, scored_on)
    best, _, _ = search_hyperparameters(
        trainer,
        training_args.hp_search_trials,
        seed=training_args.seed,
        output_file=Path(training_args.output_dir) / "hp_search.json",
        scored_on=scored_on,
    )
    shutil.rmtree(search_args.output_dir, ignore_errors=True)  # the trials' scratch folder (no checkpoints are kept)
    return best


def apply_search_results(best: dict, model_args, training_args):
    """New argument objects with the search's best values: `TrainingArguments` fields, group learning rates and
    `MmsaConfig` fields (folded into `config_overrides`)."""
    training, rates, fields = split_hyperparameters(best, training_args)
    overrides = {**parse_config_overrides(model_args.config_overrides), **fields}
    model_args = dataclasses.replace(model_args, **rates, config_overrides=format_config_overrides(overrides))
    training = {key: type(getattr(training_args, key))(value) for key, value in training.items()}
    return model_args, dataclasses.replace(training_args, **training)


def train(trainer, training_args, checkpoint, dataset, splits, calibration_rows=None) -> None:
    """Trains (resuming `checkpoint`), calibrates (`--calibration temperature`) on the validation split or on the
    `calibration_rows` held out of the training split (`--calibration_holdout`), saves the best model and the
    training metrics and state."""
    logger.info(
        "Training for up to %g epochs%s",
        training_args.num_train_epochs,
        f", resuming from {checkpoint}" if checkpoint else "",
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    if calibration_rows is not None:
        fitted_on = (splits("train", False, rows=calibration_rows), dataset["train"].select(calibration_rows))
        described = f"{len(calibration_rows)} posts held out of the training split"
    else:
        fitted_on, described = (splits("validation", False), dataset["validation"]), "the validation split"
    if training_args.calibration == "temperature" and len(fitted_on[1]):
        grid = [float(value) for value in training_args.rule_weight_grid.split(",") if value.strip()]
        info = calibrate(trainer, *fitted_on, grid)
        trainer.save_metrics("calibration", {**info, "calibrated_on": described})
    trainer.save_model()  # the best model (load_best_model_at_end), with the processor and the custom code
    trained_on = len(dataset["train"]) - (len(calibration_rows) if calibration_rows is not None else 0)
    metrics = {**train_result.metrics, "train_samples": trained_on}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()


def evaluate(trainer, dataset) -> None:
    """Metrics of the (best) model on the validation split."""
    metrics = {**trainer.evaluate(), "eval_samples": len(dataset["validation"])}
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)


def predict(trainer, training_args, dataset, splits) -> dict:
    """The test metrics, and with them the test report files (`mmsa.training.write_test_report`)."""
    logger.info("Evaluating the best model on the test split (%d posts)", len(dataset["test"]))
    prediction = trainer.predict(splits("test", training=False), metric_key_prefix="test")
    metrics = {**prediction.metrics, **modality_accuracies(prediction.predictions, dataset["test"])}
    metrics["test_samples"] = len(dataset["test"])
    trainer.log_metrics("test", metrics)
    trainer.save_metrics("test", metrics)
    if trainer.is_world_process_zero():
        logits = post_logits(prediction.predictions)
        write_test_report(
            training_args.output_dir,
            metrics,
            logits.argmax(-1),
            prediction.label_ids,
            trainer.model.config.id2label,
            post_ids=list(dataset["test"]["id"]),
            probabilities=softmax(logits),
        )
        logger.info("Test results written to %s", Path(training_args.output_dir) / "test_results.json")
    return metrics


def save_and_publish(trainer, training_args, processor, run_info) -> None:
    """`run_info.json`; after training the pipeline-ready model folder (also loadable with remote code); with
    `--push_to_hub`, the release through `push_to_hub.py` (model card and all, one commit)."""
    if not trainer.is_world_process_zero():
        return
    run_info.write(training_args.output_dir)
    if training_args.do_train:
        save_for_pipeline(trainer.model, processor, training_args.output_dir)  # last: it readies it for inference
    if training_args.push_to_hub:
        import push_to_hub

        repo_id = training_args.hub_model_id or Path(training_args.output_dir).name
        push_to_hub.main(
            ["--model_dir", training_args.output_dir, "--repo_id", repo_id]
            + (["--private"] if training_args.hub_private_repo else [])
        )


def main(argv=None):
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    threads = set_cpu_threads(training_args.cpu_threads)
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, "
        f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value == 'distributed'}"
    )
    logger.info(
        "Seed %d, %d CPU threads per process, output in %s", training_args.seed, threads, training_args.output_dir
    )
    check_arguments(training_args, model_args)

    dataset, source = load_data(data_args, training_args)
    recorded_model_args = {
        **dataclasses.asdict(model_args),
        "config_overrides": parse_config_overrides(model_args.config_overrides),
    }
    if data_args.calibration_holdout_seed is None:
        data_args.calibration_holdout_seed = training_args.seed
    recorded_data_args = dataclasses.asdict(data_args)
    fingerprint = run_fingerprint(recorded_model_args, recorded_data_args, source, dataset)
    checkpoint = resumable_checkpoint(training_args, fingerprint)

    set_seed(training_args.seed)
    class_weights = class_weights_from(model_args.class_weights, dataset["train"]["label"], len(SENTIMENT_LABELS))
    model, processor = build_model(model_args, data_args, class_weights)
    log_model(model.config, model_args)
    caches = {name: {} for name in dataset}
    if data_args.cache_frozen_features:
        caches = fill_feature_caches(
            model, processor, dataset, data_args.max_text_length, data_args.feature_cache_dir,
            training_args.device, training_args.main_process_first, data_args.cache_text_hidden_states,
            data_args.cache_vision_hidden_states,
        )  # fmt: skip
    splits = PreparedSplits(dataset, caches, processor, model.config, data_args.max_text_length)
    train_rows, calibration_rows = calibration_holdout_rows(
        dataset["train"]["label"], data_args.calibration_holdout, data_args.calibration_holdout_seed
    )

    if training_args.do_train and training_args.hp_search_trials > 0:
        best = search(model_args, data_args, training_args, class_weights, splits, processor, model.config.id2label)
        model_args, training_args = apply_search_results(best, model_args, training_args)
        set_seed(training_args.seed)
        model, processor = build_model(model_args, data_args, class_weights)
        recorded_model_args = {
            **dataclasses.asdict(model_args),
            "config_overrides": parse_config_overrides(model_args.config_overrides),
        }

    run_info = RunInfoCallback(recorded_model_args, dataclasses.asdict(data_args), source, dataset, SENTIMENT_LABELS)
    callbacks = [RunFingerprintCallback(fingerprint), run_info]
    if data_args.early_stopping_patience > 0 and training_args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
    trainer = MmsaTrainer(
        model=model,
        args=training_args,
        train_dataset=splits("train", training=True, rows=train_rows) if training_args.do_train else None,
        eval_dataset=splits("validation", training=False) if training_args.do_eval else None,
        callbacks=callbacks,
        **trainer_arguments(model_args, processor, model.config.id2label),
    )
    if training_args.do_train:
        train(trainer, training_args, checkpoint, dataset, splits, calibration_rows)
    else:
        run_info.collect(training_args)
    if training_args.do_eval:
        evaluate(trainer, dataset)
    test_metrics = predict(trainer, training_args, dataset, splits) if training_args.do_predict else None
    save_and_publish(trainer, training_args, processor, run_info)
    return test_metrics


def log_model(config, model_args) -> None:
    logger.info(
        "Model: fusion %s, text tower %s%s, image tower %s%s",
        config.fusion,
        model_args.model_name_or_path or model_args.text_model_name_or_path,
        " (frozen)" if config.freeze_text_backbone else "",
        model_args.model_name_or_path or model_args.vision_model_name_or_path,
        " (frozen)" if config.freeze_vision_backbone else "",
    )


def cli_main(argv=None) -> int:
    """The script's entry point: a request that cannot be served (bad arguments, config file, dataset or split
    file) ends with its message and exit status 2, not a traceback."""
    from mmsa.data import MvsaFormatError

    try:
        main(argv)
    except (ValueError, MvsaFormatError) as error:
        print(f"train_hf.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
