"""ONNX export: every fusion exports, float32 logits equal PyTorch's, int8 runs, the folder is self-describing."""

import json
import warnings

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
    assert int8.shape == expected.shape and np.abs(int8 - expected).max() < 0.2
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
