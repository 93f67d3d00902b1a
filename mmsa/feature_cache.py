"""On-disk cache of frozen towers' outputs, per post.

A frozen tower's output for a post never changes, so it is computed once and reused in every epoch, every run and
every split (a post moved from train to test by another split seed keeps its features). Each tower has a store: a
folder of shards, each a safetensors file holding some posts' features, keyed per post. For the image tower a row is
its pooled features `(C,)` and, for fusions that use them, its feature-map tokens `(h*w, C)` (computed with the
deterministic eval transform); for the text tower its pooled features `(H,)` and token states `(L, H)` with their
length. A store is keyed by

- the tower: a hash of its config (architecture, pooling) and every weight and buffer,
- the preprocessing: timm's resolved data config with the image loader's version and the versions of Pillow and its
  codecs (two Pillow releases can decode a JPEG differently), or the tokenizer's vocabulary and the maximum length,

and a post by a hash of its image's bytes or of its text, so changing any of them computes new features instead of
reusing stale ones. A run computes only the posts no shard holds yet, as one new shard. Each shard stores a SHA-256
of every tensor in its metadata and is verified when a run opens it: a damaged shard is named, deleted and its posts
recomputed. The towers' features do not depend on which posts share a batch (checked in the tests), so a post's
features are the same whichever split computed them first.
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

from .file_utils import atomic_path
from .processing_mmsa import IMAGE_LOADER_VERSION, load_rgb_image
from .text_normalization import normalize_texts


logger = logging.getLogger(__name__)

FEATURE_VERSION = 2
"""Bumped whenever the cached features of a post can change (2: per-post shards, full fixed-shape batches, texts
padded to the maximum length); recorded in the behaviour probe of every benchmark run."""


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


def image_decoder_versions() -> dict:
    """The versions of Pillow and of the codecs it decodes with: two Pillow releases can decode the same JPEG to
    other pixels (Pillow 12 and 13 do), so an image store is keyed by them."""
    import PIL
    from PIL import features

    return {"pillow": PIL.__version__, **{codec: features.version(codec) for codec in ("jpg", "zlib", "webp")}}


def image_keys(split) -> list[str]:
    """One key per row: a hash of the image file's bytes."""
    keys = []
    for image in split.cast_column("image", ImageFeature(decode=False))["image"]:
        data = image["bytes"] if image["bytes"] is not None else Path(image["path"]).read_bytes()
        keys.append(hashlib.sha256(data).hexdigest()[:32])
    return keys


def text_keys(split) -> list[str]:
    """One key per row: a hash of the text."""
    return [hashlib.sha256(text.encode("utf-8")).hexdigest()[:32] for text in split["text"]]


class CachedFeatures:
    """Feature rows of one split, read lazily from the shards of a tower's store (each dataloader worker opens its
    own handles). Row `i` of the split is row `locations[i][1]` of shard `shards[locations[i][0]]`.

    `kind="image"` gives `image_features` (+ `image_tokens`); `kind="text"` gives `text_features` (+ `text_tokens`
    trimmed to each post's length, with its `attention_mask`); `kind="text_hidden"` gives `text_hidden_states` (the
    hidden states entering a partly trained text tower's first trained layer) with their `attention_mask`;
    `kind="vision_hidden"` gives `vision_hidden_states` (the feature map entering a partly trained image tower's
    first trained stage).
    """

    def __init__(self, shards: list[Path], locations: list[tuple[int, int]], kind: str, with_tokens: bool):
        self.shards, self.locations = [Path(shard) for shard in shards], list(locations)
        self.kind, self.with_tokens = kind, with_tokens
        self._files = {}

    def _slice(self, shard: int, name: str):
        if shard not in self._files:
            self._files[shard] = safe_open(str(self.shards[shard]), framework="pt")
        return self._files[shard].get_slice(name)

    def rows(self, indices) -> dict[str, list]:
        where = [self.locations[int(i)] for i in indices]
        if self.kind == "text_hidden":  # a partly trained tower's hidden states, trimmed to each post's length
            lengths = [int(self._slice(s, "lengths")[r]) for s, r in where]
            hidden = [self._slice(s, "tokens")[r][:n] for (s, r), n in zip(where, lengths)]
            return {"text_hidden_states": hidden, "attention_mask": [[1] * n for n in lengths]}
        if self.kind == "vision_hidden":
            return {"vision_hidden_states": [self._slice(s, "feature_map")[r] for s, r in where]}
        out = {f"{self.kind}_features": [self._slice(s, "pooled")[r] for s, r in where]}
        if self.with_tokens:
            tokens = [self._slice(s, "tokens")[r] for s, r in where]
            if self.kind == "text":
                lengths = [int(self._slice(s, "lengths")[r]) for s, r in where]
                tokens = [t[:n] for t, n in zip(tokens, lengths)]
                out["attention_mask"] = [[1] * n for n in lengths]
            out[f"{self.kind}_tokens"] = tokens
        return out

    def __len__(self):
        return len(self.locations)

    def __getstate__(self):  # picklable for dataloader workers and datasets fingerprinting
        return {**self.__dict__, "_files": {}}


def progress(total: int, desc: str):
    """A progress bar over posts (posts/s and ETA), shown on the main process only."""
    main_process = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0
    return tqdm(total=total, desc=desc, unit="post", disable=not main_process, mininterval=2.0)


def full_batch(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`tensor` with its last row repeated up to `batch_size` rows.

    Every batch a tower sees then has the same shape: CPU kernels pick their blocking, and so the order of their sums,
    from the shapes, so a post's features would otherwise change in the last bits with the size of its batch.
    """
    missing = batch_size - len(tensor)
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])]) if missing > 0 else tensor


def image_batches(mmsa_model, image_processor, split, batch_size, desc):
    """The image tower's inputs for a split, batch by batch, with a progress bar: `(posts in the batch, their eval
    transforms filled up to `batch_size`)`, so a post's features do not depend on the other posts of its batch."""
    mmsa_model.eval()
    device = next(mmsa_model.vision_model.parameters()).device
    bar = progress(len(split), desc)
    for start in range(0, len(split), batch_size):
        images = split[start : start + batch_size]["image"]
        pixels = torch.stack([image_processor.eval_transform(load_rgb_image(image)) for image in images])
        yield len(images), full_batch(pixels, batch_size).to(device)
        bar.update(len(images))
    bar.close()


@torch.no_grad()
def compute_image_features(
    mmsa_model, image_processor, split, with_tokens: bool, batch_size: int = 64, desc: str = "image features"
):
    """Runs the image tower over a split with the eval transform: `{"pooled", "tokens"?}`."""
    pooled, tokens = [], []
    for count, pixels in image_batches(mmsa_model, image_processor, split, batch_size, desc):
        batch_pooled, batch_tokens = mmsa_model.encode_image(pixels)
        pooled.append(batch_pooled[:count].float().cpu())
        if with_tokens:
            tokens.append(batch_tokens[:count].float().cpu())
    result = {"pooled": torch.cat(pooled)}
    if with_tokens:
        result["tokens"] = torch.cat(tokens)
    return result


@torch.no_grad()
def compute_vision_hidden_states(
    mmsa_model, image_processor, split, batch_size: int = 64, desc: str = "image feature maps"
):
    """Runs the fixed part of a partly trained image tower (`vision_trainable_blocks`) over a split with the eval
    transform: `{"feature_map"}`, the maps entering its first trained stage."""
    maps = [
        mmsa_model.vision_hidden_states(pixels)[:count].float().cpu()
        for count, pixels in image_batches(mmsa_model, image_processor, split, batch_size, desc)
    ]
    return {"feature_map": torch.cat(maps)}


def text_batches(mmsa_model, tokenizer, split, max_length, batch_size, desc, normalization):
    """The text tower's inputs for a split, batch by batch, with a progress bar: `(posts in the batch, the batch
    padded to `max_length` and filled up to `batch_size`, the posts' token counts)`. Fixed-shape batches keep a post's
    features independent of the other posts of its batch. Texts are normalised first (`normalization`)."""
    mmsa_model.eval()
    device = next(mmsa_model.text_model.parameters()).device
    # Never past the tower's position embeddings (a tiny tower may have fewer than max_length).
    max_length = min(max_length, getattr(mmsa_model.text_model.config, "max_position_embeddings", max_length))
    bar = progress(len(split), desc)
    for start in range(0, len(split), batch_size):
        texts = normalize_texts(list(split[start : start + batch_size]["text"]), normalization)
        encoded = tokenizer(texts, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
        yield (
            len(texts),
            {k: full_batch(v, batch_size).to(device) for k, v in encoded.items()},
            encoded["attention_mask"].sum(dim=1),
        )
        bar.update(len(texts))
    bar.close()


@torch.no_grad()
def compute_text_features(
    mmsa_model,
    tokenizer,
    split,
    max_length: int,
    with_tokens: bool,
    batch_size: int = 64,
    desc: str = "text features",
    normalization: str = "none",
):
    """Runs the text tower over a split: `{"pooled", "tokens"?, "lengths"?}`, tokens zero-padded to the longest.
    Texts are normalised first (`normalization`, as the processor does)."""
    pooled, tokens, lengths = [], [], []
    for count, full, real_lengths in text_batches(
        mmsa_model, tokenizer, split, max_length, batch_size, desc, normalization
    ):
        batch_pooled, batch_tokens = mmsa_model.encode_text(
            full["input_ids"], full["attention_mask"], full.get("token_type_ids")
        )
        pooled.append(batch_pooled[:count].float().cpu())
        if with_tokens:
            tokens.extend(batch_tokens[:count].float().cpu().unbind(0))
            lengths.append(real_lengths)
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


_verified_shards: set[tuple[str, int, int, int]] = set()
"""Shards whose checksums this process has verified, by path, inode, size and modification time: a shard is read for
every split of a run (and every trial of a search), but hashed once unless it changes."""


def verify_shard_once(path: Path) -> str | None:
    """`verify_cache_file`, skipped for a shard this process already found intact and that has not changed since."""
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _verified_shards:
        return None
    problem = verify_cache_file(path)
    if problem is None:
        _verified_shards.add(key)
    return problem


@torch.no_grad()
def compute_text_hidden_states(
    mmsa_model, tokenizer, split, max_length: int, batch_size: int = 64, desc: str = "text hidden states",
    normalization: str = "none",
):  # fmt: skip
    """Runs the fixed part of a partly trained text tower (`text_trainable_layers`) over a split: `{"tokens",
    "lengths"}`, the hidden states entering its first trained layer, zero-padded to the longest. Batches as in
    `compute_text_features` (padded to `max_length`, full), so a post's states do not depend on its batch."""
    hidden, lengths = [], []
    for count, full, real_lengths in text_batches(
        mmsa_model, tokenizer, split, max_length, batch_size, desc, normalization
    ):
        states = mmsa_model.text_hidden_states(full["input_ids"], full["attention_mask"], full.get("token_type_ids"))
        hidden.extend(states[:count].float().cpu().unbind(0))
        lengths.append(real_lengths)
    return {"tokens": torch.nn.utils.rnn.pad_sequence(hidden, batch_first=True), "lengths": torch.cat(lengths)}


def _shard_keys(path: Path) -> tuple[list[str], bool]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        return json.loads(metadata.get("keys", "[]")), "tokens" in handle.keys()


def _cached(store: Path, keys: list[str], compute, kind: str, with_tokens: bool) -> CachedFeatures:
    """The rows of `keys` from the shards of `store`; the posts no intact shard holds are computed (`compute(rows)`
    gets their row numbers) and written as one new shard, atomically."""
    shards, where, wanted = [], {}, set(keys)
    for path in sorted(store.glob("*.safetensors")) if store.is_dir() else []:
        try:
            shard_keys, has_tokens = _shard_keys(path)
            problem = None
        except Exception as error:  # noqa: BLE001 - a shard safetensors cannot parse is a damaged shard
            shard_keys, has_tokens, problem = [], with_tokens, f"unreadable ({type(error).__name__}: {error})"
        if with_tokens and not has_tokens:
            continue
        if problem is None:
            if not any(key in wanted and key not in where for key in shard_keys):
                continue
            problem = verify_shard_once(path)
        if problem is not None:
            logger.warning(
                "Cached %s features %s are damaged (%s): deleting and recomputing them.", kind, path, problem
            )
            path.unlink(missing_ok=True)
            continue
        logger.info("Reusing cached %s features %s", kind, path)
        for row, key in enumerate(shard_keys):
            where.setdefault(key, (len(shards), row))
        shards.append(path)
    missing = sorted({key: row for row, key in enumerate(keys) if key not in where}.values())
    if missing:
        logger.info("Computing frozen %s features of %d posts -> %s", kind, len(missing), store)
        tensors = {name: tensor.contiguous() for name, tensor in compute(missing).items()}
        new_keys = [keys[row] for row in missing]
        metadata = {f"sha256:{name}": tensor_checksum(tensor) for name, tensor in tensors.items()}
        metadata["keys"] = json.dumps(new_keys)
        path = store / f"{_digest(new_keys, with_tokens).hexdigest()[:24]}.safetensors"
        store.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as partial:  # a killed run never leaves a half-written shard
            save_file(tensors, str(partial), metadata=metadata)
        for row, key in enumerate(new_keys):
            where[key] = (len(shards), row)
        shards.append(path)
    return CachedFeatures(shards, [where[key] for key in keys], kind, with_tokens)


def image_store_key(mmsa_model, image_processor, **settings) -> str:
    """The key of an image store: the tower's weights, what the store holds (`settings`) and the preprocessing
    (timm's data config, the image loader's version, the decoders' versions)."""
    tower = mmsa_model.vision_model
    return tower_fingerprint(
        tower,
        {
            **settings,
            "architecture": tower.config.architecture,
            "data": image_processor.data_config,
            "loader": IMAGE_LOADER_VERSION,
            "decoder": image_decoder_versions(),
        },
    )


def cache_image_features(
    mmsa_model, image_processor, split, with_tokens: bool, cache_dir=None, desc: str = "image features"
) -> CachedFeatures:
    """The frozen image tower's features of `split`, each post computed on its first use in any split."""
    key = image_store_key(mmsa_model, image_processor)
    return _cached(
        Path(cache_dir or default_cache_dir()) / "image" / key,
        image_keys(split),
        lambda rows: compute_image_features(mmsa_model, image_processor, split.select(rows), with_tokens, desc=desc),
        "image",
        with_tokens,
    )


def text_store_key(mmsa_model, tokenizer, max_length: int, normalization: str, **settings) -> str:
    """The key of a text store: the tower's weights, what the store holds (`settings`) and the tokenizer settings
    (vocabulary, maximum length, casing, attention implementation, text normalisation)."""
    vocabulary = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
    return tower_fingerprint(
        mmsa_model.text_model,
        {
            **settings,
            "vocabulary": vocabulary,
            "max_length": max_length,
            "lower_case": getattr(tokenizer, "do_lower_case", None),
            "attention": mmsa_model.text_model.config._attn_implementation,
            **({"normalization": normalization} if normalization != "none" else {}),
        },
    )


def cache_text_features(
    mmsa_model,
    tokenizer,
    split,
    max_length: int,
    with_tokens: bool,
    cache_dir=None,
    desc: str = "text features",
    normalization: str = "none",
) -> CachedFeatures:
    """The frozen text tower's features of `split`, each post computed on its first use in any split (its text
    normalised by `normalization` first, which is part of the store's key)."""
    key = text_store_key(mmsa_model, tokenizer, max_length, normalization, pooling=mmsa_model.config.text_pooling)
    return _cached(
        Path(cache_dir or default_cache_dir()) / "text" / key,
        text_keys(split),
        lambda rows: compute_text_features(
            mmsa_model, tokenizer, split.select(rows), max_length, with_tokens, desc=desc, normalization=normalization
        ),
        "text",
        with_tokens,
    )


def cache_text_hidden_states(
    mmsa_model,
    tokenizer,
    split,
    max_length: int,
    cache_dir=None,
    desc: str = "text hidden states",
    normalization: str = "none",
) -> CachedFeatures:
    """The hidden states entering the first trained layer of a partly trained text tower (`text_trainable_layers`),
    per post, for `split`: its embeddings and lower layers are fixed, so only its top layers run in training. The
    store is keyed by the tower's weights, the layer index and the tokenizer settings."""
    key = text_store_key(
        mmsa_model,
        tokenizer,
        max_length,
        normalization,
        hidden_states_entering_layer=mmsa_model.first_trained_text_layer,
    )
    return _cached(
        Path(cache_dir or default_cache_dir()) / "text_hidden" / key,
        text_keys(split),
        lambda rows: compute_text_hidden_states(
            mmsa_model, tokenizer, split.select(rows), max_length, desc=desc, normalization=normalization
        ),
        "text_hidden",
        True,
    )


def cache_vision_hidden_states(
    mmsa_model, image_processor, split, cache_dir=None, desc: str = "image feature maps"
) -> CachedFeatures:
    """The feature maps entering the first trained stage of a partly trained image tower (`vision_trainable_blocks`),
    per post, for `split` (eval transform): its stem and earlier stages are fixed, so only its last stages run in
    training. The store is keyed by the tower's weights, the stage index and the preprocessing."""
    key = image_store_key(
        mmsa_model, image_processor, feature_map_entering_stage=mmsa_model.first_trained_vision_stage
    )
    return _cached(
        Path(cache_dir or default_cache_dir()) / "vision_hidden" / key,
        image_keys(split),
        lambda rows: compute_vision_hidden_states(mmsa_model, image_processor, split.select(rows), desc=desc),
        "vision_hidden",
        False,
    )
