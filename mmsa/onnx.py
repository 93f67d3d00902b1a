"""ONNX export of an MMSA model, with an optional dynamic-int8 variant, and an ONNX Runtime model that runs it.

```python
from mmsa.onnx import MmsaOnnxModel, export_onnx

export_onnx("runs/offline_minilm_effnet", "onnx/", quantize="int8")
model = MmsaOnnxModel.from_pretrained("onnx/", variant="int8")
logits = model(**processor(text=[...], images=[...]))        # numpy (batch, num_labels)
```

The export is one graph (text tower, image tower and fusion: `input_ids`, `attention_mask`, [`token_type_ids`],
`pixel_values` in, `logits` out, calibrated by the model's temperature; with modality heads also `text_logits` and
`image_logits`), made by `torch.onnx.export(..., dynamo=True)` (the `torch.export` exporter):
the legacy TorchScript exporter traces `nn.MultiheadAttention`'s reshapes with the example's batch size baked in,
so its graphs fail on other batch sizes, and Optimum would need a custom ONNX config for this architecture. Batch
size and text length are dynamic; the image size is the processor's (fixed by its centre crop). One graph keeps
the runtime a single call; the feature cache is a training-time device and does not apply to serving.

`quantize="int8"` adds `model_int8.onnx`: ONNX Runtime dynamic quantisation of the matrix multiplications (int8
weights, one scale per output channel; activations quantised on the fly; no calibration data needed). The image
tower's convolutions stay float32 (how the variants compare in agreement and speed is measured in the README's ONNX
section). The output folder also holds the processor files, `config.json` and `onnx_manifest.json` (inputs,
outputs, dtypes, dynamic axes, opset, files).
"""

import json
from pathlib import Path

import torch

from .file_utils import atomic_folder, check_output_folder, is_inside
from .onnx_runtime import MANIFEST, MmsaOnnxModel, NumpyImageProcessor, OnnxSentimentClassifier


FILES = {"float32": "model.onnx", "int8": "model_int8.onnx"}


def onnx_input_names(config, tokenizer) -> list[str]:
    """The graph's inputs for a model config and its tokenizer, in order."""
    names = []
    if config.uses_text:
        names += [
            name for name in ("input_ids", "attention_mask", "token_type_ids") if name in tokenizer.model_input_names
        ]
    if config.uses_vision:
        names.append("pixel_values")
    return names


class OnnxOutputs(torch.nn.Module):
    """The exported computation: the model's inputs in, `logits` (and with modality heads `text_logits`,
    `image_logits`) out, as a tuple the exporter can name."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        outputs = self.inner(**inputs, pixel_values=pixel_values)
        if self.inner.config.modality_heads:
            return outputs.logits, outputs.text_logits, outputs.image_logits
        return outputs.logits


def output_names(config) -> list[str]:
    return ["logits", "text_logits", "image_logits"] if config.modality_heads else ["logits"]


def export_graph(model, example: dict, names: list[str], opset: int):
    """`torch.onnx.export(..., dynamo=True)` of the model with a dynamic batch and text length; ValueError naming
    the fusion and the operator when it cannot be exported."""
    import torch

    config = model.config
    batch = torch.export.Dim("batch", min=1, max=4096)
    sequence = torch.export.Dim(
        "sequence", min=1, max=config.text_config.max_position_embeddings if config.uses_text else 2
    )
    dynamic = {name: ({0: batch, 1: sequence} if name != "pixel_values" else {0: batch}) for name in names}
    try:
        return torch.onnx.export(
            OnnxOutputs(model).eval(),
            (),
            kwargs=example,
            input_names=names,
            output_names=output_names(config),
            dynamic_shapes=dynamic,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    except Exception as error:  # the exporter's message names the operator it could not convert
        raise ValueError(
            f"fusion {config.fusion!r} cannot be exported to ONNX: {type(error).__name__}: {error}"
        ) from error


def manifest_for(config, example: dict, names: list[str], opset: int, files: dict, quantize) -> dict:
    """What `onnx_manifest.json` says of an export: inputs, outputs, dtypes, dynamic axes, opset, files, labels."""
    import torch

    return {
        "inputs": [
            {
                "name": name,
                "dtype": str(example[name].dtype).replace("torch.", ""),
                "shape": ["batch", "sequence"] if name != "pixel_values" else ["batch", *example[name].shape[1:]],
            }
            for name in names
        ],
        "outputs": [
            {"name": name, "dtype": "float32", "shape": ["batch", config.num_labels]} for name in output_names(config)
        ],
        "dynamic_axes": {"batch": "every input's first axis", "sequence": "the text inputs' second axis"},
        "opset": opset,
        "files": files,
        "fusion": config.fusion,
        "id2label": {str(k): v for k, v in config.id2label.items()},
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "quantization": "onnxruntime dynamic int8 of MatMul/Gemm (QInt8 weights, per channel)" if quantize else None,
    }


def export_onnx(
    model, output_dir, quantize: str | None = None, opset: int = 18, processor=None, overwrite: bool = False
) -> Path:
    """Exports `model` (a folder, a Hub id or an `MmsaForSequenceClassification`; give `processor` with an object)
    to `output_dir`; returns the folder. Raises ValueError naming the fusion and the operator if the export fails.

    The export is written to a folder beside `output_dir` and moved into place once complete, so graph, manifest
    and processor always belong together; a non-empty `output_dir` is refused unless `overwrite` (then replaced as a
    whole, only when the new export is complete)."""
    from PIL import Image
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}.")
    output_dir = check_output_folder(output_dir, overwrite=overwrite)
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        if is_inside(output_dir, model) or is_inside(model, output_dir):
            raise ValueError(f"--output {output_dir} overlaps the model folder {model}: choose a new folder")
    if isinstance(model, (str, Path)):
        processor = processor or AutoProcessor.from_pretrained(model)
        model = AutoModelForSequenceClassification.from_pretrained(model)
    elif processor is None:
        raise ValueError("export_onnx needs the processor along with a model object.")
    model = model.eval().float()
    config = model.config
    names = onnx_input_names(config, processor.tokenizer)
    example = processor(
        text=["an example post", "another, somewhat longer example post"] if config.uses_text else None,
        images=[Image.new("RGB", (64, 48), (200, 120, 40))] * 2 if config.uses_vision else None,
    )
    example = {name: example[name] for name in names}
    program = export_graph(model, example, names, opset)
    with atomic_folder(output_dir, overwrite=overwrite) as staging:
        program.save(str(staging / FILES["float32"]))
        files = {"float32": FILES["float32"]}
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(
                staging / FILES["float32"],
                staging / FILES["int8"],
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
            )
            files["int8"] = FILES["int8"]
        config.save_pretrained(staging)
        processor.save_pretrained(staging)
        manifest = manifest_for(config, example, names, opset, files, quantize)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return output_dir


__all__ = ["MmsaOnnxModel", "NumpyImageProcessor", "OnnxSentimentClassifier", "export_onnx", "onnx_input_names"]
