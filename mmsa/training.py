"""Training pieces used by `train_hf.py`: on-the-fly transforms, the collator, the per-group optimizer, metrics and
the test-set report."""

import json
import logging
import re
import typing
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .file_utils import write_text_atomic
from .metrics import load_sentiment_metrics
from .processing_mmsa import load_rgb_image


logger = logging.getLogger(__name__)


def make_transform(
    processor,
    training: bool,
    max_length: int,
    use_text: bool = True,
    use_images: bool = True,
    text_cache=None,
    image_cache=None,
    modality_labels: bool = False,
):
    """A `Dataset.with_transform` function: tokenises texts (unpadded; the collator pads) and turns images into
    `pixel_values` (random augmentation only when `training`); a frozen tower's inputs are replaced by its cached
    features, read by the `feature_row` column. With `modality_labels`, each post's `text_label` and `image_label`
    go along as `text_labels` and `image_labels` (for the modality heads)."""

    def transform(batch):
        out = {"labels": list(batch["label"])}
        if modality_labels:
            out["text_labels"], out["image_labels"] = list(batch["text_label"]), list(batch["image_label"])
        if use_text:
            if text_cache is not None:
                out.update(text_cache.rows(batch["feature_row"]))
            else:
                encoded = processor.tokenizer(list(batch["text"]), truncation=True, max_length=max_length)
                out.update({key: list(values) for key, values in encoded.items()})
        if use_images:
            if image_cache is not None:
                out.update(image_cache.rows(batch["feature_row"]))
            else:
                image_transform = (
                    processor.image_processor.train_transform if training else processor.image_processor.eval_transform
                )
                out["pixel_values"] = [image_transform(load_rgb_image(image)) for image in batch["image"]]
        return out

    return transform


class MmsaDataCollator:
    """Pads token ids (with the processor's tokenizer) or cached text token states, and stacks images, cached image
    features and labels."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, features: list[dict]) -> dict:
        batch = {}
        if "input_ids" in features[0]:
            text_keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in features[0]]
            batch.update(
                self.processor.tokenizer.pad([{k: f[k] for k in text_keys} for f in features], return_tensors="pt")
            )
        elif "text_tokens" in features[0]:
            tokens = [torch.as_tensor(f["text_tokens"]) for f in features]
            batch["text_tokens"] = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)
            batch["attention_mask"] = torch.nn.utils.rnn.pad_sequence(
                [torch.as_tensor(f["attention_mask"], dtype=torch.long) for f in features], batch_first=True
            )
        for key in ("text_features", "pixel_values", "image_features", "image_tokens"):
            if key in features[0]:
                batch[key] = torch.stack([torch.as_tensor(f[key]) for f in features])
        for key in ("labels", "text_labels", "image_labels"):
            if key in features[0]:  # -1 (a post without that label) is the loss's ignore index
                values = torch.tensor([f[key] for f in features], dtype=torch.long)
                batch[key] = values.masked_fill(values < 0, -100)
        return batch


class MmsaTrainer(Trainer):
    """`Trainer` whose optimizer gives the text tower, the image tower and the fusion head their own learning rates
    (`learning_rates={"text": ..., "vision": ..., "head": ...}`); bias and norm weights get no weight decay.

    With `layerwise_lr_decay` γ < 1 the text tower's learning rate decays with depth below its top layer: layer `i`
    of `L` gets `text_lr * γ ** (L - 1 - i)`, the embeddings `text_lr * γ ** L` (layer-wise learning-rate decay,
    as in ELECTRA and the BERT fine-tuning recipes of Sun et al., 2019).
    """

    def __init__(
        self, *args, learning_rates: dict[str, float] | None = None, layerwise_lr_decay: float = 1.0, **kwargs
    ):
        self.learning_rates = learning_rates or {}
        self.layerwise_lr_decay = layerwise_lr_decay
        super().__init__(*args, **kwargs)

    def text_depths(self, model) -> dict[str, int]:
        """How many layers below the top each text-tower parameter sits (0 for the top layer and the pooler)."""
        names = [name for name, _ in model.named_parameters() if self.parameter_group(name) == "text"]
        layer_of = {name: re.search(r"\.layer\.(\d+)\.", name) for name in names}
        count = 1 + max((int(m.group(1)) for m in layer_of.values() if m), default=-1)
        depths = {}
        for name in names:
            if layer_of[name]:
                depths[name] = count - 1 - int(layer_of[name].group(1))
            else:
                depths[name] = count if ".embeddings." in name else 0
        return depths

    @staticmethod
    def parameter_group(name: str) -> str:
        if ".text_model." in f".{name}":
            return "text"
        if ".vision_model." in f".{name}":
            return "vision"
        return "head"

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        depths = self.text_depths(opt_model) if self.layerwise_lr_decay != 1.0 else {}
        groups = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            part = self.parameter_group(name)
            depth = depths.get(name, 0)
            key = (part, name in decay, depth)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "weight_decay": self.args.weight_decay if name in decay else 0.0,
                    "lr": self.learning_rates.get(part, self.args.learning_rate) * self.layerwise_lr_decay**depth,
                    "group_name": part if not depth else f"{part}-{depth}",
                }
            groups[key]["params"].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        for (_, decayed, _), group in groups.items():
            logger.info(
                "optimizer group %s (decay=%s): %d tensors, lr %g",
                group["group_name"],
                decayed,
                len(group["params"]),
                group["lr"],
            )
        return self.optimizer

    def _clip_grad_norm(self, model):
        """Clips over the parameters that train: frozen tower parameters hold no gradient, so the norm is the same,
        without walking the towers' modules at every step (a large part of a step on cached features)."""
        from accelerate.utils import DistributedType

        if self.accelerator.distributed_type not in (
            DistributedType.NO,
            DistributedType.MULTI_CPU,
            DistributedType.MULTI_GPU,
        ) or self._has_mixed_mesh_grads(model):
            return super()._clip_grad_norm(model)
        cached = getattr(self, "_trained_parameters", None)
        if cached is None or cached[0] is not model:
            cached = self._trained_parameters = (model, [p for p in model.parameters() if p.requires_grad])
        return self.accelerator.clip_grad_norm_(cached[1], self.args.max_grad_norm)

    # --- hyperparameter search (mmsa.hp_search) -------------------------------------------------------------------

    def _hp_search_setup(self, trial):
        """The `Trainer` sets a trial's `TrainingArguments` fields; the group learning rates are set here (and the
        `MmsaConfig` fields by `model_init`), so the `Trainer` sees only its own fields."""
        if self.hp_search_backend is None or trial is None:
            return super()._hp_search_setup(trial)
        from .hp_search import GROUP_LEARNING_RATES

        space = self.hp_space
        params = space(trial)
        self.hp_space = lambda t: {key: value for key, value in space(t).items() if hasattr(self.args, key)}
        try:
            super()._hp_search_setup(trial)
        finally:
            self.hp_space = space
        for key, group in GROUP_LEARNING_RATES.items():
            if key in params:
                self.learning_rates[group] = params[key]

    def _report_to_hp_search(self, trial, step, metrics):
        """A trial's objective is the best validation score it reached (the checkpoint a run would keep), not its
        last one."""
        previous = getattr(self, "objective", None)
        super()._report_to_hp_search(trial, step, metrics)
        if previous is not None and self.objective is not None:
            better = max if self.args.greater_is_better is not False else min
            self.objective = better(previous, self.objective)


def post_logits(predictions) -> np.ndarray:
    """The post logits of a `Trainer` prediction (the first output when the model returns several)."""
    return predictions[0] if isinstance(predictions, tuple) else predictions


def modality_logits(predictions) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The text and image logits of a `Trainer` prediction of a model with modality heads (else `None`s)."""
    if isinstance(predictions, tuple) and len(predictions) >= 3:
        return predictions[1], predictions[2]
    return None, None


def build_compute_metrics(id2label: dict[int, str]):
    """`compute_metrics` for the Trainer, through the local `evaluate` module: accuracy, F1 and calibration."""
    from .calibration import softmax

    metric = load_sentiment_metrics()
    labels = [id2label[i] for i in sorted(id2label)]

    def compute_metrics(eval_prediction):
        logits = post_logits(eval_prediction.predictions)
        return metric.compute(
            predictions=np.argmax(logits, axis=-1),
            references=eval_prediction.label_ids,
            labels=labels,
            probabilities=softmax(logits),
        )

    return compute_metrics


def report_files(prefix: str = "test") -> dict[str, str]:
    """The names of the report files of a split: `{prefix}_results.json`, `{prefix}_predictions.jsonl`,
    `{prefix}_classification_report.txt`, `{prefix}_confusion_matrix.json` and `.png`."""
    return {
        "results": f"{prefix}_results.json",
        "predictions": f"{prefix}_predictions.jsonl",
        "classification_report": f"{prefix}_classification_report.txt",
        "confusion_matrix": f"{prefix}_confusion_matrix.json",
        "confusion_matrix_plot": f"{prefix}_confusion_matrix.png",
        "reliability_diagram": f"{prefix}_reliability_diagram.png",
    }


def write_test_report(
    output_dir: str | Path,
    metrics: dict,
    predictions: np.ndarray,
    references: np.ndarray,
    id2label: dict[int, str],
    post_ids: list | None = None,
    prefix: str = "test",
    probabilities: np.ndarray | None = None,
) -> dict:
    """Writes a split's report files, each named by the split (`report_files(prefix)`), atomically: the metrics, the
    classification report, the confusion matrix (`.json` and a `.png` titled with the split), with `probabilities`
    the reliability diagram, and with `post_ids` the predictions (one `{"id", "label", "prediction"}` per post,
    label names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, classification_report, confusion_matrix

    from .file_utils import atomic_path, write_text_atomic

    output_dir = Path(output_dir)
    files = {key: output_dir / name for key, name in report_files(prefix).items()}
    names = [id2label[i] for i in sorted(id2label)]
    ids = list(range(len(names)))
    write_text_atomic(files["results"], json.dumps(metrics, indent=2) + "\n")
    if post_ids is not None:
        rows = [
            {"id": i, "label": names[int(r)], "prediction": names[int(p)]}
            for i, r, p in zip(post_ids, references, predictions)
        ]
        write_text_atomic(files["predictions"], "".join(json.dumps(r) + "\n" for r in rows))
    report = classification_report(references, predictions, labels=ids, target_names=names, digits=4, zero_division=0)
    write_text_atomic(files["classification_report"], report)
    matrix = confusion_matrix(references, predictions, labels=ids)
    write_text_atomic(files["confusion_matrix"], json.dumps({"labels": names, "matrix": matrix.tolist()}) + "\n")
    figure, axis = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=axis, cmap="Blues", colorbar=False)
    axis.set_title(f"MVSA {prefix} split")
    figure.tight_layout()
    with atomic_path(files["confusion_matrix_plot"]) as partial:
        figure.savefig(partial, dpi=120, format="png")
    plt.close(figure)
    if probabilities is not None:
        from .calibration import plot_reliability_diagram

        with atomic_path(files["reliability_diagram"]) as partial:
            plot_reliability_diagram(probabilities, references, partial, f"MVSA {prefix} split")
    return {"report": report, "confusion_matrix": matrix}


# --- run set-up: model building, threads, provenance ------------------------------------------------------------


def parse_config_overrides(overrides: str | None) -> dict:
    """`"fusion_hidden_size=128,fusion_num_layers=2"` -> `{"fusion_hidden_size": 128, "fusion_num_layers": 2}`,
    typed and checked by `PretrainedConfig.update_from_string` on a default `MmsaConfig` (an unknown field fails)."""
    from .configuration_mmsa import MmsaConfig

    if not overrides:
        return {}
    probe = MmsaConfig()
    names = [item.split("=", 1)[0].strip() for item in overrides.split(",") if item.strip()]
    for name in names:  # a field that defaults to None (`int | None`) is typed by its annotation
        if getattr(probe, name, 0) is None:
            kinds = [
                kind for kind in typing.get_args(MmsaConfig.__annotations__.get(name)) if kind in (int, float, str)
            ]
            if kinds:
                setattr(probe, name, kinds[0]())
    probe.update_from_string(overrides)
    return {name: getattr(probe, name) for name in names}


def format_config_overrides(overrides: dict) -> str:
    """The inverse of `parse_config_overrides`: `{"fusion_hidden_size": 128}` -> `"fusion_hidden_size=128"`."""
    return ",".join(
        f"{name}={str(value).lower() if isinstance(value, bool) else value}" for name, value in overrides.items()
    )


def class_weights_from(option: str | None, train_labels, num_labels: int) -> list[float] | None:
    """Loss class weights: `"balanced"` (inverse frequency in the training split), comma-separated numbers, or none."""
    if not option:
        return None
    if option == "balanced":
        labelled = [int(label) for label in train_labels if int(label) >= 0]
        counts = Counter(labelled)
        return [len(labelled) / (num_labels * max(counts.get(i, 0), 1)) for i in range(num_labels)]
    return [float(v) for v in option.split(",")]


def build_model_and_processor(
    text_model_name_or_path: str | None,
    vision_model_name_or_path: str | None,
    fusion: str,
    config_overrides: dict,
    class_weights: list[float] | None = None,
    max_text_length: int = 128,
    model_name_or_path: str | None = None,
):
    """The model and processor of a run: a saved MMSA folder (`model_name_or_path`), or towers joined with new fusion
    layers (`from_text_vision_pretrained`, the config from `fusion` and `config_overrides`)."""
    from transformers import AutoTokenizer

    from .modeling_mmsa import MmsaForSequenceClassification
    from .processing_mmsa import MmsaProcessor

    if model_name_or_path:
        model = MmsaForSequenceClassification.from_pretrained(model_name_or_path)
        processor = MmsaProcessor.from_pretrained(model_name_or_path)
        processor.max_length = max_text_length
        return model, processor
    model = MmsaForSequenceClassification.from_text_vision_pretrained(
        text_model_name_or_path,
        vision_model_name_or_path,
        fusion=fusion,
        class_weights=class_weights,
        **config_overrides,
    )
    # image_only still needs a tokenizer for the processor; it comes from the text checkpoint when there is one.
    tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
    processor = MmsaProcessor.from_model_config(model.config, tokenizer, max_length=max_text_length)
    return model, processor


def cores_per_process() -> int:
    """Physical cores of this machine shared among its local processes (accelerate's rule for `--cpu`)."""
    import os

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


def git_commit(folder: str | Path) -> str | None:
    """The commit of the checkout holding `folder` (with `+dirty` when tracked files differ from it)."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def check_label_coverage(dataset, strict: bool, label_names):
    """Warns (or, with `strict`, refuses) when the training split has one class or a split lacks a class."""
    problems = []
    for name, split in dataset.items():
        counts = Counter(int(label) for label in split["label"])
        missing = [label_names[i] for i in range(len(label_names)) if counts.get(i, 0) == 0]
        if len(split) == 0:
            problems.append(f"the {name} split is empty")
        elif name == "train" and len(counts) < 2:
            problems.append(f"the train split holds a single class ({label_names[next(iter(counts))]})")
        elif missing:
            problems.append(f"the {name} split has no {', '.join(missing)} posts")
    if problems:
        message = "; ".join(problems)
        if strict:
            raise ValueError(f"{message} (--strict)")
        logger.warning("%s: the model and its metrics will be of little use.", message)


# --- callbacks --------------------------------------------------------------------------------------------------


RUN_FINGERPRINT = "mmsa_run_fingerprint.json"


def run_fingerprint(model_args: dict, data_args: dict, source: str, dataset) -> dict:
    """What makes two runs the same run: the data (source, split, the posts of each split) and the model arguments.
    Recorded in every checkpoint; a checkpoint is resumed only by a run with the same fingerprint."""
    import hashlib

    data_keys = (
        "dataset_variant",
        "split_seed",
        "split_file",
        "max_text_length",
        "max_train_samples",
        "max_eval_samples",
        "cache_frozen_features",
    )
    return {
        "dataset": str(source),
        "posts": {
            name: hashlib.sha256(json.dumps(list(split["id"])).encode()).hexdigest()[:16]
            for name, split in dataset.items()
        },
        "data_args": {key: data_args.get(key) for key in data_keys},
        "model_args": model_args,
    }


def fingerprint_mismatch(checkpoint: str | Path, fingerprint: dict) -> str | None:
    """`None` if `checkpoint` was saved by a run with this fingerprint, else what differs."""
    path = Path(checkpoint) / RUN_FINGERPRINT
    if not path.is_file():
        return f"{checkpoint} records no run fingerprint ({RUN_FINGERPRINT})"
    recorded = json.loads(path.read_text())
    differences = []
    for group in ("dataset", "posts", "data_args", "model_args"):
        old, new = recorded.get(group), fingerprint[group]
        if isinstance(new, dict):
            old = old or {}
            differences += [
                f"{group}.{key}: {old.get(key)!r} -> {new.get(key)!r}"
                for key in sorted(set(new) | set(old))
                if old.get(key) != new.get(key)
            ]
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


TRAINING_KEYS = (
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "seed",
    "metric_for_best_model",
    "optim",
    "world_size",
    "cpu_threads",
)


class RunInfoCallback(TrainerCallback):
    """Records what the model card needs while the run happens (as setfit does): the arguments, the data and its
    label counts, library versions, git commit and thread count when training begins; written to
    `output_dir/run_info.json` when training ends (and by `write`)."""

    def __init__(self, model_args: dict, data_args: dict, source: str, dataset, label_names):
        self.info = {
            "model_args": model_args,
            "data_args": data_args,
            "dataset": str(source),
            "label_counts": {
                name: {
                    label_names[k] if k >= 0 else "no post label": v
                    for k, v in sorted(Counter(int(x) for x in split["label"]).items())
                }
                for name, split in dataset.items()
            },
        }

    def on_train_begin(self, args, state, control, **kwargs):
        self.collect(args)

    def collect(self, args):
        import platform

        import datasets
        import timm
        import transformers

        from . import __version__

        self.info["training_args"] = {
            key: value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
            for key in TRAINING_KEYS
            for value in [getattr(args, key, None)]
        }
        self.info["git_commit"] = git_commit(Path(__file__).resolve().parent)
        self.info["torch_threads"] = torch.get_num_threads()
        self.info["versions"] = {
            "mmsa": __version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "datasets": datasets.__version__,
            "python": platform.python_version(),
        }

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(args.output_dir)

    def write(self, output_dir: str | Path):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(output_dir) / "run_info.json", json.dumps(self.info, indent=2) + "\n")


# --- calibration after training ----------------------------------------------------------------------------------


def choose_rule_weight(fused, text, image, references, label2id: dict, grid) -> tuple[float, dict]:
    """The weight λ of the labelling rule's distribution in `(1 - λ) * fused + λ * rule` with the best macro-F1 on
    these posts (ties: the smaller λ), from calibrated probabilities; returns it and every λ's macro-F1."""
    from sklearn.metrics import f1_score

    from .modeling_mmsa import rule_distribution

    implied = rule_distribution(torch.as_tensor(text), torch.as_tensor(image), label2id).numpy()
    scores = {}
    for weight in grid:
        mixed = (1 - weight) * np.asarray(fused) + weight * implied
        scores[float(weight)] = float(f1_score(references, mixed.argmax(-1), average="macro", zero_division=0))
    best = max(scores, key=lambda weight: (scores[weight], -weight))
    return best, scores


def calibrate(trainer, dataset, split, rule_weight_grid=()) -> dict:
    """Temperature scaling of the trained model on `dataset` (the prepared validation split; `split` the raw one):
    fits `config.temperature` (and, with modality heads, `text_temperature`, `image_temperature`) by minimising the
    negative log-likelihood, then chooses `config.rule_weight` from `rule_weight_grid` on the same posts' macro-F1.
    The argmax of the post logits never changes with the temperature. Returns what was fitted, with the NLL and ECE
    before and after."""
    from .calibration import calibration_metrics, fit_temperature, softmax

    config = trainer.model.config
    config.temperature = config.text_temperature = config.image_temperature = 1.0
    config.rule_weight = 0.0
    prediction = trainer.predict(dataset, metric_key_prefix="calibration")
    logits, references = post_logits(prediction.predictions), np.asarray(prediction.label_ids)
    config.temperature = fit_temperature(logits, references)
    before = calibration_metrics(softmax(logits), references)
    after = calibration_metrics(softmax(logits / config.temperature), references)
    info = {"temperature": config.temperature, "posts": len(references)}
    info.update({f"{key}_before": before[key] for key in ("nll", "ece")})
    info.update({f"{key}_after": after[key] for key in ("nll", "ece")})
    text, image = modality_logits(prediction.predictions)
    if config.modality_heads and text is not None:
        text_labels, image_labels = np.asarray(split["text_label"]), np.asarray(split["image_label"])
        config.text_temperature = fit_temperature(text, text_labels)
        config.image_temperature = fit_temperature(image, image_labels)
        info.update(text_temperature=config.text_temperature, image_temperature=config.image_temperature)
        if rule_weight_grid:
            config.rule_weight, scores = choose_rule_weight(
                softmax(logits / config.temperature),
                softmax(text / config.text_temperature),
                softmax(image / config.image_temperature),
                references,
                config.label2id,
                rule_weight_grid,
            )
            info.update(rule_weight=config.rule_weight, rule_weight_macro_f1=scores)
    logger.info("Calibrated on %d validation posts: %s", len(references), info)
    return info


def modality_accuracies(predictions, split, prefix: str = "test") -> dict:
    """`{prefix}_text_sentiment_accuracy` and `{prefix}_image_sentiment_accuracy` of a model with modality heads."""
    text, image = modality_logits(predictions)
    if text is None:
        return {}
    return {
        f"{prefix}_text_sentiment_accuracy": float((text.argmax(-1) == np.asarray(split["text_label"])).mean()),
        f"{prefix}_image_sentiment_accuracy": float((image.argmax(-1) == np.asarray(split["image_label"])).mean()),
    }
