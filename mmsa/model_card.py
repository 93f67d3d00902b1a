"""Model cards for trained MMSA models, generated from what the training run recorded."""

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .dataset_card import CITATION as MVSA_CITATION
from .modeling_mmsa import MMSA_FUSIONS


TEMPLATE_PATH = Path(__file__).with_name("templates") / "model_card.md"

BACKBONE_INFO_FILE = "mmsa_backbone.json"


def hub_id_of(folder: str | Path) -> str | None:
    """The Hub id a folder written by `write_offline_backbones` stands for, else None."""
    info = Path(folder) / BACKBONE_INFO_FILE
    return json.loads(info.read_text())["hub_id"] if info.is_file() else None


METRIC_NAMES = {"test_accuracy": "accuracy", "test_macro_f1": "macro-F1", "test_weighted_f1": "weighted-F1"}


def _tower_name(path: str | None, config) -> str:
    if path and Path(path).is_dir():
        return hub_id_of(path) or getattr(config, "_name_or_path", None) or Path(path).name
    return path or getattr(config, "_name_or_path", "") or "unknown"


def epoch_rows(log_history: list[dict]) -> list[dict]:
    """One row per evaluated epoch: training loss of that epoch and the validation metrics."""
    train_loss = {round(e["epoch"], 4): e["loss"] for e in log_history if "loss" in e and "epoch" in e}
    rows = []
    for entry in log_history:
        if "eval_macro_f1" in entry and "epoch" in entry:
            epoch = round(entry["epoch"], 4)
            rows.append(
                {
                    "epoch": f"{epoch:g}",
                    "train_loss": f"{train_loss[epoch]:.4f}" if epoch in train_loss else "-",
                    "eval_loss": f"{entry['eval_loss']:.4f}",
                    "accuracy": f"{entry['eval_accuracy']:.4f}",
                    "macro_f1": f"{entry['eval_macro_f1']:.4f}",
                    "weighted_f1": f"{entry['eval_weighted_f1']:.4f}",
                }
            )
    # The final evaluation of the best model repeats an epoch: keep each epoch once.
    unique = {row["epoch"]: row for row in rows}
    return list(unique.values())


CALIBRATION_NAMES = {
    "test_ece": "ECE (10 bins)",
    "test_nll": "NLL",
    "test_brier": "Brier score",
    "test_mean_confidence": "mean top-class probability",
    "test_text_sentiment_accuracy": "text head accuracy (text labels)",
    "test_image_sentiment_accuracy": "image head accuracy (image labels)",
}


def eval_results_for(test: dict, dataset_id: str, dataset_name: str) -> list[EvalResult]:
    """The `model-index` entries: test accuracy, macro-F1 and weighted-F1."""
    return [
        EvalResult(
            task_type="text-classification",
            task_name="Multimodal sentiment analysis",
            dataset_type=dataset_id,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type="f1" if "f1" in key else "accuracy",
            metric_name=name,
            metric_value=test[key],
            metric_args={"average": key.split("_")[1]} if "f1" in key else None,
        )
        for key, name in METRIC_NAMES.items()
    ]


def card_test_metrics(test: dict) -> list[tuple[str, float]]:
    """The card's test table: accuracy and F1s, each class's F1, then calibration and the modality heads."""
    rows = [(METRIC_NAMES[key], test[key]) for key in METRIC_NAMES]
    rows += [(f"F1 {key[len('test_f1_') :]}", value) for key, value in test.items() if key.startswith("test_f1_")]
    return rows + [(name, test[key]) for key, name in CALIBRATION_NAMES.items() if key in test]


def card_hyperparameters(training: dict, state: dict, data_args: dict, config) -> dict:
    return {
        "epochs (max)": training["num_train_epochs"],
        "epochs run": state.get("epoch"),
        "batch size per device": training["per_device_train_batch_size"],
        "devices": training.get("world_size", 1),
        "weight decay": training["weight_decay"],
        "scheduler": training["lr_scheduler_type"],
        "warmup": training["warmup_steps"],
        "seed": training["seed"],
        "max text length": data_args["max_text_length"],
        "early stopping patience": data_args["early_stopping_patience"],
        "class weights": config.class_weights,
        "best validation " + str(training["metric_for_best_model"]): state.get("best_metric"),
        "temperature (fitted on validation)": config.temperature,
        **({"modality heads, rule weight": config.rule_weight} if config.modality_heads else {}),
    }


def build_model_card(
    model_dir: str | Path,
    repo_id: str,
    dataset_id: str | None = None,
    license: str = "other",
    base_models: list[str] | None = None,
    explanation: dict | None = None,
    revision: str | None = None,
) -> ModelCard:
    """The card of a `train_hf.py` output folder (reads config.json, test_results.json, trainer_state.json and
    run_info.json; every figure comes from those files). `explanation`: an example post's `Explanation.to_dict()`
    with its `text`, shown beside `explanation.png` (written by `push_to_hub.py`). `revision`: what the usage snippet
    pins its `trust_remote_code` loads to (the release tag; without one, a placeholder for the commit to pin)."""
    from .configuration_mmsa import MmsaConfig

    model_dir = Path(model_dir)
    config = MmsaConfig.from_pretrained(model_dir)
    test = json.loads((model_dir / "test_results.json").read_text())
    state = json.loads((model_dir / "trainer_state.json").read_text())
    info = json.loads((model_dir / "run_info.json").read_text())
    model_args, data_args = info["model_args"], info["data_args"]

    text_tower = (
        _tower_name(model_args.get("text_model_name_or_path"), config.text_config) if config.uses_text else "-"
    )
    vision_tower = (
        _tower_name(model_args.get("vision_model_name_or_path"), config.vision_config) if config.uses_vision else "-"
    )
    # base_model lists Hub ids only (a local folder not made by mmsa.offline_backbones has none).
    base_models = base_models or [n for n in (text_tower, vision_tower) if n != "-" and not Path(n).exists()] or None
    if dataset_id is None:  # the run's dataset when it came from the Hub, else a generic name
        source = info["dataset"]
        dataset_id = source if "/" in source and not Path(source).exists() else "mvsa-single"
    dataset_name = "MVSA-Single" if data_args.get("dataset_variant", "single") == "single" else "MVSA-Multiple"
    model_name = repo_id.split("/")[-1]

    eval_results = eval_results_for(test, dataset_id, dataset_name)
    card_data = ModelCardData(
        language=["en"],
        license=license,
        license_name="research-only" if license == "other" else None,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["mmsa", "multimodal", "sentiment-analysis", "image-text", "custom_code", f"fusion-{config.fusion}"],
        datasets=[dataset_id],
        base_model=base_models,
        metrics=["accuracy", "f1"],
        model_name=model_name,
        eval_results=eval_results,
    )
    test_metrics = card_test_metrics(test)
    hyperparameters = card_hyperparameters(info["training_args"], state, data_args, config)
    counts = info["label_counts"]
    train_counts = counts.get("train", {})
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        repo_id=repo_id,
        revision=revision or "<commit sha>",
        config=config,
        text_config=config.text_config,
        vision_config=config.vision_config,
        text_tower=text_tower,
        vision_tower=vision_tower,
        fusion=config.fusion,
        fusion_description=MMSA_FUSIONS[config.fusion].description(),
        dataset_name=dataset_name,
        dataset_id=dataset_id,
        train_size=sum(train_counts.values()),
        test_size=test.get("test_samples", sum(counts.get("test", {}).values())),
        label_summary=", ".join(f"{n} {label}" for label, n in train_counts.items()) + " in train",
        label_counts=counts,
        split_seed=data_args["split_seed"],
        metric_for_best_model=info["training_args"]["metric_for_best_model"],
        test_metrics=test_metrics,
        epochs=epoch_rows(state["log_history"]),
        model_args=model_args,
        hyperparameters=hyperparameters,
        versions=info["versions"],
        mvsa_citation=MVSA_CITATION,
        explanation=explanation,
    )
