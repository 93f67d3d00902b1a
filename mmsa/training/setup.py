"""A run's set-up: config overrides, class weights, the model and processor, threads and label coverage."""

import json
import logging
import typing
from collections import Counter
from pathlib import Path

import torch

from ..configuration_mmsa import MmsaConfig


logger = logging.getLogger(__name__)

CONFIG_FIELDS = frozenset(MmsaConfig.__annotations__) - {"text_config", "vision_config", "fusion"}
"""The `MmsaConfig` fields a run may set (`--config_overrides`, their own flags, a search); the fusion strategy and
the towers are chosen by arguments of their own."""


def config_file_to_argv(argv: list[str]) -> list[str]:
    """`train_hf.py file.yaml --flag v` -> the file's keys as flags, followed by the overriding flags."""
    import yaml

    if not argv or not argv[0].endswith((".yaml", ".yml", ".json")):
        return argv
    path = Path(argv[0])
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path} is not valid {path.suffix[1:].upper()}: {error}") from None
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of argument names to values, got a {type(values).__name__}")
    flags = []
    for key, value in (values or {}).items():
        if value is None:
            continue
        values_list = value if isinstance(value, list) else [value]
        flags += [f"--{key}"] + [str(v).lower() if isinstance(v, bool) else str(v) for v in values_list]
    return flags + argv[1:]


def fold_config_flags(argv: list[str], fields=CONFIG_FIELDS) -> list[str]:
    """`--fusion_hidden_size 128` (an `MmsaConfig` field of `fields` given as a flag) -> part of
    `--config_overrides`; a later value of the same field wins, as with any flag. A boolean field given bare
    (`--freeze_vision_backbone`, followed by another flag or last) means true, as `HfArgumentParser`'s boolean flags
    do."""
    booleans = {name for name in fields if MmsaConfig.__annotations__.get(name) is bool}
    rest, given, explicit = [], {}, None
    index = 0
    while index < len(argv):
        word = argv[index]
        name = word[2:].split("=", 1)[0] if word.startswith("--") else None
        if name in fields or name == "config_overrides":
            if "=" in word:
                value, index = word.split("=", 1)[1], index + 1
            elif index + 1 < len(argv) and not argv[index + 1].startswith("--"):
                value, index = argv[index + 1], index + 2
            elif name in booleans:
                value, index = "true", index + 1
            else:
                raise ValueError(f"--{name} needs a value")
            if name == "config_overrides":
                explicit = value
            else:
                given[name] = value
        else:
            rest.append(word)
            index += 1
    overrides = [f"{k}={v}" for k, v in given.items()]
    overrides += [item for item in (explicit or "").split(",") if item.strip()]
    return rest + (["--config_overrides", ",".join(overrides)] if overrides else [])


def list_field_type(name: str):
    """The item type of an `MmsaConfig` field annotated `list[X] | None`, else None."""
    for kind in (MmsaConfig.__annotations__.get(name), *typing.get_args(MmsaConfig.__annotations__.get(name))):
        if typing.get_origin(kind) is list:
            return typing.get_args(kind)[0]
    return None


def parse_config_overrides(overrides: str | None) -> dict:
    """`"fusion_hidden_size=128,fusion_num_layers=2"` -> `{"fusion_hidden_size": 128, "fusion_num_layers": 2}`,
    typed and checked by `PretrainedConfig.update_from_string` on a default `MmsaConfig` (an unknown field fails).
    A list field takes its items joined by `+` (`ensemble_fusions=naive_cat+ote`)."""
    if not overrides:
        return {}
    probe = MmsaConfig()
    items = [item.strip() for item in overrides.split(",") if item.strip()]
    names = [item.split("=", 1)[0].strip() for item in items]
    lists = {}
    for item, name in zip(items, names):
        kind = list_field_type(name)
        if kind is not None:
            value = item.split("=", 1)[1] if "=" in item else ""
            lists[name] = [kind(part) for part in value.split("+") if part.strip()]
    for name in names:  # a field that defaults to None (`int | None`) is typed by its annotation
        if name not in lists and getattr(probe, name, 0) is None:
            kinds = [
                kind for kind in typing.get_args(MmsaConfig.__annotations__.get(name)) if kind in (int, float, str)
            ]
            if kinds:
                setattr(probe, name, kinds[0]())
    scalar = ",".join(item for item, name in zip(items, names) if name not in lists)
    if scalar:
        probe.update_from_string(scalar)
    return {name: lists[name] if name in lists else getattr(probe, name) for name in names}


def format_config_overrides(overrides: dict) -> str:
    """The inverse of `parse_config_overrides`: `{"fusion_hidden_size": 128}` -> `"fusion_hidden_size=128"`."""

    def text(value):
        if isinstance(value, bool):
            return str(value).lower()
        return "+".join(str(item) for item in value) if isinstance(value, (list, tuple)) else str(value)

    return ",".join(f"{name}={text(value)}" for name, value in overrides.items())


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
    text_normalization: str = "none",
):
    """The model and processor of a run: a saved MMSA folder (`model_name_or_path`), or towers joined with new fusion
    layers (`from_text_vision_pretrained`, the config from `fusion` and `config_overrides`)."""
    from transformers import AutoTokenizer

    from ..modeling_mmsa import MmsaForSequenceClassification
    from ..processing_mmsa import MmsaProcessor

    if model_name_or_path:
        model = MmsaForSequenceClassification.from_pretrained(model_name_or_path)
        processor = MmsaProcessor.from_pretrained(model_name_or_path)
        processor.max_length = max_text_length
        if text_normalization != "none":
            processor.text_normalization = text_normalization
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
    processor = MmsaProcessor.from_model_config(
        model.config, tokenizer, max_length=max_text_length, text_normalization=text_normalization
    )
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
