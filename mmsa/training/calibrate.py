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


def calibrate(trainer, dataset, split, rule_weight_grid=()) -> dict:
    """Temperature scaling of the trained model on `dataset` (the prepared validation split; `split` the raw one):
    fits `config.temperature` (and, with modality heads, `text_temperature`, `image_temperature`) by minimising the
    negative log-likelihood, then chooses `config.rule_weight` from `rule_weight_grid` on the same posts' macro-F1.
    The argmax of the post logits never changes with the temperature. Returns what was fitted, with the NLL and ECE
    before and after."""
    from ..calibration import calibration_metrics, fit_temperature, softmax

    config = trainer.model.config
    config.temperature = config.text_temperature = config.image_temperature = 1.0
    config.rule_weight = 0.0
    prediction = trainer.predict(dataset, metric_key_prefix="calibration")
    if prediction.label_ids is None or not len(prediction.label_ids):  # e.g. dataloader_drop_last, a tiny split
        logger.warning("No validation predictions to calibrate on: the temperatures stay 1.0")
        return {"temperature": 1.0, "posts": 0}
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
