"""`text_normalization="tweet"`: what it does to a post, and that training, the feature cache, the processor, the
saved folder and the ONNX route apply it alike."""

import json

import pytest
import torch

from mmsa import MmsaProcessor
from mmsa.feature_cache import cache_text_features
from mmsa.testing_utils import fake_mvsa_posts, tiny_model_and_processor, write_fake_mvsa
from mmsa.text_normalization import normalize_text, normalize_tweet


def test_tweet_normalization():
    text = "Sunny day 😂 at the #beach with @anna_b http://t.co/x1 and www.example.com #happy!"
    assert normalize_tweet(text) == (
        "Sunny day face with tears of joy at the # beach with @USER HTTPURL and HTTPURL # happy!"
    )
    assert normalize_text(text, "none") == text
    assert normalize_tweet("mail me at a@b.com") == "mail me at a@b.com"  # an address is not a mention
    assert normalize_text("🙂", "tweet") == "slightly smiling face"
    with pytest.raises(ValueError, match="text_normalization must be one of"):
        normalize_text("x", "lowercase")
    with pytest.raises(ValueError, match="text_normalization must be one of"):
        MmsaProcessor(tokenizer=tiny_model_and_processor()[1].tokenizer, text_normalization="lowercase")


def test_the_processor_saves_and_applies_it(tmp_path):
    _, processor = tiny_model_and_processor("naive_cat")
    processor.text_normalization = "tweet"
    processor.save_pretrained(tmp_path)
    loaded = MmsaProcessor.from_pretrained(tmp_path)
    assert loaded.text_normalization == "tweet"
    assert json.loads((tmp_path / "processor_config.json").read_text())["text_normalization"] == "tweet"
    raw = "i love #happy day @bob http://t.co/x1 😂"
    ids = loaded(text=[raw])["input_ids"][0].tolist()
    normalised = "i love # happy day @USER HTTPURL face with tears of joy"
    assert ids == processor.tokenizer([normalised], return_tensors="pt")["input_ids"][0].tolist()
    plain = MmsaProcessor(processor.image_processor, processor.tokenizer, max_length=processor.max_length)
    assert plain(text=[raw])["input_ids"][0].tolist() != ids
    with pytest.raises(ValueError, match="not valid Unicode"):
        loaded(text=["bad \ud800 #tag"])


def test_training_and_the_feature_cache_see_the_normalised_text(tmp_path):
    from mmsa.data import build_mvsa
    from mmsa.training import make_transform

    model, processor = tiny_model_and_processor("naive_cat", text_pooling="mean", freeze_text_backbone=True)
    split = build_mvsa(write_fake_mvsa(tmp_path / "raw", fake_mvsa_posts(12)), seed=1)["train"]
    processor.text_normalization = "tweet"
    transformed = make_transform(processor, training=False, max_length=32, use_images=False)(split[:3])
    expected = processor.tokenizer([normalize_tweet(t) for t in split[:3]["text"]], truncation=True, max_length=32)
    assert transformed["input_ids"] == expected["input_ids"]
    cached = cache_text_features(
        model.mmsa, processor.tokenizer, split, 32, with_tokens=False, cache_dir=tmp_path / "c", normalization="tweet"
    )
    plain = cache_text_features(
        model.mmsa, processor.tokenizer, split, 32, with_tokens=False, cache_dir=tmp_path / "c"
    )
    assert len({p.parent for p in cached.shards} | {p.parent for p in plain.shards}) == 2  # one store each
    model.eval()
    inputs = processor(text=split[:2]["text"])
    with torch.no_grad():
        direct = model.mmsa.encode_text(inputs["input_ids"], inputs["attention_mask"])[0]
    features = torch.stack([torch.as_tensor(row) for row in cached.rows([0, 1])["text_features"]])
    torch.testing.assert_close(features, direct, rtol=1e-4, atol=1e-5)


def test_the_onnx_route_normalises_as_the_pipeline_does(tmp_path):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from mmsa import cli
    from mmsa.onnx import export_onnx
    from mmsa.onnx_runtime import OnnxSentimentClassifier
    from mmsa.pipeline_mmsa import save_for_pipeline

    model, processor = tiny_model_and_processor("naive_cat", seed=4, initializer_range=0.5)
    processor.text_normalization = "tweet"
    save_for_pipeline(model.eval(), processor, tmp_path / "model")
    export_onnx(str(tmp_path / "model"), tmp_path / "onnx")
    post = {"text": "i love this http://t.co/x1 😂 #happy", "image": Image.new("RGB", (40, 40), (9, 99, 199))}
    torch_scores = cli.load_classifier(str(tmp_path / "model"))(post, top_k=None)
    onnx_scores = OnnxSentimentClassifier(tmp_path / "onnx")(post, top_k=None)
    assert [s["label"] for s in onnx_scores] == [s["label"] for s in torch_scores]
    assert [s["score"] for s in onnx_scores] == pytest.approx([s["score"] for s in torch_scores], abs=1e-4)
    unnormalised = OnnxSentimentClassifier(tmp_path / "onnx")
    unnormalised.text_normalization = "none"
    assert unnormalised(post, top_k=None)[0]["score"] != pytest.approx(onnx_scores[0]["score"], abs=1e-6)
