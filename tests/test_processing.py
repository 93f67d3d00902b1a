import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from mmsa import MmsaImageProcessor, MmsaProcessor, load_rgb_image
from mmsa.testing_utils import tiny_config, tiny_model_and_processor, tiny_tokenizer


def odd_mode_images():
    rgb = Image.new("RGB", (40, 30), (250, 10, 10))
    return {
        "L": Image.new("L", (40, 30), 128),
        "LA": Image.new("LA", (40, 30), (128, 0)),
        "P": rgb.convert("P"),
        "RGBA": Image.new("RGBA", (40, 30), (250, 10, 10, 0)),
        "CMYK": rgb.convert("CMYK"),
        "I;16": Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50),
        "1": Image.new("1", (40, 30), 1),
    }


@pytest.mark.parametrize("mode", list(odd_mode_images()))
def test_any_image_mode_becomes_rgb(mode):
    image = odd_mode_images()[mode]
    assert image.mode == mode
    rgb = load_rgb_image(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    _, processor = tiny_model_and_processor()
    pixels = processor(images=image)["pixel_values"]
    assert pixels.shape == (1, 3, 64, 64) and torch.isfinite(pixels).all()


def test_transparent_and_16_bit_images_keep_their_content():
    # Fully transparent pixels show the white background, not the hidden colour.
    assert load_rgb_image(Image.new("RGBA", (4, 4), (250, 10, 10, 0))).getpixel((0, 0)) == (255, 255, 255)
    ramp = load_rgb_image(Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)))
    assert ramp.getpixel((0, 0)) == (0, 0, 0) and ramp.getpixel((1, 1)) == (255, 255, 255)


def test_file_paths_and_bytes_are_accepted(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("P", (20, 20)).save(path)
    _, processor = tiny_model_and_processor()
    from_path = processor(images=str(path))["pixel_values"]
    from_pil = processor(images=Image.open(path))["pixel_values"]
    from_bytes = processor(images={"bytes": path.read_bytes(), "path": None})["pixel_values"]
    assert torch.equal(from_path, from_pil) and torch.equal(from_path, from_bytes)
    with pytest.raises(TypeError, match="PIL image"):
        load_rgb_image(12)


def test_transforms_come_from_the_timm_pretrained_config():
    config = tiny_config()
    config.vision_config.pretrained_cfg = {"input_size": (3, 48, 48), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    processor = MmsaProcessor.from_model_config(config, tiny_tokenizer())
    data = processor.image_processor.data_config
    assert data["input_size"] == (3, 48, 48) and data["mean"] == (0.5, 0.5, 0.5)
    white = processor(images=Image.new("RGB", (100, 70), (255, 255, 255)))["pixel_values"]
    assert white.shape == (1, 3, 48, 48)
    torch.testing.assert_close(white, torch.ones_like(white))  # (1 - 0.5) / 0.5
    # Defaults for a bare architecture come from timm's own pretrained config for it (resnet10t: 176 px, ImageNet).
    config.vision_config.pretrained_cfg = None
    default = MmsaProcessor.from_model_config(config, tiny_tokenizer()).image_processor.data_config
    assert default["input_size"] == (3, 176, 176) and default["mean"] == (0.485, 0.456, 0.406)


def test_train_transform_augments_and_eval_is_deterministic():
    _, processor = tiny_model_and_processor()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8))
    evals = [processor(images=image)["pixel_values"] for _ in range(2)]
    assert torch.equal(*evals)
    torch.manual_seed(0)
    trains = [processor(images=image, training=True)["pixel_values"] for _ in range(3)]
    assert trains[0].shape == evals[0].shape
    assert not all(torch.equal(trains[0], t) for t in trains[1:])


def test_processor_round_trip(tmp_path):
    _, processor = tiny_model_and_processor()
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is MmsaProcessor and type(reloaded.image_processor) is MmsaImageProcessor
    assert reloaded.max_length == processor.max_length
    assert reloaded.image_processor.data_config == processor.image_processor.data_config
    image = Image.new("RGB", (50, 50), (1, 2, 3))
    texts = ["i love this", "sad day the a photo"]
    a, b = processor(text=texts, images=[image, image]), reloaded(text=texts, images=[image, image])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_image_processor_is_timms_with_a_file_of_its_own(tmp_path):
    """It is a `TimmWrapperImageProcessor` that saves and loads on its own (timm's wrapper does neither: it reads the
    model's config.json), and its saved form holds the pretrained config, not the derived data config."""
    from transformers import AutoImageProcessor, TimmWrapperImageProcessor

    _, processor = tiny_model_and_processor()
    image_processor = processor.image_processor
    assert isinstance(image_processor, TimmWrapperImageProcessor)
    image_processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert "pretrained_cfg" in saved and "data_config" not in saved
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(reloaded) is MmsaImageProcessor and reloaded.data_config == image_processor.data_config
    image = Image.new("RGB", (50, 40), (1, 2, 3))
    assert torch.equal(reloaded(image)["pixel_values"], image_processor(image)["pixel_values"])


def test_truncation_and_missing_inputs():
    _, processor = tiny_model_and_processor()
    long = processor(text=" ".join(["love"] * 200))
    assert long["input_ids"].shape[1] == processor.max_length
    with pytest.raises(ValueError, match="text"):
        processor()


def route_test_images(folder):
    """The same picture saved four hard ways: RGBA PNG, 16-bit PNG, palette GIF, and a JPEG stored sideways with
    an EXIF orientation tag (6: rotate 90 degrees clockwise to view)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 46, 3), dtype=np.uint8))
    paths = {}
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (30, 46), dtype=np.uint8)))
    rgba.save(paths.setdefault("rgba_png", folder / "rgba.png"))
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 40).save(
        paths.setdefault("16bit_png", folder / "deep.png")
    )
    rgb.convert("P").save(paths.setdefault("palette_gif", folder / "palette.gif"))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.transpose(Image.Transpose.ROTATE_90).save(
        paths.setdefault("exif_jpeg", folder / "sideways.jpg"), exif=exif, quality=95
    )
    return paths


@pytest.mark.parametrize("kind", ["rgba_png", "16bit_png", "palette_gif", "exif_jpeg"])
def test_every_route_gives_the_same_pixels(kind, tmp_path, tiny_run):
    """Training, the feature cache, the processor (path, PIL image, bytes), the pipeline (path, URL) and the CLI all
    read an image through `load_rgb_image`: identical pixel_values."""
    import functools
    import http.server
    import threading

    from datasets import Dataset
    from datasets import Image as ImageFeature

    from mmsa import cli
    from mmsa.training import make_transform

    path = route_test_images(tmp_path)[kind]
    classifier = cli.load_classifier(str(tiny_run))
    processor = classifier.processor
    reference = processor(images=str(path))["pixel_values"][0]

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    try:
        rows = Dataset.from_dict({"image": [str(path)], "text": ["x"], "label": [0]}).cast_column(
            "image", ImageFeature()
        )
        routes = {
            "processor, PIL image": processor(images=Image.open(path))["pixel_values"][0],
            "processor, bytes": processor(images={"bytes": path.read_bytes(), "path": None})["pixel_values"][0],
            "training / evaluation transform": rows.with_transform(make_transform(processor, False, 16))[0][
                "pixel_values"
            ],
            "feature cache": processor.image_processor.eval_transform(load_rgb_image(rows[0]["image"])),
            "pipeline, path": classifier.preprocess({"text": "x", "image": str(path)})["pixel_values"][0],
            "pipeline, URL": classifier.preprocess({"text": "x", "image": url})["pixel_values"][0],
            "CLI": processor(
                images=cli.read_row({"text": "x", "image": path.name}, tmp_path, classifier.model.config)["image"]
            )["pixel_values"][0],
        }
    finally:
        server.shutdown()
    for route, pixels in routes.items():
        assert torch.equal(pixels, reference), route
    if kind == "exif_jpeg":
        upright = load_rgb_image(path)
        assert upright.size == (46, 30)  # stored 30 wide and 46 high; shown upright after the EXIF rotation


def test_fast_decode_reads_jpegs_at_a_reduced_scale(tmp_path):
    """JPEG draft mode: decoded at 1/2-1/8 scale but never below the transform's resize, so the pixels stay close to
    a full decode; other formats and PIL images are untouched; the setting is saved with the processor."""
    _, processor = tiny_model_and_processor()
    y, x = np.mgrid[0:900, 0:1200]
    smooth = np.stack([x / 1200 * 255, y / 900 * 255, (x + y) / 2100 * 255], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(smooth).save(tmp_path / "big.png")
    image_processor = processor.image_processor
    full = image_processor(str(tmp_path / "big.jpg"))["pixel_values"]
    image_processor.fast_decode = True
    assert image_processor.draft_size == 64  # tiny tower: 64 px input, crop_pct 1.0
    assert load_rgb_image(str(tmp_path / "big.jpg"), draft=image_processor.draft_size).size == (150, 113)  # 1/8
    fast = image_processor(str(tmp_path / "big.jpg"))["pixel_values"]
    assert not torch.equal(fast, full) and (fast - full).abs().mean() < 0.05  # about 1 grey level in 255
    png = str(tmp_path / "big.png")
    image_processor.fast_decode = False
    reference = image_processor(png)["pixel_values"]
    image_processor.fast_decode = True
    assert torch.equal(image_processor(png)["pixel_values"], reference)
    image_processor.save_pretrained(tmp_path / "saved")
    assert MmsaImageProcessor.from_pretrained(tmp_path / "saved").fast_decode is True
