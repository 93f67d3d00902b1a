"""Calibration: how far predicted probabilities are from observed frequencies, and temperature scaling to close the gap.

```python
from mmsa.calibration import calibration_metrics, fit_temperature

temperature = fit_temperature(validation_logits, validation_labels)    # Guo et al., 2017: one scalar, by NLL
calibration_metrics(softmax(test_logits / temperature), test_labels)  # {"ece", "nll", "brier", "mean_confidence"}
```

- **ECE** (expected calibration error): the posts are put in 10 equal-width bins of their top-class probability; ECE
  is the mean, weighted by the bins' sizes, of |accuracy - mean top-class probability| in each bin.
- **NLL**: the mean negative log-likelihood of the true class.
- **Brier score**: the mean over posts of the squared distance between the probability vector and the one-hot label.

Dividing the logits by one temperature never changes the argmax, so accuracy and F1 stay as they are. Needs numpy and
scipy only.
"""

import numpy as np


ECE_BINS = 10


def softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _checked(probabilities, references) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    references = np.asarray(references, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(references):
        raise ValueError(
            f"expected probabilities of shape (posts, classes) for {len(references)} posts, got {probabilities.shape}"
        )
    return probabilities, references


def _bin_index(confidence: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The equal-width bins' edges and each confidence's bin ((0.9, 1.0] is the last of 10)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return edges, np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)


def reliability_bins(probabilities, references, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin of the top-class probability: its range, size, accuracy and mean confidence."""
    probabilities, references = _checked(probabilities, references)
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == references
    edges, index = _bin_index(confidence, bins)
    rows = []
    for b in range(bins):
        members = index == b
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": int(members.sum()),
                "accuracy": float(correct[members].mean()) if members.any() else None,
                "confidence": float(confidence[members].mean()) if members.any() else None,
            }
        )
    return rows


def expected_calibration_error(probabilities, references, bins: int = ECE_BINS) -> float:
    rows = reliability_bins(probabilities, references, bins)
    total = sum(row["count"] for row in rows)
    return float(
        sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]) / max(total, 1)
    )


def calibrated_ece(confidences, draws: int = 2000, seed: int = 0, bins: int = ECE_BINS) -> tuple[float, float]:
    """The ECE that a perfectly calibrated model with these top-class probabilities would score on this many posts:
    the mean and standard deviation over `draws` simulated outcomes, each post right with probability equal to its
    confidence. On a few hundred posts it is well above 0 (sampling noise alone), which is the floor to read a
    measured ECE against."""
    confidences = np.asarray(confidences, dtype=np.float64)
    if confidences.ndim != 1 or not len(confidences) or ((confidences < 0) | (confidences > 1)).any():
        raise ValueError("expected a non-empty 1-D array of top-class probabilities in [0, 1]")
    _, index = _bin_index(confidences, bins)  # the bins `expected_calibration_error` uses
    members = np.eye(bins)[index]  # (posts, bins)
    correct = np.random.default_rng(seed).random((draws, len(confidences))) < confidences
    gaps = np.abs(correct @ members - confidences @ members)  # per draw and bin: |correct - summed confidence|
    eces = gaps.sum(-1) / len(confidences)
    return float(eces.mean()), float(eces.std())


def negative_log_likelihood(probabilities, references) -> float:
    probabilities, references = _checked(probabilities, references)
    picked = probabilities[np.arange(len(references)), references]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def brier_score(probabilities, references) -> float:
    probabilities, references = _checked(probabilities, references)
    one_hot = np.eye(probabilities.shape[1])[references]
    return float(((probabilities - one_hot) ** 2).sum(axis=-1).mean())


def calibration_metrics(probabilities, references) -> dict[str, float]:
    """`ece`, `nll`, `brier` and `mean_confidence` (the mean top-class probability) of a set of predictions."""
    probabilities, references = _checked(probabilities, references)
    return {
        "ece": expected_calibration_error(probabilities, references),
        "nll": negative_log_likelihood(probabilities, references),
        "brier": brier_score(probabilities, references),
        "mean_confidence": float(probabilities.max(axis=-1).mean()),
    }


def fit_temperature(logits, references, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T > 0 that minimises the negative log-likelihood of `softmax(logits / T)` on these posts
    (temperature scaling, Guo et al., 2017), found by a bounded scalar search over log T."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    references = np.asarray(references, dtype=np.int64)
    if len(references) == 0:
        raise ValueError("temperature scaling needs at least one labelled post")
    rows = np.arange(len(references))

    def nll(log_temperature: float) -> float:
        scaled = logits / np.exp(log_temperature)
        scaled = scaled - scaled.max(axis=-1, keepdims=True)
        log_probabilities = scaled - np.log(np.exp(scaled).sum(axis=-1, keepdims=True))
        return float(-log_probabilities[rows, references].mean())

    low, high = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def plot_reliability_diagram(probabilities, references, path, title: str) -> None:
    """Writes a reliability diagram (accuracy against mean confidence per bin, with the bins' sizes) to `path` as
    PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = reliability_bins(probabilities, references)
    ece = expected_calibration_error(probabilities, references)
    figure, axis = plt.subplots(figsize=(4.5, 4))
    width = 1.0 / len(rows)
    for row in rows:
        if row["count"]:
            axis.bar(row["low"], row["accuracy"], width=width, align="edge", color="#4a7", edgecolor="white")
            axis.plot([row["confidence"]], [row["accuracy"]], "k.", markersize=4)
    axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("top-class probability")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{title} (ECE {ece:.3f})")
    figure.tight_layout()
    figure.savefig(path, dpi=120, format="png")
    plt.close(figure)


__all__ = [
    "brier_score",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "plot_reliability_diagram",
    "reliability_bins",
    "softmax",
]
