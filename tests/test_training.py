"""train_hf.py end to end on tiny towers and a generated MVSA release (CPU, seconds per run)."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import concatenate_datasets
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, AutoProcessor

import train_hf
from mmsa import feature_cache
from mmsa.data import build_mvsa
from mmsa.feature_cache import cache_image_features, cache_text_features
from mmsa.metrics import load_sentiment_metrics
from mmsa.testing_utils import fake_mvsa_posts, write_fake_mvsa, write_tiny_towers
from mmsa.training import RUN_FINGERPRINT, MmsaDataCollator, MmsaTrainer, make_transform


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("assets")
    text, vision = write_tiny_towers(folder / "towers")
    raw = write_fake_mvsa(folder / "raw", fake_mvsa_posts(80))
    return {"text": str(text), "vision": str(vision), "raw": str(raw), "folder": folder}


def tiny_args(assets, output_dir, *extra):
    return [
        "--text_model_name_or_path",
        assets["text"],
        "--vision_model_name_or_path",
        assets["vision"],
        "--dataset_name_or_path",
        assets["raw"],
        "--output_dir",
        str(output_dir),
        "--fusion_hidden_size",
        "16",
        "--fusion_num_heads",
        "4",
        "--per_device_train_batch_size",
        "8",
        "--head_learning_rate",
        "2e-3",
        "--text_learning_rate",
        "1e-3",
        "--vision_learning_rate",
        "1e-3",
        "--feature_cache_dir",
        str(Path(output_dir).parent / "feature_cache"),
        "--disable_tqdm",
        "true",
        *extra,
    ]


def run_script(args, env_extra=None, launcher=(sys.executable,), timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def test_train_evaluate_and_save_a_loadable_model(assets, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump({"fusion": "mm_transformer", "num_train_epochs": 5, "seed": 11, "class_weights": "balanced"})
    )
    output_dir = tmp_path / "run"
    # A config file, then flags that override it.
    metrics = train_hf.main([str(config_file), *tiny_args(assets, output_dir, "--num_train_epochs", "3")])

    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["num_train_epochs"] == 3 and state["best_metric"] is not None
    assert [e["epoch"] for e in state["log_history"] if "eval_macro_f1" in e] == [1.0, 2.0, 3.0]
    results = json.loads((output_dir / "test_results.json").read_text())
    assert results == {k: v for k, v in metrics.items()}
    # The reported metrics are those of the per-post predictions written beside them.
    rows = [json.loads(line) for line in (output_dir / "test_predictions.jsonl").read_text().splitlines()]
    truth, guess = [r["label"] for r in rows], [r["prediction"] for r in rows]
    labels = ["negative", "neutral", "positive"]
    assert results["test_accuracy"] == pytest.approx(accuracy_score(truth, guess))
    assert results["test_macro_f1"] == pytest.approx(f1_score(truth, guess, labels=labels, average="macro"))
    assert results["test_weighted_f1"] == pytest.approx(f1_score(truth, guess, labels=labels, average="weighted"))
    per_class = f1_score(truth, guess, labels=labels, average=None, zero_division=0)
    assert [results[f"test_f1_{label}"] for label in labels] == pytest.approx(list(per_class))
    assert (output_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "negative" in (output_dir / "classification_report.txt").read_text()
    assert {
        "configuration_mmsa.py",
        "modeling_mmsa.py",
        "processing_mmsa.py",
        "config.json",
        "model.safetensors",
        "processor_config.json",
    } <= {p.name for p in output_dir.iterdir()}

    # output_dir is a model folder: reloading it reproduces the reported test metrics.
    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    assert model.config.fusion == "mm_transformer" and model.config.class_weights is not None
    test = build_mvsa(assets["raw"], num_proc=1)["test"]
    with torch.no_grad():
        batch = processor(text=test["text"], images=test["image"])
        predictions = model(**batch).logits.argmax(-1).numpy()
    references = np.array(test["label"])
    assert results["test_accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert results["test_macro_f1"] == pytest.approx(
        f1_score(references, predictions, average="macro", labels=[0, 1, 2], zero_division=0)
    )


def test_dataset_defaults_to_mvsa_single_dir(assets, tmp_path, monkeypatch):
    monkeypatch.delenv("MVSA_SINGLE_DIR", raising=False)
    args = tiny_args(assets, tmp_path / "run")
    args = args[:4] + args[6:]  # drop --dataset_name_or_path
    with pytest.raises(ValueError, match="MVSA_SINGLE_DIR"):
        train_hf.main(args)
    monkeypatch.setenv("MVSA_SINGLE_DIR", assets["raw"])
    metrics = train_hf.main(args + ["--fusion", "text_only", "--num_train_epochs", "1"])
    assert metrics["test_samples"] == len(build_mvsa(assets["raw"], num_proc=1)["test"])


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


def test_local_evaluate_module():
    metric = load_sentiment_metrics()
    predictions, references = [0, 2, 1, 2, 2, 0], [0, 2, 2, 2, 1, 1]
    result = metric.compute(predictions=predictions, references=references, labels=["negative", "neutral", "positive"])
    assert result["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert result["macro_f1"] == pytest.approx(f1_score(references, predictions, average="macro"))
    assert result["weighted_f1"] == pytest.approx(f1_score(references, predictions, average="weighted"))
    assert result["f1_positive"] == pytest.approx(f1_score(references, predictions, average=None)[2])


def test_frozen_image_features_are_cached_reused_and_invalidated(assets, tmp_path, monkeypatch):
    model_args, data_args, _ = train_hf.parse_args(
        tiny_args(assets, tmp_path / "run", "--fusion", "hstec", "--freeze_vision_backbone", "true")
    )
    model, processor = train_hf.build_model(model_args, data_args)
    split = build_mvsa(assets["raw"], num_proc=1)["validation"]
    calls = []
    real_compute = feature_cache.compute_image_features
    monkeypatch.setattr(
        feature_cache, "compute_image_features", lambda *a, **k: calls.append(1) or real_compute(*a, **k)
    )
    first = cache_image_features(model.mmsa, processor.image_processor, split, True, cache_dir=tmp_path / "cache")
    again = cache_image_features(model.mmsa, processor.image_processor, split, True, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and first.shards == again.shards

    # The cached rows are exactly what the tower computes with the eval transform.
    rows = first.rows([0, 3])
    with torch.no_grad():
        pooled, tokens = model.mmsa.encode_image(
            processor(images=[split[0]["image"], split[3]["image"]])["pixel_values"]
        )
    torch.testing.assert_close(torch.stack(rows["image_features"]), pooled)
    torch.testing.assert_close(torch.stack(rows["image_tokens"]), tokens)

    # Same logits whether the model reads cached features or runs the frozen tower.
    assert_same_logits(model, processor, split, image_cache=first)

    # New tower weights or a new transform: new features.
    with torch.no_grad():
        next(model.mmsa.vision_model.parameters()).add_(1.0)
    changed = cache_image_features(model.mmsa, processor.image_processor, split, True, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and changed.shards != first.shards
    processor.image_processor.__init__(
        pretrained_cfg={**processor.image_processor.pretrained_cfg, "input_size": (3, 48, 48)}
    )
    resized = cache_image_features(model.mmsa, processor.image_processor, split, True, cache_dir=tmp_path / "cache")
    assert len(calls) == 3 and resized.shards[0] not in first.shards + changed.shards


def test_features_are_cached_per_post_and_shared_between_splits(assets, tmp_path, monkeypatch):
    model_args, data_args, _ = train_hf.parse_args(
        tiny_args(
            assets,
            tmp_path / "run",
            "--fusion",
            "ote",
            "--freeze_vision_backbone",
            "true",
            "--freeze_text_backbone",
            "true",
            "--max_text_length",
            "32",
        )
    )
    model, processor = train_hf.build_model(model_args, data_args)
    dataset = build_mvsa(assets["raw"], num_proc=1)
    computed = []
    for name in ("compute_image_features", "compute_text_features"):
        real = getattr(feature_cache, name)
        monkeypatch.setattr(
            feature_cache, name, lambda *a, _real=real, **k: computed.append(len(a[2])) or _real(*a, **k)
        )
    store = tmp_path / "cache"
    train_images = cache_image_features(model.mmsa, processor.image_processor, dataset["train"], True, store)
    cache_text_features(model.mmsa, processor.tokenizer, dataset["train"], 32, True, store)
    assert computed == [len(dataset["train"])] * 2
    # Another split of the same posts: the train posts are read back, only the others are computed.
    mixed = concatenate_datasets([dataset["validation"], dataset["train"].select(range(4))])
    images = cache_image_features(model.mmsa, processor.image_processor, mixed, True, store)
    texts = cache_text_features(model.mmsa, processor.tokenizer, mixed, 32, True, store)
    assert computed[2:] == [len(dataset["validation"])] * 2
    assert len(images.shards) == 2 and len(images) == len(mixed)
    # Each row is the one of its own post, whichever shard holds it and whichever batch computed it.
    reference = feature_cache.compute_image_features(model.mmsa, processor.image_processor, mixed, True)
    rows = images.rows(range(len(mixed)))
    assert torch.equal(torch.stack(rows["image_features"]), reference["pooled"])
    assert torch.equal(torch.stack(rows["image_tokens"]), reference["tokens"])
    assert torch.equal(images.rows([len(mixed) - 1])["image_features"][0], train_images.rows([3])["image_features"][0])
    reference = feature_cache.compute_text_features(model.mmsa, processor.tokenizer, mixed, 32, True)
    assert torch.equal(torch.stack(texts.rows(range(len(mixed)))["text_features"]), reference["pooled"])
    assert_same_logits(model, processor, mixed, text_cache=texts, image_cache=images)


def assert_same_logits(model, processor, split, **caches):
    indexed = split.add_column("feature_row", list(range(len(split))))
    collate = MmsaDataCollator(processor)
    rows = [0, 3, 5]
    cached = collate([indexed.with_transform(make_transform(processor, False, 32, **caches))[i] for i in rows])
    plain = collate([split.with_transform(make_transform(processor, False, 32))[i] for i in rows])
    assert any(key.endswith(("_features", "_tokens")) for key in cached)
    model.eval()
    with torch.no_grad():
        cached.pop("labels"), plain.pop("labels")
        torch.testing.assert_close(model(**cached).logits, model(**plain).logits, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("fusion", ["mm_transformer", "ote"])
def test_frozen_text_features_are_cached_and_equivalent(assets, tmp_path, fusion):
    model_args, data_args, _ = train_hf.parse_args(
        tiny_args(
            assets,
            tmp_path / "run",
            "--fusion",
            fusion,
            "--freeze_text_backbone",
            "true",
            "--freeze_vision_backbone",
            "true",
            "--text_pooling",
            "mean",
            "--max_text_length",
            "32",
        )
    )
    model, processor = train_hf.build_model(model_args, data_args)
    split = build_mvsa(assets["raw"], num_proc=1)["train"]
    with_tokens = model.config.uses_tokens
    text_cache = cache_text_features(model.mmsa, processor.tokenizer, split, 32, with_tokens, tmp_path / "cache")
    image_cache = cache_image_features(model.mmsa, processor.image_processor, split, with_tokens, tmp_path / "cache")
    rows = text_cache.rows([1])
    if with_tokens:
        assert len(rows["attention_mask"][0]) == len(processor.tokenizer(split[1]["text"])["input_ids"])
        assert rows["text_tokens"][0].shape == (len(rows["attention_mask"][0]), 32)
    assert_same_logits(model, processor, split, text_cache=text_cache, image_cache=image_cache)
    # Another pooling is another cache.
    model.config.text_pooling = "cls"
    assert (
        cache_text_features(model.mmsa, processor.tokenizer, split, 32, with_tokens, tmp_path / "cache").shards
        != text_cache.shards
    )


def test_training_on_cached_features_of_both_towers(assets, tmp_path):
    metrics = train_hf.main(
        tiny_args(
            assets,
            tmp_path / "run",
            "--fusion",
            "cmac",
            "--num_train_epochs",
            "2",
            "--freeze_text_backbone",
            "true",
            "--freeze_vision_backbone",
            "true",
        )
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "test_predictions.jsonl").read_text().splitlines()]
    assert metrics["test_accuracy"] == pytest.approx(np.mean([r["label"] == r["prediction"] for r in rows]))
    assert [r["id"] for r in rows] == build_mvsa(assets["raw"], num_proc=1)["test"]["id"]
    assert len(list((tmp_path / "feature_cache").rglob("*.safetensors"))) == 6  # 3 splits x 2 towers


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
    # Only the image tower's features were cached: the text tower runs in every step.
    assert {p.parent.parent.name for p in (tmp_path / "feature_cache").rglob("*.safetensors")} == {"image"}
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


@pytest.mark.slow
def test_torchrun_cpu_two_processes(assets, tmp_path):
    """CPU DDP the documented way: `torchrun --nproc_per_node 2 train_hf.py ... --use_cpu true` (accelerate 1.x's
    `launch --cpu` starts a single process whatever `--num_processes` says)."""
    output_dir = tmp_path / "ddp"
    args = tiny_args(
        assets, output_dir, "--fusion", "hstec", "--num_train_epochs", "2", "--freeze_vision_backbone", "true"
    )
    run = run_script(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", "train_hf.py", *args]
        + ["--use_cpu", "true"]
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout + run.stderr
    assert "Process rank: 0" in log and "Process rank: 1" in log and "distributed: True" in log
    assert "unused parameters" not in log.lower()
    train_size = len(build_mvsa(assets["raw"], num_proc=1)["train"])
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 2 * -(-train_size // (8 * 2))  # each step takes 8 posts on each of 2 processes
    assert len(list(output_dir.glob("model*.safetensors"))) == 1
    assert AutoModelForSequenceClassification.from_pretrained(output_dir).config.fusion == "hstec"


KILLING_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import train_hf
    from transformers import TrainerCallback

    class KillAfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= int(os.environ["KILL_AT_STEP"]):
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind

    class Trainer(train_hf.MmsaTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAfterCheckpoint())

    train_hf.MmsaTrainer = Trainer
    train_hf.main(sys.argv[1:])
    """
)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(assets, tmp_path):
    common = ["--fusion", "cmac", "--num_train_epochs", "4", "--early_stopping_patience", "0", "--seed", "5"]
    reference = run_script(["train_hf.py", *tiny_args(assets, tmp_path / "a", *common)])
    assert reference.returncode == 0, reference.stderr[-3000:]

    steps_per_epoch = json.loads((tmp_path / "a" / "trainer_state.json").read_text())["global_step"] // 4
    killed = run_script(
        ["-c", KILLING_RUN, *tiny_args(assets, tmp_path / "b", *common)],
        env_extra={"KILL_AT_STEP": str(2 * steps_per_epoch)},
    )
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "test_results.json").exists()
    assert (tmp_path / "b" / f"checkpoint-{2 * steps_per_epoch}").is_dir()

    resumed = run_script(["train_hf.py", *tiny_args(assets, tmp_path / "b", *common)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming this run from {tmp_path / 'b'}" in (resumed.stdout + resumed.stderr).lower()

    def results(name):
        values = json.loads((tmp_path / name / "test_results.json").read_text())
        return {k: v for k, v in values.items() if "runtime" not in k and "per_second" not in k}

    assert results("a") == results("b")
    history = [json.loads((tmp_path / n / "trainer_state.json").read_text())["log_history"] for n in ("a", "b")]
    strip = [
        [{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k} for e in h] for h in history
    ]
    assert strip[0][:-1] == strip[1][:-1]  # every per-epoch loss and validation metric


@pytest.mark.slow
def test_paper_configuration_trains_both_towers_at_their_own_learning_rates(mvsa_single_dir, tmp_path):
    """configs/paper_bert_resnet50.yaml as it is, with random towers of the real shapes (BERT-base, timm resnet50)
    in place of the Hub checkpoints: two steps on real posts; every part moves by about its own learning rate."""
    from safetensors.torch import load_file
    from transformers import set_seed

    from mmsa.testing_utils import TRAIN_ONLY_FLAGS, write_random_paper_towers

    tokenizer = ROOT / "backbones" / "text"  # bert-base-uncased's vocabulary, as the paper's tokenizer
    text, vision = write_random_paper_towers(tmp_path / "towers", tokenizer if tokenizer.is_dir() else None)
    output_dir = tmp_path / "run"
    argv = [
        str(ROOT / "configs" / "paper_bert_resnet50.yaml"),
        "--text_model_name_or_path",
        str(text),
        "--vision_model_name_or_path",
        str(vision),
        "--dataset_name_or_path",
        str(mvsa_single_dir),
        "--output_dir",
        str(output_dir),
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "4",
        "--max_steps",
        "2",
        *TRAIN_ONLY_FLAGS,
    ]
    # The model exactly as train_hf.py initialises it (same seed, same arguments), to measure how far training moved it.
    model_args, data_args, training_args = train_hf.parse_args(argv)
    set_seed(training_args.seed)
    before = train_hf.build_model(model_args, data_args)[0].state_dict()
    train_hf.main(argv)

    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    trained = load_file(output_dir / "model.safetensors")
    changes = {"text": 0.0, "vision": 0.0, "head": 0.0}
    for key, value in before.items():
        if value.is_floating_point() and "running_" not in key:
            part = (
                "text"
                if key.startswith("mmsa.text_model.")
                else "vision"
                if key.startswith("mmsa.vision_model.")
                else "head"
            )
            changes[part] = max(changes[part], (trained[key] - value).abs().max().item())
    config = yaml.safe_load((ROOT / "configs" / "paper_bert_resnet50.yaml").read_text())
    rates = {
        "text": config["text_learning_rate"],
        "vision": config["vision_learning_rate"],
        "head": config["head_learning_rate"],
    }
    assert rates == {"text": 5e-6, "vision": 5e-6, "head": 5e-5}
    # AdamW moves a weight by at most about lr per step (lr, then lr/2 with the linear schedule): a part without
    # gradients would not move, and the towers trained at the head's rate would move ten times as far.
    for part, lr in rates.items():
        assert 0.5 * lr <= changes[part] <= 3 * lr, (part, changes[part], lr)


def test_a_checkpoint_of_another_run_is_not_resumed(assets, tmp_path):
    output_dir = tmp_path / "run"
    common = ["--fusion", "naive_cat", "--num_train_epochs", "1", "--freeze_vision_backbone", "true"]
    train_hf.main(tiny_args(assets, output_dir, *common))
    first = (output_dir / "model.safetensors").read_bytes()
    checkpoint = next(output_dir.glob("checkpoint-*"))
    assert json.loads((checkpoint / RUN_FINGERPRINT).read_text())["model_args"]["fusion"] == "naive_cat"

    other_data = write_fake_mvsa(tmp_path / "other_raw", fake_mvsa_posts(50, seed=9))
    other = [a if a != assets["raw"] else str(other_data) for a in tiny_args(assets, output_dir, *common)]
    with pytest.raises(
        ValueError, match="holds a checkpoint of another run, not resumed: dataset: .*--overwrite_output_dir"
    ):
        train_hf.main(other)
    with pytest.raises(ValueError, match=r"model_args.head_learning_rate: 0.002 -> 0.01"):
        train_hf.main(tiny_args(assets, output_dir, *common, "--head_learning_rate", "1e-2"))
    assert (output_dir / "model.safetensors").read_bytes() == first

    train_hf.main(other + ["--overwrite_output_dir", "true"])
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] > 0 and (output_dir / "model.safetensors").read_bytes() != first
    assert json.loads((output_dir / "run_info.json").read_text())["dataset"] == str(other_data)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_feature_cache_file_is_named_deleted_and_recomputed(assets, tmp_path, damage, caplog):
    model_args, data_args, _ = train_hf.parse_args(
        tiny_args(assets, tmp_path / "run", "--fusion", "ote", "--freeze_vision_backbone", "true")
    )
    model, processor = train_hf.build_model(model_args, data_args)
    split = build_mvsa(assets["raw"], num_proc=1)["validation"]
    cached = cache_image_features(model.mmsa, processor.image_processor, split, False, cache_dir=tmp_path / "cache")
    (shard,) = cached.shards
    good, tensors = shard.read_bytes(), {k: t.clone() for k, t in load_file(shard).items()}
    if damage == "truncate":
        shard.write_bytes(good[: len(good) // 2])
    else:  # same size, one float changed: only the checksum can tell
        shard.write_bytes(good[:-8] + bytes(b ^ 0xFF for b in good[-8:]))
    with caplog.at_level("WARNING", logger="mmsa.feature_cache"):
        again = cache_image_features(model.mmsa, processor.image_processor, split, False, cache_dir=tmp_path / "cache")
    assert f"Cached image features {shard} are damaged" in caplog.text
    assert again.shards == [shard] and all(torch.equal(t, load_file(shard)[k]) for k, t in tensors.items())
    assert feature_cache.verify_cache_file(shard) is None


def test_an_intact_shard_is_hashed_once_per_process_until_it_changes(assets, tmp_path, monkeypatch):
    model_args, data_args, _ = train_hf.parse_args(
        tiny_args(assets, tmp_path / "run", "--fusion", "ote", "--freeze_vision_backbone", "true")
    )
    model, processor = train_hf.build_model(model_args, data_args)
    split = build_mvsa(assets["raw"], num_proc=1)["validation"]
    (shard,) = cache_image_features(model.mmsa, processor.image_processor, split, False, cache_dir=tmp_path).shards
    hashed = []
    monkeypatch.setattr(feature_cache, "verify_cache_file", lambda path: hashed.append(path) or None)
    for _ in range(3):  # three splits of one run read the same shard
        cache_image_features(model.mmsa, processor.image_processor, split, False, cache_dir=tmp_path)
    assert hashed == [shard]
    shard.write_bytes(shard.read_bytes())  # rewritten: verified again
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 1_000_000))
    cache_image_features(model.mmsa, processor.image_processor, split, False, cache_dir=tmp_path)
    assert hashed == [shard, shard]


def test_one_class_training_data_is_warned_about_or_refused(tmp_path, assets, caplog):
    one_class = write_fake_mvsa(tmp_path / "raw", {i: ("positive,positive", f"i love this {i}") for i in range(1, 21)})
    args = [
        a if a != assets["raw"] else str(one_class)
        for a in tiny_args(assets, tmp_path / "run", "--fusion", "text_only", "--num_train_epochs", "1")
    ]
    with pytest.raises(ValueError, match=r"the train split holds a single class \(positive\).*\(--strict\)"):
        train_hf.main(args + ["--strict", "true"])
    with caplog.at_level("WARNING", logger="train_hf"):
        train_hf.main(args)
    assert "the train split holds a single class (positive)" in caplog.text


@pytest.mark.slow
def test_python_and_accelerate_launch_give_the_same_run(assets, tmp_path):
    """`accelerate launch` sets OMP_NUM_THREADS=1; train_hf.py sets the thread count itself, so both launchers
    train with the same float arithmetic: identical per-epoch losses and metrics."""
    common = ["--fusion", "cmac", "--num_train_epochs", "2", "--seed", "3", "--freeze_vision_backbone", "true"]
    plain = run_script(["train_hf.py", *tiny_args(assets, tmp_path / "python", *common)])
    assert plain.returncode == 0, plain.stderr[-3000:]
    accelerate = shutil.which("accelerate")
    launcher = (accelerate, "launch") if accelerate else (sys.executable, "-m", "accelerate.commands.launch")
    launched = run_script(
        ["--num_processes", "1", "train_hf.py", *tiny_args(assets, tmp_path / "accelerate", *common)],
        launcher=launcher,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]

    def history(name):
        entries = json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        return [{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k} for e in entries]

    assert history("python") == history("accelerate")
    threads = {
        json.loads((tmp_path / n / "run_info.json").read_text())["torch_threads"] for n in ("python", "accelerate")
    }
    assert len(threads) == 1


def test_config_fields_are_overrides_with_defaults_in_mmsa_config(assets, tmp_path):
    from mmsa.training import parse_config_overrides

    as_flags = train_hf.parse_args(tiny_args(assets, tmp_path, "--fusion_num_layers", "2", "--text_pooling", "mean"))
    as_string = train_hf.parse_args(
        tiny_args(assets, tmp_path, "--config_overrides", "fusion_num_layers=2,text_pooling=mean")
    )
    expected = {"fusion_hidden_size": 16, "fusion_num_heads": 4, "fusion_num_layers": 2, "text_pooling": "mean"}
    assert parse_config_overrides(as_flags[0].config_overrides) == expected
    assert parse_config_overrides(as_string[0].config_overrides) == expected
    model = train_hf.build_model(as_flags[0], as_flags[1])[0]
    assert (model.config.fusion_num_layers, model.config.text_pooling, model.config.attention_dropout) == (
        2,
        "mean",
        0.4,
    )
    with pytest.raises(ValueError, match="no_such_field"):
        parse_config_overrides("no_such_field=1")


def test_evaluate_only_with_do_train_false(tiny_run, tmp_path):
    dataset = json.loads((tiny_run / "run_info.json").read_text())["dataset"]
    metrics = train_hf.main(
        ["--model_name_or_path", str(tiny_run), "--dataset_name_or_path", dataset, "--do_train", "false",
         "--output_dir", str(tmp_path / "eval"), "--feature_cache_dir", str(tmp_path / "cache"),
         "--disable_tqdm", "true"]
    )  # fmt: skip
    trained = json.loads((tiny_run / "test_results.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "test_weighted_f1"):
        assert metrics[key] == pytest.approx(trained[key])
    assert not list((tmp_path / "eval").glob("checkpoint-*"))
    assert (tmp_path / "eval" / "test_predictions.jsonl").read_text() == (
        tiny_run / "test_predictions.jsonl"
    ).read_text()
    with pytest.raises(ValueError, match="--model_name_or_path"):
        train_hf.main(["--do_train", "false", "--dataset_name_or_path", dataset, "--output_dir", str(tmp_path / "x")])


@pytest.mark.parametrize("holdout", ["0.2", "0"])
def test_hyperparameter_search_trains_the_final_run_with_the_best_trial(assets, tmp_path, holdout):
    output_dir = tmp_path / "run"
    args = tiny_args(assets, output_dir, "--fusion", "naive_combine", "--freeze_text_backbone", "true")
    args += ["--freeze_vision_backbone", "true", "--hp_search_trials", "3", "--hp_search_holdout", holdout]
    train_hf.main(args + ["--do_predict", "false"])
    record = json.loads((output_dir / "hp_search.json").read_text())
    trials = record["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and record["metric"] == "eval_macro_f1"
    run_info = json.loads((output_dir / "run_info.json").read_text())
    sizes = {split: sum(counts.values()) for split, counts in run_info["label_counts"].items()}
    if holdout == "0":
        assert record["scored_on"] == f"the validation split ({sizes['validation']} posts)"
    else:  # a stratified fifth of the training split: the validation split plays no part in the search
        held_out = math.ceil(0.2 * sizes["train"])
        assert record["scored_on"] == f"{held_out} posts held out of the training split (0.2, stratified)"
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert record["best_objective"] == max(t["objective"] for t in complete)
    best = record["best_hyperparameters"]
    assert best == trials[record["best_trial"]]["params"]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3  # the sampler proposed three settings
    # The final run was built and trained with the best trial's values, wherever each one belongs.
    config = json.loads((output_dir / "config.json").read_text())
    assert {k: config[k] for k in ("fusion_hidden_size", "projection_dropout", "classifier_dropout")} == {
        k: best[k] for k in ("fusion_hidden_size", "projection_dropout", "classifier_dropout")
    }
    assert run_info["model_args"]["head_learning_rate"] == best["head_learning_rate"]
    training = run_info["training_args"]
    assert training["num_train_epochs"] == best["num_train_epochs"]
    assert training["weight_decay"] == best["weight_decay"]
    assert training["per_device_train_batch_size"] == best["per_device_train_batch_size"]
    assert not (output_dir / "hp_search").exists()  # trials keep no checkpoints


def test_a_search_trial_is_scored_by_its_best_evaluation_not_its_last():
    import optuna
    from transformers.trainer_utils import HPSearchBackend

    trainer = MmsaTrainer.__new__(MmsaTrainer)  # only the reporting path is exercised
    trainer.args = train_hf.MmsaTrainingArguments(output_dir="unused")
    trainer.hp_search_backend = HPSearchBackend.OPTUNA
    trainer.compute_objective = lambda metrics: metrics["eval_macro_f1"]
    trainer.objective = None
    trial = optuna.create_study(direction="maximize").ask()
    for step, score in enumerate([0.5, 0.7, 0.6], start=1):
        trainer._report_to_hp_search(trial, step, {"eval_macro_f1": score})
    assert trainer.objective == 0.7
    trainer.args.greater_is_better, trainer.objective = False, None
    for step, score in enumerate([0.5, 0.3, 0.4], start=1):
        trainer._report_to_hp_search(trial, 10 + step, {"eval_macro_f1": score})
    assert trainer.objective == 0.3


def test_a_search_space_name_that_belongs_nowhere_is_refused():
    from mmsa.hp_search import split_hyperparameters

    args = train_hf.MmsaTrainingArguments(output_dir="unused")
    training, rates, config = split_hyperparameters(
        {"num_train_epochs": 3, "head_learning_rate": 1e-3, "fusion_hidden_size": 32}, args
    )
    assert (training, rates, config) == (
        {"num_train_epochs": 3},
        {"head_learning_rate": 1e-3},
        {"fusion_hidden_size": 32},
    )
    with pytest.raises(ValueError, match="'fusion_width' is neither a TrainingArguments field"):
        split_hyperparameters({"fusion_width": 32}, args)
