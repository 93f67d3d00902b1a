"""Reading images for MMSA: one loader for training, the feature cache, the processors, the pipeline, the CLI and
the ONNX runtime, so that a post gives the same pixels on every route. Needs only Pillow and numpy (no torch)."""

import io
import os

import numpy as np
from PIL import Image, ImageOps


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


def load_rgb_image(image, timeout: float = DEFAULT_IMAGE_TIMEOUT, draft: int | None = None) -> Image.Image:
    """Opens `image` as an upright RGB PIL image: the one loader of training, the feature cache, the processor,
    the pipeline and the CLI, so that a post gives the same pixels on every route.

    `image` is a PIL image, a file path, an http(s) URL (fetched within `timeout` seconds), raw bytes, a binary file
    object, or an `{"bytes"/"path"}` dict as `datasets` stores images. The EXIF orientation is applied (a phone
    photo comes out upright); palette and alpha images are composited onto white, CMYK and greyscale are converted,
    and 16-bit / 32-bit greyscale is rescaled to 8 bits from its own value range.

    `draft`: for a JPEG read from a file, bytes or URL, decode at a reduced scale (PIL's draft mode: the JPEG
    decoder's 1/2, 1/4 or 1/8 scaling) whose shorter side is still at least `draft` pixels; faster, and close to, not
    equal to, the full decode resized (`MmsaImageProcessor(fast_decode=True)` sets it to the transform's resize).
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
            if draft and opened.format == "JPEG":
                opened.draft("RGB", (draft, draft))
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
