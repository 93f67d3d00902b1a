"""Processor for MMSA models: a tokenizer for the text and timm transforms for the image."""

import math
from collections.abc import Sequence
from typing import Any

import timm
import torch
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.timm_wrapper.image_processing_timm_wrapper import TimmWrapperImageProcessor
from transformers.processing_utils import ImagesKwargs, ProcessingKwargs, ProcessorMixin
from transformers.utils import IMAGE_PROCESSOR_NAME

from .image_io import (  # noqa: F401 - re-exported for the callers of this module
    DEFAULT_IMAGE_TIMEOUT,
    IMAGE_LOADER_VERSION,
    check_unicode,
    fetch_url,
    is_url,
    load_rgb_image,
)
from .text_normalization import TEXT_NORMALIZATIONS, normalize_texts


class MmsaImageProcessor(TimmWrapperImageProcessor):
    r"""
    `TimmWrapperImageProcessor` (timm's transforms from the image tower's pretrained config) for MMSA models, with
    three differences: every image goes through `load_rgb_image` (file paths, bytes and URLs; EXIF orientation;
    any PIL mode), `preprocess(..., training=True)` applies timm's augmenting train transforms, and the processor is
    saved with the rest of the processor (`processor_config.json`) rather than in the model's `config.json`.

    Args:
        pretrained_cfg (`dict`):
            The tower's timm `pretrained_cfg` (`input_size`, `mean`, `std`, `crop_pct`, `crop_mode`,
            `interpolation`); `MmsaProcessor.from_model_config` takes it from `MmsaConfig.vision_config`.
        architecture (`str`, *optional*):
            The timm architecture name, kept for reference.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        pretrained_cfg: dict[str, Any] | None = None,
        architecture: str | None = None,
        fast_decode: bool = False,
        **kwargs,
    ):
        if pretrained_cfg is None:
            raise ValueError("MmsaImageProcessor needs the image tower's timm `pretrained_cfg`.")
        kwargs.pop("data_config", None)  # derived from pretrained_cfg
        super().__init__(pretrained_cfg=dict(pretrained_cfg), architecture=architecture)
        self.pretrained_cfg = dict(pretrained_cfg)
        self.fast_decode = fast_decode

    @property
    def draft_size(self) -> int | None:
        """With `fast_decode`, the shorter side JPEGs are decoded to at least (the eval transform's resize), else
        None (full decode)."""
        if not self.fast_decode:
            return None
        size = self.data_config["input_size"][-1]
        return int(math.floor(size / self.data_config.get("crop_pct", 1.0)))

    @property
    def eval_transform(self):
        """Deterministic resize + centre crop + normalise (timm's eval transform)."""
        return self.val_transforms

    @property
    def train_transform(self):
        """Augmenting transform for training (timm's train transform: random resized crop, flip, colour jitter)."""
        return self.train_transforms

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("data_config", None)
        return output

    @classmethod
    def get_image_processor_dict(cls, pretrained_model_name_or_path, **kwargs):
        # timm's wrapper reads the model's config.json; this processor has a file of its own
        kwargs.setdefault("image_processor_filename", IMAGE_PROCESSOR_NAME)
        return super().get_image_processor_dict(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, *args, **kwargs):
        return BaseImageProcessor.save_pretrained(self, *args, **kwargs)

    def fetch_images(self, image_url_or_urls):
        """Reads images (paths, URLs, bytes, PIL images) with `load_rgb_image`, keeping the nesting."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(item) for item in image_url_or_urls]
        return load_rgb_image(image_url_or_urls, draft=self.draft_size)

    def preprocess(self, images, return_tensors="pt", training: bool = False, **kwargs) -> BatchFeature:
        """`images`: one image or a list (PIL images of any mode, file paths, bytes or URLs). `training=True`
        augments."""
        if return_tensors not in ("pt", None):
            raise ValueError(
                f"MmsaImageProcessor returns PyTorch tensors only, got return_tensors={return_tensors!r}."
            )
        if not isinstance(images, (list, tuple)):
            images = [images]
        images = [load_rgb_image(image, draft=self.draft_size) for image in images]
        if training:
            return BatchFeature({"pixel_values": torch.stack([self.train_transforms(i) for i in images])}, "pt")
        return super().preprocess(images, return_tensors="pt")


def check_tokenizer_config(folder) -> None:
    """Raises ValueError naming `folder/tokenizer_config.json` when it cannot be read as JSON or when its
    `tokenizer_class` is an Auto class rather than a tokenizer class; a Hub id or a folder without the file passes."""
    import json
    from pathlib import Path

    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    name = saved.get("tokenizer_class") if isinstance(saved, dict) else None
    if not isinstance(saved, dict) or (isinstance(name, str) and name.startswith("Auto")):
        raise ValueError(
            f"{path}: tokenizer_class must name a tokenizer class (such as BertTokenizer), got {name!r}"
            if isinstance(saved, dict)
            else f"{path}: expected a JSON object"
        )


class MmsaImagesKwargs(ImagesKwargs, total=False):
    training: bool


class MmsaProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: MmsaImagesKwargs
    _defaults = {"text_kwargs": {"padding": True, "truncation": True}, "common_kwargs": {"return_tensors": "pt"}}


class MmsaProcessor(ProcessorMixin):
    r"""
    Wraps a tokenizer and an `MmsaImageProcessor`: `processor(text=..., images=...)` gives every input an MMSA model
    takes (`input_ids`, `attention_mask`, `token_type_ids` where the tokenizer makes them, `pixel_values`).

    Args:
        image_processor (`MmsaImageProcessor`): the image transforms.
        tokenizer (`PreTrainedTokenizerBase`): the text tower's tokenizer.
        max_length (`int`, *optional*, defaults to 128): texts are truncated to this many tokens.
        text_normalization (`str`, *optional*, defaults to `"none"`): applied to every text before it is tokenised,
            in training, the feature cache and inference alike; `"tweet"` turns mentions and URLs into placeholders,
            `#hashtag` into `# hashtag` and emoji into their names (`mmsa.text_normalization`).
    """

    valid_processor_kwargs = MmsaProcessorKwargs

    def __init__(
        self, image_processor=None, tokenizer=None, max_length: int = 128, text_normalization: str = "none", **kwargs
    ):
        if text_normalization not in TEXT_NORMALIZATIONS:
            raise ValueError(f"text_normalization must be one of {TEXT_NORMALIZATIONS}, got {text_normalization!r}")
        self.max_length = max_length
        self.text_normalization = text_normalization
        super().__init__(image_processor, tokenizer, **kwargs)

    def normalize(self, text):
        """One text or a list, under this processor's `text_normalization` (what the tokenizer is given)."""
        return normalize_texts(text, self.text_normalization)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`ProcessorMixin.from_pretrained`, refusing first, with the file named, a local folder whose
        `tokenizer_config.json` is not valid JSON or names no concrete tokenizer class (`AutoTokenizer` there sends
        transformers' tokenizer resolution round in circles)."""
        check_tokenizer_config(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_model_config(cls, config, tokenizer, max_length: int = 128, text_normalization: str = "none"):
        """Builds the processor for an `MmsaConfig` (its vision tower's pretrained config) and a tokenizer."""
        vision_config = config.vision_config
        # The architecture's default timm pretrained_cfg, overridden by what the tower's config carries.
        default = timm.models.get_pretrained_cfg(vision_config.architecture)
        pretrained_cfg = default.to_dict() if default is not None else {}
        pretrained_cfg.update(getattr(vision_config, "pretrained_cfg", None) or {})
        image_processor = MmsaImageProcessor(pretrained_cfg=pretrained_cfg, architecture=vision_config.architecture)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            max_length=max_length,
            text_normalization=text_normalization,
        )

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        """`ProcessorMixin`'s call (texts to the tokenizer, padded and truncated to `max_length`; images to the image
        processor, with `training=True` for the augmenting transforms), with this processor's `max_length` as the
        default length. Texts are normalised first (`text_normalization`)."""
        kwargs.setdefault("max_length", self.max_length)
        if text is not None and self.text_normalization != "none":
            self.validate_inputs(text=text if isinstance(text, str) else list(text))  # before, as the tokenizer sees
            text = self.normalize(text if isinstance(text, str) else list(text))
        return super().__call__(images=images, text=text, **kwargs)

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        # any sequence (e.g. a `datasets` column) is a batch; images are read by the image processor
        if text is not None and not isinstance(text, str):
            text = list(text)
        if isinstance(images, Sequence) and not isinstance(images, (str, bytes, list)):
            images = list(images)
        return images, text, videos, audio

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if text is None and images is None:
            raise ValueError("MmsaProcessor needs `text`, `images` or both.")
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
        for index, item in enumerate([text] if isinstance(text, str) else text or []):
            check_unicode(item, "text" if isinstance(text, str) else f"text {index}")

    @property
    def model_input_names(self):
        return list(self.tokenizer.model_input_names) + ["pixel_values"]


__all__ = ["MmsaImageProcessor", "MmsaProcessor", "load_rgb_image"]
