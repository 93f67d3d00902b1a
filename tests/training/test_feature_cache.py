"""`mmsa.feature_cache` through `mmsa.training.data`: frozen towers' features computed once per post, reused,
invalidated, verified."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import concatenate_datasets
from run_helpers import tiny_args
from safetensors.torch import load_file

import train_hf
from mmsa import feature_cache
from mmsa.data import build_mvsa
from mmsa.feature_cache import cache_image_features, cache_text_features
from mmsa.training import MmsaDataCollator, make_transform


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


def losses_by_epoch(output_dir) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def assert_same_training(cached_dir, plain_dir, cached: dict, plain: dict) -> dict:
    """Two runs trained alike: the same losses, test accuracy and saved weights (to float tolerance); returns the
    first run's weights."""
    np.testing.assert_allclose(losses_by_epoch(cached_dir), losses_by_epoch(plain_dir), rtol=1e-5)
    assert cached["test_accuracy"] == plain["test_accuracy"]
    trained, reference = (load_file(str(run / "model.safetensors")) for run in (cached_dir, plain_dir))
    assert trained.keys() == reference.keys()
    for key, tensor in trained.items():
        torch.testing.assert_close(tensor, reference[key], atol=1e-5, rtol=1e-4, msg=key)
    return trained


def test_a_partly_trained_text_tower_trains_the_same_from_its_cached_hidden_states(assets, tmp_path):
    """`--text_trainable_layers N` with the cache: the hidden states entering the first trained layer are cached per
    post and only the top layers run; the losses and the trained model are those of running the whole tower."""
    common = (
        "--fusion", "mm_transformer", "--num_train_epochs", "2", "--freeze_text_backbone", "false",
        "--text_trainable_layers", "1", "--freeze_vision_backbone", "true", "--max_text_length", "32",
    )  # fmt: skip
    cached = train_hf.main(tiny_args(assets, tmp_path / "cached", *common))
    store = tmp_path / "feature_cache" / "text_hidden"
    assert len(list(store.rglob("*.safetensors"))) == 3  # one shard per split
    plain = train_hf.main(tiny_args(assets, tmp_path / "plain", *common, "--cache_text_hidden_states", "false"))
    assert len(list(store.rglob("*.safetensors"))) == 3  # the run without it computed none
    assert_same_training(tmp_path / "cached", tmp_path / "plain", cached, plain)


def test_a_partly_trained_image_tower_trains_the_same_from_its_cached_feature_maps(assets, tmp_path, monkeypatch):
    """`--vision_trainable_blocks N` with the cache: the feature maps entering the first trained stage are cached per
    post (eval transform) and only the last stages run; the losses and the trained model are those of running the
    whole tower on the same (eval-transformed) images, and the fixed stages keep their weights."""
    from mmsa.processing_mmsa import MmsaImageProcessor

    common = (
        "--fusion", "mm_transformer", "--num_train_epochs", "2", "--freeze_vision_backbone", "false",
        "--vision_trainable_blocks", "1", "--freeze_text_backbone", "true", "--max_text_length", "32",
    )  # fmt: skip
    cached = train_hf.main(tiny_args(assets, tmp_path / "cached", *common))
    store = tmp_path / "feature_cache" / "vision_hidden"
    assert len(list(store.rglob("*.safetensors"))) == 3  # one shard per split
    # The uncached run augments its training images; given the eval transform instead, it sees what the cache holds.
    monkeypatch.setattr(MmsaImageProcessor, "train_transform", property(lambda self: self.eval_transform))
    plain = train_hf.main(tiny_args(assets, tmp_path / "plain", *common, "--cache_vision_hidden_states", "false"))
    assert len(list(store.rglob("*.safetensors"))) == 3  # the run without it computed none
    trained = assert_same_training(tmp_path / "cached", tmp_path / "plain", cached, plain)
    tower = load_file(str(next(Path(assets["vision"]).glob("*.safetensors"))))
    stem = next(key for key in tower if key.endswith("conv1.0.weight") or key.endswith("conv1.weight"))
    last = next(key for key in tower if ".layer4." in key and key.endswith("conv1.weight"))
    saved = {key.split("vision_model.", 1)[1]: value for key, value in trained.items() if "vision_model." in key}
    torch.testing.assert_close(saved[stem], tower[stem])  # fixed
    assert not torch.equal(saved[last], tower[last])  # trained
