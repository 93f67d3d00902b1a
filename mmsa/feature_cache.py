"""On-disk cache of a frozen image tower's outputs.

When the vision backbone is frozen its output for an image never changes, so it is computed once (with the
deterministic eval transform) and reused in every epoch and every run. A cache file holds the pooled features
`(N, C)` and, for fusions that use them, the feature-map tokens `(N, h*w, C)` of one dataset split. It is keyed by

- the tower: a hash of its architecture and every weight and buffer,
- the transform: timm's resolved data config (size, crop, interpolation, mean, std),
- the images: a hash of every image's bytes, in order,

so changing any of them computes new features instead of reusing stale ones.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from datasets import Image as ImageFeature

from .processing_mmsa import load_rgb_image


logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMSA_CACHE", Path.home() / ".cache" / "mmsa")) / "image_features"


def tower_fingerprint(vision_model, data_config: dict, with_tokens: bool) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"architecture": vision_model.config.architecture, "data": data_config,
                              "tokens": with_tokens}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vision_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def images_fingerprint(split) -> str:
    digest = hashlib.sha256()
    raw = split.cast_column("image", ImageFeature(decode=False))
    for image in raw["image"]:
        data = image["bytes"] if image["bytes"] is not None else Path(image["path"]).read_bytes()
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:24]


class CachedImageFeatures:
    """Feature rows of one split, read lazily from a safetensors file (each dataloader worker opens its own)."""

    def __init__(self, path: Path, with_tokens: bool):
        self.path = Path(path)
        self.with_tokens = with_tokens
        self._file = None

    def rows(self, indices) -> dict[str, list[torch.Tensor]]:
        if self._file is None:
            self._file = safe_open(str(self.path), framework="pt")
        out = {"image_features": [self._file.get_slice("pooled")[int(i)] for i in indices]}
        if self.with_tokens:
            out["image_tokens"] = [self._file.get_slice("tokens")[int(i)] for i in indices]
        return out

    def __getstate__(self):  # picklable for dataloader workers and datasets fingerprinting
        return {"path": self.path, "with_tokens": self.with_tokens, "_file": None}


@torch.no_grad()
def compute_image_features(vision_model, image_processor, split, with_tokens: bool, batch_size: int = 64):
    """Runs the tower over a split's images with the eval transform; returns `{"pooled", "tokens"?}` tensors."""
    vision_model.eval()
    device = next(vision_model.parameters()).device
    pooled, tokens = [], []
    for start in range(0, len(split), batch_size):
        images = split[start : start + batch_size]["image"]
        pixels = torch.stack([image_processor.eval_transform(load_rgb_image(image)) for image in images]).to(device)
        output = vision_model(pixel_values=pixels)
        pooled.append(output.pooler_output.float().cpu())
        if with_tokens:
            feature_map = output.last_hidden_state
            feature_map = feature_map.flatten(2).transpose(1, 2) if feature_map.ndim == 4 else feature_map
            tokens.append(feature_map.float().cpu())
    result = {"pooled": torch.cat(pooled).contiguous()}
    if with_tokens:
        result["tokens"] = torch.cat(tokens).contiguous()
    return result


def cache_split_features(vision_model, image_processor, split, with_tokens: bool, cache_dir=None,
                         is_main_process: bool = True, wait=None) -> CachedImageFeatures:
    """Returns the cached features of `split`, computing and writing them first if no valid cache exists.

    In distributed runs only the main process computes; the others `wait()` (a barrier) and then read the file.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    key = tower_fingerprint(vision_model, image_processor.data_config, with_tokens)
    path = cache_dir / key / f"{images_fingerprint(split)}.safetensors"
    if is_main_process and not path.is_file():
        logger.info("Computing frozen image features for %d images -> %s", len(split), path)
        tensors = compute_image_features(vision_model, image_processor, split, with_tokens)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        save_file(tensors, str(partial), metadata={"rows": str(len(split))})
        partial.replace(path)  # atomic: a killed run never leaves a half-written cache
    elif path.is_file():
        logger.info("Reusing cached image features %s", path)
    if wait is not None:
        wait()
    return CachedImageFeatures(path, with_tokens)
