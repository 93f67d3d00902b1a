"""Accuracy, macro-F1, weighted-F1, per-class F1 and, given the probabilities, calibration (ECE, NLL, Brier score)
for sentiment classification, as an `evaluate` module.

import evaluate
from mmsa.metrics import SENTIMENT_METRICS_PATH
metric = evaluate.load(SENTIMENT_METRICS_PATH)
metric.compute(predictions=[0, 2, 1], references=[0, 2, 2], labels=["negative", "neutral", "positive"])
metric.compute(predictions=[0, 2], references=[0, 1], probabilities=[[0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score


_DESCRIPTION = """Accuracy, macro-F1, weighted-F1 and the F1 of every class (keys `f1_<label name>`); with
`probabilities`, also `ece` (10 equal-width bins of the top-class probability), `nll`, `brier` and
`mean_confidence` (see `mmsa.calibration`)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): true class ids.
    labels (`list[str]`, *optional*): class names, index = class id; defaults to `class_0`, `class_1`, ...
        Classes absent from both predictions and references still get an F1 (0.0).
    probabilities (`list[list[float]]`, *optional*): each post's probability of every class.
Returns:
    `accuracy`, `macro_f1`, `weighted_f1`, and `f1_<name>` for each class; with `probabilities`, `ece`, `nll`,
    `brier` and `mean_confidence`.
"""

_CITATION = """@article{scikit-learn, title={Scikit-learn: Machine Learning in {P}ython}, author={Pedregosa, F. and others},
journal={Journal of Machine Learning Research}, volume={12}, pages={2825--2830}, year={2011}}"""


class SentimentMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, labels=None, probabilities=None):
        if labels is None:
            labels = [f"class_{i}" for i in range(max(list(predictions) + list(references)) + 1)]
        ids = list(range(len(labels)))
        per_class = f1_score(references, predictions, labels=ids, average=None, zero_division=0)
        results = {
            "accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=ids, average="macro", zero_division=0)),
            "weighted_f1": float(f1_score(references, predictions, labels=ids, average="weighted", zero_division=0)),
        }
        results.update({f"f1_{name}": float(score) for name, score in zip(labels, per_class)})
        if probabilities is not None:
            from mmsa.calibration import calibration_metrics

            results.update(calibration_metrics(probabilities, references))
        return results
