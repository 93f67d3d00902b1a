"""Local `evaluate` modules (the Hub's metric scripts are not needed)."""

from pathlib import Path


SENTIMENT_METRICS_PATH = str(Path(__file__).with_name("sentiment_metrics.py"))


def load_sentiment_metrics(**kwargs):
    """`evaluate.load` of the local sentiment metrics module."""
    import evaluate

    return evaluate.load(SENTIMENT_METRICS_PATH, **kwargs)
