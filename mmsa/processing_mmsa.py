"""Processor for MMSA models: a tokenizer for the text and timm transforms for the image."""

import io
import os
from typing import Any

import numpy as np
import timm.data
import torch
from PIL import Image, ImageOps
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin


EXIF_ORIENTATION = 0x0112
HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")

IMAGE_LOADER_VERSION = 2
"""Bumped whenever `load_rgb_image` can return other pixels for the same input (part of feature-cache keys)."""

DEFAULT_IMAGE_TIMEOUT = 10.0
"""Seconds an image URL may take to arrive, in all, before `load_rgb_image` gives up."""

MAX_IMAGE_DOWNLOAD_BYTES = 64 * 1024 * 1024


def fetch_url(url: str, timeout: float = DEFAULT_IMAGE_TIMEOUT) -> bytes:
    """The body of an http(s) URL; raises `OSError` saying what went wrong (`HTTP 404`, a refused connection) or
    `TimeoutError`. Each wait for the server is bounded by `timeout`, and so is the whole download, checked between
    chunks, so that neither a silent nor a trickling server can hold a caller for long."""
    import time
    import urllib.error
    import urllib.request

    if timeout is None or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "mmsa"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            chunks, size = [], 0
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                chunk = response.read(1 << 16)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > MAX_IMAGE_DOWNLOAD_BYTES:
                    raise OSError(f"{url}: more than {MAX_IMAGE_DOWNLOAD_BYTES} bytes, not an image to classify")
                chunks.append(chunk)
    except urllib.error.HTTPError as error:
        raise OSError(f"{url}: HTTP {error.code} {error.reason}") from None
    except TimeoutError as error:  # also socket.timeout
        raise TimeoutError(f"{url}: no complete answer within {timeout:g} s") from error
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise TimeoutError(f"{url}: no complete answer within {timeout:g} s") from error
        raise OSError(f"{url}: {error.reason}") from error


def is_url(location) -> bool:
    return isinstance(location, str) and location.startswith(("http://", "https://"))


def check_unicode(text: str, what: str = "text") -> str:
    """`text`, if it is valid Unicode (encodable as UTF-8); a `ValueError` naming the position of an unpaired
    surrogate (what undecodable bytes become in Python) otherwise. Tokenizers fail obscurely on such text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{what} is not valid Unicode (unpaired surrogate at position {error.start})") from None
    return text


def load_rgb_image(image, timeout: float = DEFAULT_IMAGE_TIMEOUT) -> Image.Image:
    """Opens `image` as an upright RGB PIL image: the one loader of training, the feature cache, the processor,
    the pipeline and the CLI, so that a post gives the same pixels on every route.

    `image` is a PIL image, a file path, an http(s) URL (fetched within `timeout` seconds), raw bytes, a binary file
    object, or an `{"bytes"/"path"}` dict as `datasets` stores images. The EXIF orientation is applied (a phone
    photo comes out upright); palette and alpha images are composited onto white, CMYK and greyscale are converted,
    and 16-bit / 32-bit greyscale is rescaled to 8 bits from its own value range.
    """
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if is_url(image):
        image = fetch_url(image, timeout)
    if isinstance(image, (bytes, bytearray)):
        image = io.BytesIO(image)
    if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
        raise FileNotFoundError(f"image file {image} does not exist")
    if isinstance(image, (str, os.PathLike)) or hasattr(image, "read"):
        with Image.open(image) as opened:
            opened.load()
            return load_rgb_image(opened.copy() if opened.mode == "RGB" else opened)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image, a file path, a URL or image bytes, got {type(image).__name__}.")
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        return Image.fromarray(scaled.round().astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


class MmsaImageProcessor(BaseImageProcessor):
    r"""
    Turns images into `pixel_values` with the transforms timm derives from the image tower's pretrained config.

    Args:
        pretrained_cfg (`dict`):
            The tower's timm `pretrained_cfg` (`input_size`, `mean`, `std`, `crop_pct`, `crop_mode`,
            `interpolation`); `MmsaProcessor.from_model_config` takes it from `MmsaConfig.vision_config`.
        architecture (`str`, *optional*):
            The timm architecture name, kept for reference.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, pretrained_cfg: dict[str, Any] | None = None, architecture: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if pretrained_cfg is None:
            raise ValueError("MmsaImageProcessor needs the image tower's timm `pretrained_cfg`.")
        self.pretrained_cfg = dict(pretrained_cfg)
        self.architecture = architecture
        data_config = timm.data.resolve_data_config(pretrained_cfg=self.pretrained_cfg, verbose=False)
        # JSON turns tuples into lists; timm's own configs use tuples.
        data_config = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
        self._eval_transform = timm.data.create_transform(**data_config, is_training=False)
        self._train_transform = timm.data.create_transform(**data_config, is_training=True)
        self._data_config = data_config

    @property
    def data_config(self) -> dict[str, Any]:
        """timm's resolved data config: input_size, interpolation, mean, std, crop_pct, crop_mode."""
        return dict(self._data_config)

    @property
    def eval_transform(self):
        """Deterministic resize + centre crop + normalise (timm's eval transform)."""
        return self._eval_transform

    @property
    def train_transform(self):
        """Augmenting transform for training (timm's train transform: random resized crop, flip, colour jitter)."""
        return self._train_transform

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for key in ("_eval_transform", "_train_transform", "_data_config"):
            output.pop(key, None)
        return output

    def preprocess(self, images, return_tensors="pt", training: bool = False, **kwargs) -> BatchFeature:
        """`images`: one image or a list (PIL images of any mode, or file paths). `training=True` augments."""
        if return_tensors not in ("pt", None):
            raise ValueError(
                f"MmsaImageProcessor returns PyTorch tensors only, got return_tensors={return_tensors!r}."
            )
        if not isinstance(images, (list, tuple)):
            images = [images]
        transform = self._train_transform if training else self._eval_transform
        pixel_values = torch.stack([transform(load_rgb_image(image)) for image in images])
        return BatchFeature({"pixel_values": pixel_values}, tensor_type="pt")


class MmsaProcessor(ProcessorMixin):
    r"""
    Wraps a tokenizer and an `MmsaImageProcessor`: `processor(text=..., images=...)` gives every input an MMSA model
    takes (`input_ids`, `attention_mask`, `token_type_ids` where the tokenizer makes them, `pixel_values`).

    Args:
        image_processor (`MmsaImageProcessor`): the image transforms.
        tokenizer (`PreTrainedTokenizerBase`): the text tower's tokenizer.
        max_length (`int`, *optional*, defaults to 128): texts are truncated to this many tokens.
    """

    def __init__(self, image_processor=None, tokenizer=None, max_length: int = 128, **kwargs):
        self.max_length = max_length
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_model_config(cls, config, tokenizer, max_length: int = 128):
        """Builds the processor for an `MmsaConfig` (its vision tower's pretrained config) and a tokenizer."""
        vision_config = config.vision_config
        # The architecture's default timm pretrained_cfg, overridden by what the tower's config carries.
        default = timm.models.get_pretrained_cfg(vision_config.architecture)
        pretrained_cfg = default.to_dict() if default is not None else {}
        pretrained_cfg.update(getattr(vision_config, "pretrained_cfg", None) or {})
        image_processor = MmsaImageProcessor(pretrained_cfg=pretrained_cfg, architecture=vision_config.architecture)
        return cls(image_processor=image_processor, tokenizer=tokenizer, max_length=max_length)

    def __call__(
        self,
        text: str | list[str] | None = None,
        images=None,
        padding: bool | str = True,
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str = "pt",
        training: bool = False,
        **kwargs,
    ) -> BatchFeature:
        if text is None and images is None:
            raise ValueError("MmsaProcessor needs `text`, `images` or both.")
        encoding = {}
        if text is not None and not isinstance(text, str):
            text = list(text)  # any sequence, e.g. a `datasets` column
        if (
            images is not None
            and not isinstance(images, (list, tuple))
            and hasattr(images, "__len__")
            and not isinstance(images, (str, bytes, dict, Image.Image))
        ):
            images = list(images)
        if text is not None:
            for index, item in enumerate([text] if isinstance(text, str) else text):
                if isinstance(item, str):
                    check_unicode(item, "text" if isinstance(text, str) else f"text {index}")
            encoding.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length or self.max_length,
                    return_tensors=return_tensors,
                    **kwargs,
                )
            )
        if images is not None:
            encoding.update(self.image_processor(images, return_tensors=return_tensors, training=training))
        return BatchFeature(encoding, tensor_type=return_tensors)

    @property
    def model_input_names(self):
        return list(self.tokenizer.model_input_names) + ["pixel_values"]


__all__ = ["MmsaImageProcessor", "MmsaProcessor", "load_rgb_image"]
