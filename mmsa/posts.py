"""The one check of a post (a text and an image) before a model sees it: the CLI, the pipeline, `mmsa.explain` and
the demo all call `read_post`, so a bad post gets the same message on every route. Needs no torch."""

import os
from pathlib import Path

from .image_io import (
    DEFAULT_IMAGE_TIMEOUT,
    MAX_IMAGE_PIXELS,
    ImageTooLarge,
    UrlRefused,
    check_unicode,
    is_url,
    load_rgb_image,
)


class InvalidPost(ValueError):
    """A post that cannot be classified as it is; the message says what is wrong with it."""


def check_text(text, what: str = "'text'") -> str:
    """`text` if it is a non-empty string of valid Unicode, else `InvalidPost`."""
    if text is None:
        raise InvalidPost(f"missing {what} (the model needs a non-empty text)")
    if not isinstance(text, str):
        raise InvalidPost(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidPost(f"empty {what} (the model needs a non-empty text)")
    try:
        return check_unicode(text, what)
    except ValueError as error:
        raise InvalidPost(str(error)) from None


def read_image(
    image,
    base: str | Path | None = None,
    timeout: float = DEFAULT_IMAGE_TIMEOUT,
    draft: int | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    allow_private: bool = True,
):
    """A post's image as an RGB PIL image, or `InvalidPost` saying why it cannot be read.

    With `base` (posts read from a file), the image must be a string: a path relative to `base`, or a URL. Without
    it, anything `load_rgb_image` reads (PIL image, path, URL, bytes)."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise InvalidPost("missing 'image' (the model needs an image)")
    location = image
    if base is not None:
        if not isinstance(image, str):
            raise InvalidPost(f"'image' must be a file path or URL string, got {type(image).__name__}")
        location = image if is_url(image) else str(Path(base) / image)
    try:
        return load_rgb_image(
            location, timeout=timeout, draft=draft, max_pixels=max_pixels, allow_private=allow_private
        )
    except FileNotFoundError:
        raise InvalidPost(f"image file {location} does not exist") from None
    except (ImageTooLarge, UrlRefused, TimeoutError) as error:
        raise InvalidPost(str(error)) from None
    except TypeError as error:
        raise InvalidPost(f"'image': {error}") from None
    except Exception as error:  # truncated or undecodable image, HTTP error, unreadable file
        shown = image if isinstance(image, (str, os.PathLike)) else type(image).__name__
        raise InvalidPost(f"cannot read image {shown!r}: {type(error).__name__}: {error}") from error


def read_post(
    post,
    uses_text: bool = True,
    uses_vision: bool = True,
    base: str | Path | None = None,
    timeout: float = DEFAULT_IMAGE_TIMEOUT,
    draft: int | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    allow_private: bool = True,
) -> dict:
    """The checked post `{"text": str, "image": PIL image}` (only what the model uses) from a dict with `text` and
    `image`; raises `InvalidPost` with what is wrong. See `read_image` for `base` and the image options."""
    if not isinstance(post, dict):
        raise InvalidPost(f"a post must be a JSON object (a dict) with 'text' and 'image', got {type(post).__name__}")
    checked = {}
    if uses_text:
        checked["text"] = check_text(post.get("text"))
    if uses_vision:
        checked["image"] = read_image(post.get("image"), base, timeout, draft, max_pixels, allow_private)
    return checked


__all__ = ["InvalidPost", "check_text", "read_image", "read_post"]
