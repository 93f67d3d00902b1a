"""On-disk cache of frozen towers' outputs.

A frozen tower's output for a post never changes, so it is computed once and reused in every epoch and every run.
One cache file holds one dataset split's features from one tower: for the image tower its pooled features `(N, C)`
and, for fusions that use them, its feature-map tokens `(N, h*w, C)` (computed with the deterministic eval
transform); for the text tower its pooled features `(N, H)` and token states `(N, L, H)` with their lengths. A file
is keyed by

- the tower: a hash of its config (architecture, pooling) and every weight and buffer,
- the preprocessing: timm's resolved data config, or the tokenizer's vocabulary and the maximum length,
- the inputs: a hash of every image's bytes or every text, in order,

so changing any of them computes new features instead of reusing stale ones. Each file stores a SHA-256 of every
tensor in its metadata and is verified when a run opens it: a damaged file is named, deleted and recomputed.
"""

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from datasets import Image as ImageFeature
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .processing_mmsa import IMAGE_LOADER_VERSION, load_rgb_image


logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MMSA_CACHE", Path.home() / ".cache" / "mmsa")) / "features"


def _digest(*parts):
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return digest


def tower_fingerprint(tower, settings: dict) -> str:
    """Hash of a tower's weights and buffers plus the settings that shape its inputs and outputs."""
    digest = _digest(settings)
    for name, tensor in sorted(tower.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def images_fingerprint(split) -> str:
    digest = _digest("images")
    for image in split.cast_column("image", ImageFeature(decode=False))["image"]:
        data = image["bytes"] if image["bytes"] is not None else Path(image["path"]).read_bytes()
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:24]


def texts_fingerprint(split) -> str:
    digest = _digest("texts")
    for text in split["text"]:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:24]


class CachedFeatures:
    """Feature rows of one split, read lazily from a safetensors file (each dataloader worker opens its own).

    `kind="image"` gives `image_features` (+ `image_tokens`); `kind="text"` gives `text_features` (+ `text_tokens`
    trimmed to each post's length, with its `attention_mask`).
    """

    def __init__(self, path: Path, kind: str, with_tokens: bool):
        self.path, self.kind, self.with_tokens = Path(path), kind, with_tokens
        self._file = None

    def rows(self, indices) -> dict[str, list]:
        if self._file is None:
            self._file = safe_open(str(self.path), framework="pt")
        indices = [int(i) for i in indices]
        out = {f"{self.kind}_features": [self._file.get_slice("pooled")[i] for i in indices]}
        if self.with_tokens:
            tokens = [self._file.get_slice("tokens")[i] for i in indices]
            if self.kind == "text":
                lengths = [int(self._file.get_slice("lengths")[i]) for i in indices]
                tokens = [t[:n] for t, n in zip(tokens, lengths)]
                out["attention_mask"] = [[1] * n for n in lengths]
            out[f"{self.kind}_tokens"] = tokens
        return out

    def __getstate__(self):  # picklable for dataloader workers and datasets fingerprinting
        return {"path": self.path, "kind": self.kind, "with_tokens": self.with_tokens, "_file": None}


def progress(total: int, desc: str):
    """A progress bar over posts (posts/s and ETA), shown on the main process only."""
    main_process = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0
    return tqdm(total=total, desc=desc, unit="post", disable=not main_process, mininterval=2.0)


@torch.no_grad()
def compute_image_features(
    mmsa_model, image_processor, split, with_tokens: bool, batch_size: int = 64, desc: str = "image features"
):
    """Runs the image tower over a split with the eval transform: `{"pooled", "tokens"?}`."""
    mmsa_model.eval()
    device = next(mmsa_model.vision_model.parameters()).device
    pooled, tokens = [], []
    bar = progress(len(split), desc)
    for start in range(0, len(split), batch_size):
        images = split[start : start + batch_size]["image"]
        pixels = torch.stack([image_processor.eval_transform(load_rgb_image(image)) for image in images])
        batch_pooled, batch_tokens = mmsa_model.encode_image(pixels.to(device))
        pooled.append(batch_pooled.float().cpu())
        if with_tokens:
            tokens.append(batch_tokens.float().cpu())
        bar.update(len(images))
    bar.close()
    result = {"pooled": torch.cat(pooled)}
    if with_tokens:
        result["tokens"] = torch.cat(tokens)
    return result


@torch.no_grad()
def compute_text_features(
    mmsa_model, tokenizer, split, max_length: int, with_tokens: bool, batch_size: int = 64, desc: str = "text features"
):
    """Runs the text tower over a split: `{"pooled", "tokens"?, "lengths"?}`, tokens zero-padded to the longest."""
    mmsa_model.eval()
    device = next(mmsa_model.text_model.parameters()).device
    pooled, tokens, lengths = [], [], []
    bar = progress(len(split), desc)
    for start in range(0, len(split), batch_size):
        texts = list(split[start : start + batch_size]["text"])
        encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        encoded = {k: v.to(device) for k, v in encoded.items()}
        batch_pooled, batch_tokens = mmsa_model.encode_text(
            encoded["input_ids"], encoded["attention_mask"], encoded.get("token_type_ids")
        )
        pooled.append(batch_pooled.float().cpu())
        if with_tokens:
            tokens.extend(batch_tokens.float().cpu().unbind(0))
            lengths.append(encoded["attention_mask"].sum(dim=1).cpu())
        bar.update(len(texts))
    bar.close()
    result = {"pooled": torch.cat(pooled)}
    if with_tokens:
        result["tokens"] = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)  # to the longest in the split
        result["lengths"] = torch.cat(lengths)
    return result


def tensor_checksum(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def verify_cache_file(path: Path) -> str | None:
    """`None` if every tensor of the cache file matches the checksum stored with it, else what is wrong."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = list(handle.keys())
            if not names or any(f"sha256:{name}" not in metadata for name in names):
                return "no checksums stored"
            for name in names:
                if tensor_checksum(handle.get_tensor(name)) != metadata[f"sha256:{name}"]:
                    return f"tensor {name!r} does not match its checksum"
    except Exception as error:  # truncated or overwritten file: safetensors cannot parse it
        return f"unreadable ({type(error).__name__}: {error})"
    return None


def _cached(path: Path, compute, kind: str, with_tokens: bool) -> CachedFeatures:
    if path.is_file():
        problem = verify_cache_file(path)
        if problem is None:
            logger.info("Reusing cached %s features %s", kind, path)
            return CachedFeatures(path, kind, with_tokens)
        logger.warning("Cached %s features %s are damaged (%s): deleting and recomputing them.", kind, path, problem)
        path.unlink(missing_ok=True)
    logger.info("Computing frozen %s features -> %s", kind, path)
    tensors = {name: tensor.contiguous() for name, tensor in compute().items()}
    metadata = {f"sha256:{name}": tensor_checksum(tensor) for name, tensor in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)  # atomic: a killed run never leaves a half-written cache
    return CachedFeatures(path, kind, with_tokens)


def _reuse_token_file(path_with_tokens: Path, kind: str) -> CachedFeatures | None:
    """A pooled-only request served from an existing, intact file that holds tokens too (its `pooled` tensor)."""
    if path_with_tokens.is_file() and verify_cache_file(path_with_tokens) is None:
        logger.info("Reusing cached %s features %s (pooled features only)", kind, path_with_tokens)
        return CachedFeatures(path_with_tokens, kind, with_tokens=False)
    return None


def cache_image_features(
    mmsa_model, image_processor, split, with_tokens: bool, cache_dir=None, desc: str = "image features"
) -> CachedFeatures:
    """The frozen image tower's features of `split`, computed on first use."""
    tower = mmsa_model.vision_model

    def path(tokens: bool) -> Path:
        key = tower_fingerprint(
            tower,
            {
                "architecture": tower.config.architecture,
                "data": image_processor.data_config,
                "tokens": tokens,
                "loader": IMAGE_LOADER_VERSION,
            },
        )
        return Path(cache_dir or default_cache_dir()) / "image" / key / f"{images_fingerprint(split)}.safetensors"

    if not with_tokens and (reused := _reuse_token_file(path(True), "image")):
        return reused
    return _cached(
        path(with_tokens),
        lambda: compute_image_features(mmsa_model, image_processor, split, with_tokens, desc=desc),
        "image",
        with_tokens,
    )


def cache_text_features(
    mmsa_model, tokenizer, split, max_length: int, with_tokens: bool, cache_dir=None, desc: str = "text features"
) -> CachedFeatures:
    """The frozen text tower's features of `split`, computed on first use."""
    vocabulary = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()

    def path(tokens: bool) -> Path:
        key = tower_fingerprint(
            mmsa_model.text_model,
            {
                "pooling": mmsa_model.config.text_pooling,
                "vocabulary": vocabulary,
                "max_length": max_length,
                "lower_case": getattr(tokenizer, "do_lower_case", None),
                "tokens": tokens,
                "attention": mmsa_model.text_model.config._attn_implementation,
            },
        )
        return Path(cache_dir or default_cache_dir()) / "text" / key / f"{texts_fingerprint(split)}.safetensors"

    if not with_tokens and (reused := _reuse_token_file(path(True), "text")):
        return reused
    return _cached(
        path(with_tokens),
        lambda: compute_text_features(mmsa_model, tokenizer, split, max_length, with_tokens, desc=desc),
        "text",
        with_tokens,
    )
