#!/usr/bin/env python
"""Fine-tune an MMSA model (text tower + image tower + fusion head) on MVSA with the Hugging Face `Trainer`.

    accelerate launch train_hf.py configs/offline_minilm_effnet.yaml [--flag value ...]
    accelerate launch --cpu --num_processes 2 train_hf.py --text_model_name_or_path T --vision_model_name_or_path V \
        --dataset_name_or_path MVSA_Single --output_dir runs/ote

Arguments come from the command line, from one YAML/JSON file, or from a file followed by flags that override it.
`--dataset_name_or_path` is a raw MVSA release folder, a `save_to_disk` folder or a Hub dataset id; without it the
raw folder in `$MVSA_SINGLE_DIR` is used. `output_dir` ends up a loadable model folder (config, weights, processor,
custom code) with `test_results.json`, `classification_report.txt` and `confusion_matrix.png`.
"""

import json
import logging
import os
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
import yaml
from transformers import (
    AutoTokenizer,
    EarlyStoppingCallback,
    HfArgumentParser,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, SaveStrategy, get_last_checkpoint

from mmsa import FUSION_STRATEGIES, MmsaConfig, MmsaForSequenceClassification, MmsaProcessor
from mmsa.data import LABELS, load_mvsa
from mmsa.feature_cache import cache_image_features, cache_text_features
from mmsa.training import MmsaDataCollator, MmsaTrainer, build_compute_metrics, make_transform, write_test_report


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
    fusion: str = field(default="ote", metadata={"help": f"Fusion strategy, one of {', '.join(FUSION_STRATEGIES)}."})
    text_pooling: str = field(default="pooler", metadata={"help": "Sentence vector of the text tower: pooler|mean|cls."})
    fusion_hidden_size: int = field(default=64, metadata={"help": "Width d of the projected features."})
    fusion_num_heads: int = field(default=8, metadata={"help": "Attention heads of the fusion layers."})
    fusion_num_layers: int = field(default=1, metadata={"help": "Transformer layers of hstec / ote / mm_transformer."})
    projection_dropout: float = field(default=0.2, metadata={"help": "Dropout before the feature projections."})
    attention_dropout: float = field(default=0.4, metadata={"help": "Dropout inside the fusion layers."})
    classifier_dropout: float = field(default=0.5, metadata={"help": "Dropout of the classification heads."})
    classifier_hidden_size: int = field(default=128, metadata={"help": "Hidden width of the classification heads."})
    class_weights: str | None = field(
        default=None,
        metadata={"help": "Loss class weights: 'balanced' (from the train split) or comma-separated, one per label."},
    )
    freeze_text_backbone: bool = field(default=False, metadata={"help": "Keep the text tower fixed."})
    freeze_vision_backbone: bool = field(default=False, metadata={"help": "Keep the image tower fixed."})
    text_learning_rate: float = field(default=5e-6, metadata={"help": "Learning rate of the text tower."})
    vision_learning_rate: float = field(default=5e-6, metadata={"help": "Learning rate of the image tower."})
    head_learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate of the fusion layers and heads."})


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
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training posts."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation/test posts."})
    cache_frozen_features: bool = field(
        default=True,
        metadata={"help": "Compute a frozen tower's features once per post and reuse them from disk (frozen image "
                          "towers then see the deterministic eval transform: no augmentation)."},
    )
    feature_cache_dir: str | None = field(
        default=None, metadata={"help": "Where cached features live (default: $MMSA_CACHE/features or "
                                        "~/.cache/mmsa/features)."}
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Stop after this many evaluations without improvement (0: never)."}
    )
    strict: bool = field(
        default=False,
        metadata={"help": "Refuse to train when the training split has a single class or a split lacks a class "
                          "(otherwise a warning)."},
    )


@dataclass
class MmsaTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults of the paper's code and of this task."""

    output_dir: str | None = field(default="runs/mmsa", metadata={"help": "Where checkpoints and the model go."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Training epochs."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Batch size per device for evaluation."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Fallback learning rate (see the per-group ones)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate on the validation split."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "When to save checkpoints."})
    logging_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to log."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the best one is kept too)."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Restore the best validation checkpoint."})
    metric_for_best_model: str | None = field(default="macro_f1", metadata={"help": "Validation metric to select on."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Whether a larger metric is better."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False (on-the-fly transforms)."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every built parameter is used, so DDP needs no unused-parameter search."}
    )
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh, deleting the checkpoints in output_dir, instead of refusing to resume a "
                          "checkpoint of another run (other dataset, split or model arguments)."},
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "Intra-op CPU threads of each process (default: physical cores / processes on this machine). "
                          "Set here, not taken from OMP_NUM_THREADS, which `accelerate launch` sets to 1: the thread "
                          "count changes the order of float sums, so `python train_hf.py` and `accelerate launch "
                          "train_hf.py` must use the same one to give the same result."},
    )


def config_file_to_argv(argv: list[str]) -> list[str]:
    """`train_hf.py file.yaml --flag v` -> the file's keys as flags, followed by the overriding flags."""
    if not argv or not argv[0].endswith((".yaml", ".yml", ".json")):
        return argv
    text = Path(argv[0]).read_text()
    values = json.loads(text) if argv[0].endswith(".json") else yaml.safe_load(text)
    flags = []
    for key, value in (values or {}).items():
        if value is None:
            continue
        values_list = value if isinstance(value, list) else [value]
        flags += [f"--{key}"] + [str(v).lower() if isinstance(v, bool) else str(v) for v in values_list]
    return flags + argv[1:]


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, MmsaTrainingArguments))
    argv = config_file_to_argv(list(sys.argv[1:] if argv is None else argv))
    return parser.parse_args_into_dataclasses(args=argv)


def class_weights_from(option: str | None, train_labels: list[int]) -> list[float] | None:
    if not option:
        return None
    if option == "balanced":
        counts = Counter(train_labels)
        return [len(train_labels) / (len(LABELS) * max(counts.get(i, 0), 1)) for i in range(len(LABELS))]
    return [float(v) for v in option.split(",")]


def build_model_and_processor(model_args, data_args, class_weights):
    if model_args.model_name_or_path:
        model = MmsaForSequenceClassification.from_pretrained(model_args.model_name_or_path)
        processor = MmsaProcessor.from_pretrained(model_args.model_name_or_path)
        processor.max_length = data_args.max_text_length
        return model, processor
    config_kwargs = {
        name: getattr(model_args, name)
        for name in ("fusion", "text_pooling", "fusion_hidden_size", "fusion_num_heads", "fusion_num_layers", "projection_dropout",
                     "attention_dropout", "classifier_dropout", "classifier_hidden_size", "freeze_text_backbone",
                     "freeze_vision_backbone")
    }
    model = MmsaForSequenceClassification.from_text_vision_pretrained(
        model_args.text_model_name_or_path, model_args.vision_model_name_or_path, class_weights=class_weights,
        **config_kwargs,
    )
    # image_only still needs a tokenizer for the processor; it comes from the text checkpoint when there is one.
    tokenizer = AutoTokenizer.from_pretrained(model_args.text_model_name_or_path)
    processor = MmsaProcessor.from_model_config(model.config, tokenizer, max_length=data_args.max_text_length)
    return model, processor


def requested_cpu_processes() -> int:
    """Processes asked of `accelerate launch --cpu --num_processes N` (whose simple launcher starts only one)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true" or "WORLD_SIZE" in os.environ:
        return 1
    if "MASTER_ADDR" not in os.environ:  # accelerate sets it only when more than one process was asked for
        return 1
    try:
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return 1
    # `accelerate launch ...` or `python -m accelerate.commands.launch ...`
    starts = [i for i, word in enumerate(parent) if word == "launch" or word.endswith("accelerate.commands.launch")]
    if not starts:
        return 1
    from accelerate.commands.launch import launch_command_parser

    launch_args, _ = launch_command_parser().parse_known_args(parent[starts[0] + 1 :])
    return launch_args.num_processes or 1


def relaunch_as_cpu_ddp(num_processes: int):
    """Starts `num_processes` copies of this script with torchrun: DDP over gloo on CPU."""
    from torch.distributed.run import main as torchrun

    logger.warning("Starting %d CPU processes (DDP over gloo) for accelerate launch --cpu.", num_processes)
    torchrun([f"--nproc_per_node={num_processes}", f"--master_addr={os.environ['MASTER_ADDR']}",
              f"--master_port={os.environ.get('MASTER_PORT', '29500')}", sys.argv[0], *sys.argv[1:]])


RUN_FINGERPRINT = "mmsa_run_fingerprint.json"


def run_fingerprint(model_args, data_args, source, dataset) -> dict:
    """What makes two runs the same run: the data (source, split, the posts of each split) and the model arguments.
    Recorded in every checkpoint; a checkpoint is resumed only by a run with the same fingerprint."""
    import hashlib

    data_keys = ("dataset_variant", "split_seed", "split_file", "max_text_length", "max_train_samples",
                 "max_eval_samples", "cache_frozen_features")
    return {
        "dataset": str(source),
        "posts": {name: hashlib.sha256(json.dumps(list(split["id"])).encode()).hexdigest()[:16]
                  for name, split in dataset.items()},
        "data_args": {key: getattr(data_args, key) for key in data_keys},
        "model_args": asdict(model_args),
    }


def fingerprint_mismatch(checkpoint: str, fingerprint: dict) -> str | None:
    """`None` if `checkpoint` was saved by a run with this fingerprint, else what differs."""
    path = Path(checkpoint) / RUN_FINGERPRINT
    if not path.is_file():
        return f"{checkpoint} records no run fingerprint ({RUN_FINGERPRINT})"
    recorded = json.loads(path.read_text())
    differences = []
    for group in ("dataset", "posts", "data_args", "model_args"):
        old, new = recorded.get(group), fingerprint[group]
        if isinstance(new, dict):
            differences += [f"{group}.{key}: {(old or {}).get(key)!r} -> {new.get(key)!r}"
                            for key in sorted(set(new) | set(old or {})) if (old or {}).get(key) != new.get(key)]
        elif old != new:
            differences.append(f"{group}: {old!r} -> {new!r}")
    return "; ".join(differences) or None


class RunFingerprintCallback(TrainerCallback):
    """Writes the run fingerprint into every checkpoint folder."""

    def __init__(self, fingerprint: dict):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                (folder / RUN_FINGERPRINT).write_text(json.dumps(self.fingerprint, indent=2) + "\n")


def check_label_coverage(dataset, strict: bool):
    """Warns (or, with `strict`, refuses) when the training split has one class or a split lacks a class."""
    problems = []
    for name, split in dataset.items():
        counts = Counter(split["label"])
        missing = [LABELS[i] for i in range(len(LABELS)) if counts.get(i, 0) == 0]
        if len(split) == 0:
            problems.append(f"the {name} split is empty")
        elif name == "train" and len(counts) < 2:
            problems.append(f"the train split holds a single class ({LABELS[next(iter(counts))]})")
        elif missing:
            problems.append(f"the {name} split has no {', '.join(missing)} posts")
    if problems:
        message = "; ".join(problems)
        if strict:
            raise ValueError(f"{message} (--strict)")
        logger.warning("%s: the model and its metrics will be of little use.", message)


def cores_per_process() -> int:
    """Physical cores of this machine shared among its local processes (accelerate's rule for `--cpu`)."""
    import psutil

    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (psutil.cpu_count(logical=False) or os.cpu_count() or 1) // local_processes)


def set_cpu_threads(requested: int | None) -> int:
    """Sets (and returns) the intra-op thread count of training, the same whichever launcher started the script.
    Gradients are sums over the batch that CPU kernels split among threads, so the thread count changes their last
    bits, and over many steps the result."""
    if requested is not None and requested < 1:
        raise ValueError(f"--cpu_threads must be at least 1, got {requested}.")
    threads = requested or cores_per_process()
    torch.set_num_threads(threads)
    return threads


def git_commit() -> str | None:
    """The commit of this checkout (with `+dirty` when tracked files differ from it), for provenance."""
    import subprocess

    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def write_run_info(output_dir, model_args, data_args, training_args, source, dataset):
    """`run_info.json`: what this run was (arguments, data, label counts, versions), for model cards."""
    import platform

    import timm

    import mmsa

    training_keys = ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps", "learning_rate", "weight_decay", "lr_scheduler_type",
                     "warmup_steps", "seed", "metric_for_best_model", "optim", "world_size", "cpu_threads")
    info = {
        "model_args": asdict(model_args),
        "data_args": asdict(data_args),
        "training_args": {key: str(getattr(training_args, key)) if not isinstance(
            getattr(training_args, key), (int, float, str, bool, type(None))) else getattr(training_args, key)
            for key in training_keys},
        "dataset": str(source),
        "label_counts": {name: {LABELS[k]: v for k, v in sorted(Counter(split["label"]).items())}
                         for name, split in dataset.items()},
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"mmsa": mmsa.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "timm": timm.__version__, "datasets": datasets.__version__, "python": platform.python_version()},
    }
    (Path(output_dir) / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv=None):
    if argv is None and (num_processes := requested_cpu_processes()) > 1:
        return relaunch_as_cpu_ddp(num_processes)
    model_args, data_args, training_args = parse_args(argv)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    # Our own steps are logged at INFO on the main process (the libraries stay at `--log_level`, warnings by default).
    log_level = training_args.get_process_log_level()
    own_level = logging.INFO if training_args.should_log and training_args.log_level == "passive" else log_level
    logger.setLevel(own_level)
    logging.getLogger("mmsa").setLevel(own_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    threads = set_cpu_threads(training_args.cpu_threads)
    logger.warning(f"Process rank: {training_args.process_index}, device: {training_args.device}, "
                   f"n_gpu: {training_args.n_gpu}, distributed: {training_args.parallel_mode.value == 'distributed'}")
    logger.debug(f"Training parameters {training_args}")
    logger.info("Seed %d, %d CPU threads per process, output in %s", training_args.seed, threads,
                training_args.output_dir)

    last_checkpoint = None
    if os.path.isdir(training_args.output_dir):
        last_checkpoint = get_last_checkpoint(training_args.output_dir)

    # Data
    source = data_args.dataset_name_or_path or os.environ.get("MVSA_SINGLE_DIR")
    if not source:
        raise ValueError("Name a dataset with --dataset_name_or_path or set MVSA_SINGLE_DIR to the raw MVSA-Single folder.")
    with training_args.main_process_first(desc="building the dataset"):
        dataset = load_mvsa(source, variant=data_args.dataset_variant, seed=data_args.split_seed,
                            split_file=data_args.split_file)
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples),
                        ("test", data_args.max_eval_samples)):
        if limit is not None:
            dataset[name] = dataset[name].select(range(min(limit, len(dataset[name]))))
    logger.info("Dataset %s: %s posts", source, {name: len(split) for name, split in dataset.items()})

    check_label_coverage(dataset, data_args.strict)

    # Resume only a checkpoint of this very run (same data, split and model arguments).
    fingerprint = run_fingerprint(model_args, data_args, source, dataset)
    checkpoint = training_args.resume_from_checkpoint or last_checkpoint
    if checkpoint is not None and (mismatch := fingerprint_mismatch(checkpoint, fingerprint)):
        if not training_args.overwrite_output_dir:
            raise ValueError(f"{training_args.output_dir} holds a checkpoint of another run, not resumed: {mismatch}. "
                             "Pass --overwrite_output_dir to start afresh, or choose another --output_dir.")
        logger.warning("Starting afresh (--overwrite_output_dir): %s", mismatch)
        if training_args.process_index == 0:
            for old in Path(training_args.output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
                shutil.rmtree(old)
        checkpoint = None
    elif checkpoint is not None:
        logger.info("Resuming this run from %s", checkpoint)

    set_seed(training_args.seed)
    class_weights = class_weights_from(model_args.class_weights, dataset["train"]["label"])
    model, processor = build_model_and_processor(model_args, data_args, class_weights)
    config: MmsaConfig = model.config
    logger.info("Model: fusion %s, text tower %s%s, image tower %s%s", config.fusion,
                model_args.model_name_or_path or model_args.text_model_name_or_path,
                " (frozen)" if config.freeze_text_backbone else "",
                model_args.model_name_or_path or model_args.vision_model_name_or_path,
                " (frozen)" if config.freeze_vision_backbone else "")

    # Frozen towers: their features are computed once per post and read from disk afterwards.
    caches = {name: {} for name in dataset}
    if data_args.cache_frozen_features:
        # Filled with every core: a frozen tower's forward pass gives the same features at any thread count.
        torch.set_num_threads(cores_per_process())
        cache_text = config.uses_text and config.freeze_text_backbone
        cache_images = config.uses_vision and config.freeze_vision_backbone
        if cache_text or cache_images:
            model.mmsa.to(training_args.device)
        for name in dataset:
            with training_args.main_process_first(desc=f"caching frozen features ({name})"):
                if cache_text:
                    caches[name]["text_cache"] = cache_text_features(
                        model.mmsa, processor.tokenizer, dataset[name], data_args.max_text_length,
                        with_tokens=config.uses_tokens, cache_dir=data_args.feature_cache_dir,
                        desc=f"text features ({name})")
                if cache_images:
                    caches[name]["image_cache"] = cache_image_features(
                        model.mmsa, processor.image_processor, dataset[name], with_tokens=config.uses_tokens,
                        cache_dir=data_args.feature_cache_dir, desc=f"image features ({name})")
            if caches[name]:
                dataset[name] = dataset[name].add_column("feature_row", list(range(len(dataset[name]))))
        torch.set_num_threads(threads)

    def prepared(name, training):
        return dataset[name].with_transform(make_transform(
            processor, training=training, max_length=data_args.max_text_length, use_text=config.uses_text,
            use_images=config.uses_vision, **caches[name]))

    callbacks = [RunFingerprintCallback(fingerprint)]
    if data_args.early_stopping_patience > 0 and training_args.load_best_model_at_end:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))

    trainer = MmsaTrainer(
        model=model,
        args=training_args,
        train_dataset=prepared("train", training=True),
        eval_dataset=prepared("validation", training=False),
        processing_class=processor,
        data_collator=MmsaDataCollator(processor),
        compute_metrics=build_compute_metrics(config.id2label),
        callbacks=callbacks,
        learning_rates={"text": model_args.text_learning_rate, "vision": model_args.vision_learning_rate,
                        "head": model_args.head_learning_rate},
    )

    # Training
    logger.info("Training for up to %g epochs%s", training_args.num_train_epochs,
                f", resuming from {checkpoint}" if checkpoint else "")
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()  # the best model (load_best_model_at_end), with the processor and the custom code
    metrics = train_result.metrics
    metrics["train_samples"] = len(dataset["train"])
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    # Evaluation on validation, then the held-out test split
    metrics = trainer.evaluate()
    metrics["eval_samples"] = len(dataset["validation"])
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)

    logger.info("Evaluating the best model on the test split (%d posts)", len(dataset["test"]))
    prediction = trainer.predict(prepared("test", training=False), metric_key_prefix="test")
    test_metrics = dict(prediction.metrics)
    test_metrics["test_samples"] = len(dataset["test"])
    trainer.log_metrics("test", test_metrics)
    trainer.save_metrics("test", test_metrics)
    if trainer.is_world_process_zero():
        write_run_info(training_args.output_dir, model_args, data_args, training_args, source, dataset)
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        write_test_report(training_args.output_dir, test_metrics, logits.argmax(-1), prediction.label_ids,
                          config.id2label, post_ids=list(dataset["test"]["id"]))
        logger.info("Test results written to %s", Path(training_args.output_dir) / "test_results.json")

    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.text_model_name_or_path, tasks="text-classification",
                            dataset="MVSA-Single", tags=["mmsa", "multimodal", "sentiment-analysis"])
    return test_metrics


if __name__ == "__main__":
    main()
