"""What a run reports: the Trainer's metrics (accuracy, F1, calibration), each split's report files, and the
modality heads' accuracies."""

import json
from pathlib import Path

import numpy as np

from ..metrics import load_sentiment_metrics


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
    from ..calibration import softmax

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

    from ..file_utils import atomic_path, write_text_atomic

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
        from ..calibration import plot_reliability_diagram

        with atomic_path(files["reliability_diagram"]) as partial:
            plot_reliability_diagram(probabilities, references, partial, f"MVSA {prefix} split")
    return {"report": report, "confusion_matrix": matrix}


def modality_accuracies(predictions, split, prefix: str = "test") -> dict:
    """`{prefix}_text_sentiment_accuracy` and `{prefix}_image_sentiment_accuracy` of a model with modality heads."""
    text, image = modality_logits(predictions)
    if text is None:
        return {}
    return {
        f"{prefix}_text_sentiment_accuracy": float((text.argmax(-1) == np.asarray(split["text_label"])).mean()),
        f"{prefix}_image_sentiment_accuracy": float((image.argmax(-1) == np.asarray(split["image_label"])).mean()),
    }
