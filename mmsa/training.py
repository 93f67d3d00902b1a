"""Training pieces used by `train_hf.py`: on-the-fly transforms, the collator, the per-group optimizer, metrics and
the test-set report."""

import json
import logging
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer

from .metrics import load_sentiment_metrics
from .processing_mmsa import load_rgb_image


logger = logging.getLogger(__name__)

def make_transform(processor, training: bool, max_length: int, use_text: bool = True, use_images: bool = True,
                   text_cache=None, image_cache=None):
    """A `Dataset.with_transform` function: tokenises texts (unpadded; the collator pads) and turns images into
    `pixel_values` (random augmentation only when `training`); a frozen tower's inputs are replaced by its cached
    features, read by the `feature_row` column."""

    def transform(batch):
        out = {"labels": list(batch["label"])}
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
                image_transform = processor.image_processor.train_transform if training else \
                    processor.image_processor.eval_transform
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
            batch.update(self.processor.tokenizer.pad([{k: f[k] for k in text_keys} for f in features],
                                                      return_tensors="pt"))
        elif "text_tokens" in features[0]:
            tokens = [torch.as_tensor(f["text_tokens"]) for f in features]
            batch["text_tokens"] = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)
            batch["attention_mask"] = torch.nn.utils.rnn.pad_sequence(
                [torch.as_tensor(f["attention_mask"], dtype=torch.long) for f in features], batch_first=True)
        for key in ("text_features", "pixel_values", "image_features", "image_tokens"):
            if key in features[0]:
                batch[key] = torch.stack([torch.as_tensor(f[key]) for f in features])
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch


class MmsaTrainer(Trainer):
    """`Trainer` whose optimizer gives the text tower, the image tower and the fusion head their own learning rates
    (`learning_rates={"text": ..., "vision": ..., "head": ...}`); bias and norm weights get no weight decay."""

    def __init__(self, *args, learning_rates: dict[str, float] | None = None, **kwargs):
        self.learning_rates = learning_rates or {}
        super().__init__(*args, **kwargs)

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
        groups = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            part = self.parameter_group(name)
            key = (part, name in decay)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "weight_decay": self.args.weight_decay if name in decay else 0.0,
                    "lr": self.learning_rates.get(part, self.args.learning_rate),
                    "group_name": part,
                }
            groups[key]["params"].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        for (part, decayed), group in groups.items():
            logger.info("optimizer group %s (decay=%s): %d tensors, lr %g", part, decayed, len(group["params"]),
                        group["lr"])
        return self.optimizer


def build_compute_metrics(id2label: dict[int, str]):
    """`compute_metrics` for the Trainer, through the local `evaluate` module."""
    metric = load_sentiment_metrics()
    labels = [id2label[i] for i in sorted(id2label)]

    def compute_metrics(eval_prediction):
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return metric.compute(predictions=np.argmax(logits, axis=-1), references=eval_prediction.label_ids,
                              labels=labels)

    return compute_metrics


def write_test_report(output_dir: str | Path, metrics: dict, predictions: np.ndarray, references: np.ndarray,
                      id2label: dict[int, str], post_ids: list | None = None, prefix: str = "test") -> dict:
    """Writes `{prefix}_results.json`, `classification_report.txt`, `confusion_matrix.png` (+ `.json`) and, with
    `post_ids`, `{prefix}_predictions.jsonl` (one `{"id", "label", "prediction"}` per post, label names)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, classification_report, confusion_matrix

    output_dir = Path(output_dir)
    names = [id2label[i] for i in sorted(id2label)]
    ids = list(range(len(names)))
    (output_dir / f"{prefix}_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if post_ids is not None:
        rows = [{"id": i, "label": names[int(r)], "prediction": names[int(p)]}
                for i, r, p in zip(post_ids, references, predictions)]
        (output_dir / f"{prefix}_predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = classification_report(references, predictions, labels=ids, target_names=names, digits=4,
                                   zero_division=0)
    (output_dir / "classification_report.txt").write_text(report)
    matrix = confusion_matrix(references, predictions, labels=ids)
    (output_dir / "confusion_matrix.json").write_text(json.dumps({"labels": names, "matrix": matrix.tolist()}) + "\n")
    figure, axis = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=axis, cmap="Blues", colorbar=False)
    axis.set_title("MVSA test split")
    figure.tight_layout()
    figure.savefig(output_dir / "confusion_matrix.png", dpi=120)
    plt.close(figure)
    return {"report": report, "confusion_matrix": matrix}
