"""Calibration after training: temperature scaling of the post (and modality) logits on the validation split, and
the choice of the labelling rule's weight (see `mmsa.calibration` for the metrics)."""

import logging

import numpy as np
import torch

from .reports import modality_logits, post_logits


logger = logging.getLogger(__name__)


def choose_rule_weight(fused, text, image, references, label2id: dict, grid) -> tuple[float, dict]:
    """The weight λ of the labelling rule's distribution in `(1 - λ) * fused + λ * rule` with the best macro-F1 on
    these posts (ties: the smaller λ), from calibrated probabilities; returns it and every λ's macro-F1."""
    from sklearn.metrics import f1_score

    from ..modeling_mmsa import rule_distribution

    implied = rule_distribution(torch.as_tensor(text), torch.as_tensor(image), label2id).numpy()
    scores = {}
    for weight in grid:
        mixed = (1 - weight) * np.asarray(fused) + weight * implied
        scores[float(weight)] = float(f1_score(references, mixed.argmax(-1), average="macro", zero_division=0))
    best = max(scores, key=lambda weight: (scores[weight], -weight))
    return best, scores


def calibration_holdout_rows(labels, fraction: float, seed: int) -> tuple[list[int] | None, list[int] | None]:
    """`--calibration_holdout`: the rows of the training split to train on and the stratified `fraction` of it to fit
    the calibration on, drawn with `seed` (posts without a post label, -1, always train); `(None, None)` for 0."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--calibration_holdout must be in [0, 1), got {fraction}.")
    if not fraction:
        return None, None
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    labelled = np.flatnonzero(labels >= 0)
    _, held = train_test_split(labelled, test_size=fraction, stratify=labels[labelled], random_state=seed)
    held = sorted(int(row) for row in held)
    return sorted(set(range(len(labels))) - set(held)), held


CONFIG_KEYS = ("temperature", "text_temperature", "image_temperature", "rule_weight")
"""What calibration fits, as `MmsaConfig` fields."""


def fit_calibration(logits, references, label2id, text=None, image=None, split=None, rule_weight_grid=()) -> dict:
    """Temperature scaling on one split's raw logits: the post temperature (and, given the modality heads' logits and
    the raw `split` with its `text_label` / `image_label`, theirs), fitted by negative log-likelihood, then the rule
    weight chosen from `rule_weight_grid` on the same posts' macro-F1. Returns the fitted `CONFIG_KEYS` with the
    NLL and ECE before and after (the argmax never changes with a temperature)."""
    from ..calibration import calibration_metrics, fit_temperature, softmax

    references = np.asarray(references)
    info = {"temperature": fit_temperature(logits, references), "posts": len(references)}
    before = calibration_metrics(softmax(logits), references)
    after = calibration_metrics(softmax(logits / info["temperature"]), references)
    info.update({f"{key}_before": before[key] for key in ("nll", "ece")})
    info.update({f"{key}_after": after[key] for key in ("nll", "ece")})
    if text is None or image is None:
        return info
    info["text_temperature"] = fit_temperature(text, np.asarray(split["text_label"]))
    info["image_temperature"] = fit_temperature(image, np.asarray(split["image_label"]))
    if rule_weight_grid:
        info["rule_weight"], info["rule_weight_macro_f1"] = choose_rule_weight(
            softmax(logits / info["temperature"]),
            softmax(text / info["text_temperature"]),
            softmax(image / info["image_temperature"]),
            references,
            label2id,
            rule_weight_grid,
        )
    return info


def calibrate(trainer, dataset, split, rule_weight_grid=()) -> dict:
    """Temperature scaling of the trained model on `dataset` (the prepared validation split, or the posts held out of
    the training split; `split` the raw posts),
    by `fit_calibration`; the fitted values are set on the model's config. Returns what was fitted."""
    config = trainer.model.config
    config.temperature = config.text_temperature = config.image_temperature = 1.0
    config.rule_weight = 0.0
    prediction = trainer.predict(dataset, metric_key_prefix="calibration")
    if prediction.label_ids is None or not len(prediction.label_ids):  # e.g. dataloader_drop_last, a tiny split
        logger.warning("No validation predictions to calibrate on: the temperatures stay 1.0")
        return {"temperature": 1.0, "posts": 0}
    text, image = modality_logits(prediction.predictions) if config.modality_heads else (None, None)
    info = fit_calibration(
        post_logits(prediction.predictions), prediction.label_ids, config.label2id, text, image, split,
        rule_weight_grid,
    )  # fmt: skip
    for key in CONFIG_KEYS:
        if key in info:
            setattr(config, key, info[key])
    logger.info("Calibrated on %d posts: %s", info["posts"], info)
    return info
