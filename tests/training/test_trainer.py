"""`mmsa.training.trainer`: each part of the model at its own learning rate, layer-wise decay, top text
layers."""

import json
import math

import pytest
import torch
from run_helpers import tiny_args
from transformers import AutoModelForSequenceClassification

import train_hf
from mmsa.training import MmsaTrainer


def test_backbone_and_head_learning_rates_are_set_apart(assets, tmp_path):
    model_args, data_args, training_args = train_hf.parse_args(
        tiny_args(
            assets,
            tmp_path / "run",
            "--fusion",
            "cmac",
            "--freeze_vision_backbone",
            "true",
            "--text_learning_rate",
            "5e-6",
            "--head_learning_rate",
            "5e-5",
            "--eval_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
        )
    )
    model, processor = train_hf.build_model(model_args, data_args)
    trainer = MmsaTrainer(model=model, args=training_args, learning_rates={"text": 5e-6, "vision": 7e-6, "head": 5e-5})
    optimizer = trainer.create_optimizer()
    by_id = {id(p): (g["group_name"], g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    for name, parameter in model.named_parameters():
        if ".vision_model." in f".{name}":
            assert id(parameter) not in by_id  # frozen: not optimised at all
            continue
        group, lr, decay = by_id[id(parameter)]
        assert (group, lr) == (("text", 5e-6) if ".text_model." in f".{name}" else ("head", 5e-5))
        assert decay == (0.0 if ("bias" in name or "LayerNorm" in name or "norm" in name) else 0.01), name


def test_top_text_layers_train_on_cached_image_features(assets, tmp_path, caplog):
    """The text tower fine-tuned (its top layer only) while the frozen image tower is read from the cache."""
    from transformers import AutoModel

    from mmsa.modeling_mmsa import text_layers

    args = tiny_args(
        assets,
        tmp_path / "run",
        "--fusion",
        "naive_combine",
        "--num_train_epochs",
        "2",
        "--freeze_vision_backbone",
        "true",
        "--text_trainable_layers",
        "1",
        "--layerwise_lr_decay",
        "0.5",
        "--text_pooling",
        "mean",
    )
    with caplog.at_level("INFO", logger="mmsa.training"):
        train_hf.main(args)
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")
    assert trained.config.text_trainable_layers == 1
    reference = AutoModel.from_pretrained(assets["text"])
    layers, start = text_layers(trained.mmsa.text_model), text_layers(reference)
    assert any(not torch.equal(a, b) for a, b in zip(layers[-1].parameters(), start[-1].parameters()))
    for low, before in zip(layers[:-1], start[:-1]):
        assert all(torch.equal(a, b) for a, b in zip(low.parameters(), before.parameters()))
    assert torch.equal(
        trained.mmsa.text_model.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight
    )
    # The image tower's features were cached, and the hidden states entering the trained layer: only it runs.
    stores = {p.parent.parent.name for p in (tmp_path / "feature_cache").rglob("*.safetensors")}
    assert stores == {"image", "text_hidden"}
    # The top layer (and pooler) at the text rate; nothing below it is in the optimizer.
    groups = [line for line in caplog.text.splitlines() if "optimizer group text" in line]
    assert groups and all("lr 0.001" in line for line in groups), groups


def test_layerwise_lr_decay_sets_each_text_layer_rate(assets, tmp_path):
    from mmsa.training import MmsaTrainer

    model_args, data_args, training_args = train_hf.parse_args(
        tiny_args(
            assets,
            tmp_path / "run",
            "--fusion",
            "naive_cat",
            "--freeze_vision_backbone",
            "true",
            "--eval_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
        )
    )
    model, _ = train_hf.build_model(model_args, data_args)
    trainer = MmsaTrainer(
        model=model, args=training_args, learning_rates={"text": 1e-3, "head": 1e-2}, layerwise_lr_decay=0.5
    )
    rate = {id(p): group["lr"] for group in trainer.create_optimizer().param_groups for p in group["params"]}
    text = model.mmsa.text_model
    count = text.config.num_hidden_layers
    for i, layer in enumerate(text.encoder.layer):
        assert [rate[id(p)] for p in layer.parameters()] == pytest.approx([1e-3 * 0.5 ** (count - 1 - i)] * 16)
    embeddings = [rate[id(p)] for p in text.embeddings.parameters()]
    assert embeddings == pytest.approx([1e-3 * 0.5**count] * len(embeddings))
    heads = [p for name, p in model.named_parameters() if MmsaTrainer.parameter_group(name) == "head"]
    assert heads and {rate[id(p)] for p in heads} == {1e-2}
    assert all(id(p) not in rate for p in model.mmsa.vision_model.parameters())  # frozen


def test_the_mixup_flag_reaches_the_model_and_a_run_trains(assets, tmp_path):
    """`--mixup_alpha` is an `MmsaConfig` field given as a flag: a run on cached features trains with it (a loss
    other than the same run's without it) and the saved model keeps it."""
    frozen = ("--num_train_epochs", "1", "--freeze_text_backbone", "true", "--freeze_vision_backbone", "true")
    common = (*frozen, "--fusion", "naive_cat", "--modality_heads", "true", "--calibration", "none")
    train_hf.main(tiny_args(assets, tmp_path / "mixup", *common, "--mixup_alpha", "0.4"))
    train_hf.main(tiny_args(assets, tmp_path / "plain", *common))
    saved = json.loads((tmp_path / "mixup" / "config.json").read_text())
    assert saved["mixup_alpha"] == 0.4
    losses = [
        json.loads((tmp_path / name / "train_results.json").read_text())["train_loss"] for name in ("mixup", "plain")
    ]
    assert all(math.isfinite(loss) for loss in losses) and losses[0] != losses[1]


def test_the_trainers_label_smoothing_flag_smooths_the_models_own_loss(assets, tmp_path):
    """`--label_smoothing_factor` (a `TrainingArguments` field) becomes `MmsaConfig.label_smoothing`: the `Trainer`'s
    own smoother would replace the model's loss and drop the modality heads' terms."""
    model_args, data_args, training_args = train_hf.parse_args(
        tiny_args(assets, tmp_path, "--fusion", "naive_cat", "--label_smoothing_factor", "0.1")
    )
    assert training_args.label_smoothing_factor == 0.0
    model, _ = train_hf.build_model(model_args, data_args)
    assert model.config.label_smoothing == 0.1
    training_args.eval_strategy = "no"
    trainer = MmsaTrainer(model=model, args=training_args)
    assert trainer.label_smoother is None
