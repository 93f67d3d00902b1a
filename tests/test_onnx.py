"""ONNX export: every fusion exports, float32 logits equal PyTorch's, int8 runs, the folder is self-describing."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmsa import MMSA_FUSIONS, cli
from mmsa.testing_utils import tiny_model_and_processor


pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from mmsa.onnx import MANIFEST, MmsaOnnxModel, export_onnx  # noqa: E402


pytestmark = pytest.mark.slow

TEXTS = ["a", "i love this so much ! the day is great", "sad", "http : / / photo", "good good"]


def inputs_for(model, processor, texts):
    config = model.config
    images = [Image.new("RGB", (60 + 7 * i, 48), (40 * i, 200, 90)) for i in range(len(texts))]
    return processor(text=texts if config.uses_text else None, images=images if config.uses_vision else None)


@pytest.mark.parametrize("fusion", sorted(MMSA_FUSIONS))
def test_float32_logits_equal_pytorch_at_batch_1_and_5(fusion, tmp_path):
    model, processor = tiny_model_and_processor(fusion, initializer_range=0.5)  # logits of order 1
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, tmp_path, processor=processor)
    onnx_model = MmsaOnnxModel.from_pretrained(tmp_path)
    for texts in (TEXTS[1:2], TEXTS):
        inputs = inputs_for(model, processor, texts)
        with torch.no_grad():
            expected = model(**inputs).logits.numpy()
        gap = np.abs(onnx_model(**inputs) - expected).max()
        # within 1e-4, and within 0.1% of the logits' scale (some tiny models' logits are far below 1)
        assert gap <= 1e-4 and gap <= 1e-3 * np.abs(expected).max() + 1e-6, (gap, np.abs(expected).max())


def test_int8_variant_and_folder(tmp_path):
    model, processor = tiny_model_and_processor("cmac", initializer_range=0.5)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, tmp_path, quantize="int8", processor=processor, opset=18)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["files"] == {"float32": "model.onnx", "int8": "model_int8.onnx"}
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids", "pixel_values"]
    assert manifest["inputs"][0]["shape"] == ["batch", "sequence"] and manifest["opset"] == 18
    assert manifest["inputs"][3]["shape"] == ["batch", 3, 64, 64]
    assert {"config.json", "processor_config.json", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    inputs = inputs_for(model, processor, TEXTS)
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    int8 = MmsaOnnxModel.from_pretrained(tmp_path, variant="int8")(**inputs)
    # A random tiny model with a wide initialiser is a hard case for int8 (logits of order 1 to 2); how close int8
    # stays on a trained model is tested on a real one below.
    assert int8.shape == expected.shape and np.abs(int8 - expected).max() < 0.6
    assert (tmp_path / "model_int8.onnx").stat().st_size < (tmp_path / "model.onnx").stat().st_size
    with pytest.raises(ValueError, match="has no 'fp16' model"):
        MmsaOnnxModel.from_pretrained(tmp_path, variant="fp16")
    with pytest.raises(ValueError, match="needs 'pixel_values'"):
        MmsaOnnxModel.from_pretrained(tmp_path)(**{k: v for k, v in inputs.items() if k != "pixel_values"})


def test_a_failed_export_names_the_fusion_and_the_reason(tmp_path, monkeypatch):
    model, processor = tiny_model_and_processor("ote")

    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported operator aten::frobnicate")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(ValueError, match=r"fusion 'ote' cannot be exported to ONNX: .*aten::frobnicate"):
        export_onnx(model, tmp_path, processor=processor)
    with pytest.raises(ValueError, match="quantize"):
        export_onnx(model, tmp_path, quantize="int4", processor=processor)
    with pytest.raises(ValueError, match="not an ONNX export"):
        MmsaOnnxModel.from_pretrained(tmp_path)


def test_cli_export_onnx(tiny_run, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = cli.run(["export-onnx", "--model", str(tiny_run), "--output", str(tmp_path / "onnx")])
    assert (folder / "model.onnx").is_file() and not (folder / "model_int8.onnx").exists()
    model, processor = cli.load_explainer(str(tiny_run))
    inputs = inputs_for(model, processor, TEXTS)
    with torch.no_grad():
        expected = model(**inputs).logits.numpy()
    np.testing.assert_allclose(MmsaOnnxModel.from_pretrained(folder)(**inputs), expected, atol=1e-4, rtol=0)


def test_predict_and_evaluate_with_the_onnx_backend(tiny_run, tmp_path):
    """`--backend onnx` gives the PyTorch pipeline's records, row for row (float32), and its metrics."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = cli.run(["export-onnx", "--model", str(tiny_run), "--output", str(tmp_path / "onnx")])
    image = tmp_path / "photo.png"
    Image.new("RGB", (60, 40), (200, 30, 30)).save(image)
    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        "".join(
            json.dumps({"id": i, "text": text, "image": "photo.png"}) + "\n" for i, text in enumerate(TEXTS + [""])
        )
    )
    outputs = {}
    for backend, model in (("torch", tiny_run), ("onnx", folder)):
        out = tmp_path / f"{backend}.jsonl"
        counts = cli.run(
            ["predict", "--model", str(model), "--backend", backend, "--input", str(posts), "--output", str(out),
             "--all_scores"]
        )  # fmt: skip
        assert counts["predicted"] == 5 and counts["errors"] == 1
        outputs[backend] = [json.loads(line) for line in out.read_text().splitlines()]
    for torch_row, onnx_row in zip(outputs["torch"], outputs["onnx"]):
        assert torch_row.keys() == onnx_row.keys() and torch_row.get("error") == onnx_row.get("error")
        for a, b in zip(torch_row.get("scores", []), onnx_row.get("scores", [])):
            assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    single = cli.run(["predict", "--model", str(folder), "--backend", "onnx", "--text", "i love this", "--image",
                      str(image)])  # fmt: skip
    assert single[0]["label"] in {"negative", "neutral", "positive"}
    dataset = json.loads((tiny_run / "run_info.json").read_text())["dataset"]
    metrics = {
        backend: cli.run(["evaluate", "--model", str(model), "--dataset", dataset, "--backend", backend])
        for backend, model in (("torch", tiny_run), ("onnx", folder))
    }
    assert metrics["onnx"] == pytest.approx(metrics["torch"])
    with pytest.raises(SystemExit):
        cli.run(["predict", "--model", str(tiny_run), "--backend", "onnx", "--text", "hi", "--image", str(image)])


PRETRAINED_CFGS = {
    "lite0": {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.5,) * 3,
              "std": (0.5,) * 3, "crop_mode": "center"},
    "lite2": {"input_size": (3, 260, 260), "crop_pct": 0.89, "interpolation": "bicubic", "mean": (0.5,) * 3,
              "std": (0.5,) * 3, "crop_mode": "center"},
    "resnet50": {"input_size": (3, 224, 224), "crop_pct": 0.95, "interpolation": "bilinear",
                 "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_mode": "center"},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PRETRAINED_CFGS))
@pytest.mark.parametrize("fast_decode", [False, True])
def test_numpy_image_processor_gives_the_pixels_of_the_timm_one(name, fast_decode, tmp_path):
    from mmsa import MmsaImageProcessor
    from mmsa.onnx_runtime import NumpyImageProcessor

    rng = np.random.default_rng(0)
    images = []
    for i, (width, height) in enumerate([(640, 480), (300, 900), (257, 256), (224, 224), (100, 61), (1023, 767)]):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        images.append(str(path))
    images.append(Image.new("RGBA", (320, 200), (10, 200, 30, 128)))  # composited onto white by both
    reference = MmsaImageProcessor(pretrained_cfg=PRETRAINED_CFGS[name], fast_decode=fast_decode)
    expected = reference(images)["pixel_values"].numpy()
    reference.save_pretrained(tmp_path / "saved")
    pixels = NumpyImageProcessor.from_pretrained(tmp_path / "saved")(images)["pixel_values"]
    assert pixels.dtype == np.float32 and pixels.shape == expected.shape
    np.testing.assert_array_equal(pixels, expected)


TORCH_FREE = """
import json, sys
for name in ("torch", "torchvision", "timm"):
    sys.modules[name] = None  # importing any of them now fails, and transformers sees no torch
import mmsa
from mmsa import cli
assert not mmsa.TORCH_AVAILABLE
folder, posts, out = sys.argv[1:4]
classifier = mmsa.load_classifier(folder, backend="onnx")
records = classifier([json.loads(line) for line in open(posts)], top_k=None)
in_pairs = classifier([json.loads(line) for line in open(posts)], top_k=None, batch_size=2)  # batched by length
counts = cli.run(["predict", "--model", folder, "--backend", "onnx", "--input", posts, "--output", out, "--all_scores"])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm") and sys.modules[m])
print(json.dumps({"records": records, "in_pairs": in_pairs, "counts": counts, "loaded": loaded}))
"""


def test_an_onnx_folder_runs_without_torch(tiny_run, tmp_path):
    """Loading and running an export needs onnxruntime, the tokenizer and the numpy image processor only: the
    records equal the PyTorch pipeline's."""
    import subprocess
    import sys

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = cli.run(["export-onnx", "--model", str(tiny_run), "--output", str(tmp_path / "onnx")])
    Image.new("RGB", (90, 60), (20, 160, 220)).save(tmp_path / "photo.jpg")
    posts = tmp_path / "posts.jsonl"
    rows = [{"text": text, "image": str(tmp_path / "photo.jpg")} for text in TEXTS]
    posts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = subprocess.run(
        [sys.executable, "-c", TORCH_FREE, str(folder), str(posts), str(tmp_path / "out.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["loaded"] == [] and result["counts"]["predicted"] == len(TEXTS)
    expected = cli.load_classifier(str(tiny_run))(rows, top_k=None)
    for got, want in [*zip(result["records"], expected, strict=True), *zip(result["in_pairs"], expected, strict=True)]:
        assert [r["label"] for r in got] == [r["label"] for r in want]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-5)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [row["scores"] for row in written] == result["records"]  # the CLI and the classifier agree


def test_int8_agrees_with_float32_on_a_real_trained_model(mvsa_single_dir, tmp_path):
    """The main job's towers (MiniLM-L6, EfficientNet-Lite0) with `cmac`, trained for three epochs on the real
    MVSA-Single train split: dynamic int8 predicts the float32 label on at least 97% of a fixed sample of 200 test
    posts (measured: 99.0%, and 98.7% on all 452; a model trained on 800 posts only agreed on 96.0%)."""
    import train_hf
    from mmsa.data import load_mvsa
    from mmsa.onnx_runtime import OnnxSentimentClassifier

    root = Path(__file__).resolve().parents[1]
    train_hf.main(
        [
            str(root / "configs" / "offline_minilm_effnet.yaml"),
            "--text_model_name_or_path", str(root / "backbones" / "text"),
            "--vision_model_name_or_path", str(root / "backbones" / "vision"),
            "--dataset_name_or_path", str(mvsa_single_dir),
            "--output_dir", str(tmp_path / "run"),
            "--fusion", "cmac", "--max_eval_samples", "200", "--num_train_epochs", "3",
            "--disable_tqdm", "true", "--save_total_limit", "1",
        ]
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(tmp_path / "run", tmp_path / "onnx", quantize="int8")
    sample = load_mvsa(mvsa_single_dir)["test"].select(range(200))
    posts = [{"text": row["text"], "image": row["image"]} for row in sample]
    labels = {
        variant: [r[0]["label"] for r in OnnxSentimentClassifier(tmp_path / "onnx", variant=variant)(posts)]
        for variant in ("float32", "int8")
    }
    agreement = np.mean([a == b for a, b in zip(labels["float32"], labels["int8"])])
    assert agreement >= 0.97, agreement
    assert len(set(labels["float32"])) > 1  # a trained model, not a constant one
