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
MAX_IMAGE_PIXELS = 40_000_000
"""Images of more pixels are refused before they are decoded (a 236 KB PNG can hold 9000x9000 pixels, 243 MB as
RGB). Pillow's own decompression-bomb limit is about 89 million (it warns) and 179 million (it refuses)."""
MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class UrlRefused(OSError):
    """A URL that is not fetched: not http(s), or (without `allow_private`) a host that is not a public address."""


def public_address(address: str) -> bool:
    """Whether an IP address is globally routable (not loopback, private, link-local, shared, reserved or
    multicast); IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry."""
    import ipaddress

    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class _Download:
    """One URL fetched in a worker thread, redirects followed by hand so that each hop is checked; `cancel()` closes
    the connection under way, which ends a blocked read at once."""

    def __init__(self, url: str, timeout: float, allow_private: bool, max_bytes: int):
        self.url, self.timeout, self.allow_private, self.max_bytes = url, timeout, allow_private, max_bytes
        self.body, self.error, self.connection, self.cancelled = None, None, None, False

    def run(self):
        try:
            self.body = self.fetch()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            self.error = error

    def cancel(self):
        self.cancelled = True
        connection = self.connection
        if connection is not None and connection.sock is not None:
            import socket

            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def connect(self, url: str):
        import http.client
        import socket
        import ssl
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UrlRefused(f"{url}: only http(s) URLs are fetched")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise OSError(f"{url}: cannot resolve {parts.hostname} ({error.strerror})") from None
        addresses = [info[4][0] for info in infos]
        if not self.allow_private and not all(public_address(address) for address in addresses):
            raise UrlRefused(f"{url}: {parts.hostname} is not a public address")
        address = addresses[0]  # the connection goes to the address that was checked (no second lookup)
        base = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection

        class Pinned(base):
            def connect(self):
                self.sock = socket.create_connection((address, self.port), self.timeout)
                if parts.scheme == "https":
                    self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)

        kwargs = {"context": ssl.create_default_context()} if parts.scheme == "https" else {}
        connection = Pinned(parts.hostname, port, timeout=self.timeout, **kwargs)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return connection, path

    def fetch(self) -> bytes:
        from urllib.parse import urljoin

        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            connection, path = self.connect(url)
            self.connection = connection
            try:
                connection.request("GET", path, headers={"User-Agent": "mmsa", "Accept": "image/*"})
                response = connection.getresponse()
                if response.status in REDIRECT_STATUSES and response.getheader("Location"):
                    url = urljoin(url, response.getheader("Location"))
                    continue
                if response.status >= 400:
                    raise OSError(f"{self.url}: HTTP {response.status} {response.reason}")
                chunks, size = [], 0
                while chunk := response.read1(1 << 16):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise OSError(f"{self.url}: more than {self.max_bytes} bytes, not an image to classify")
                    chunks.append(chunk)
                if self.cancelled:
                    raise TimeoutError
                return b"".join(chunks)
            finally:
                connection.close()
        raise OSError(f"{self.url}: more than {MAX_REDIRECTS} redirects")


def fetch_url(
    url: str,
    timeout: float = DEFAULT_IMAGE_TIMEOUT,
    allow_private: bool = True,
    max_bytes: int = MAX_IMAGE_DOWNLOAD_BYTES,
) -> bytes:
    """The body of an http(s) URL, within `timeout` seconds for the whole download (name lookup, connection,
    redirects and every byte: a server that trickles one byte a second is cut off at the deadline like a silent one).

    Raises `TimeoutError`, `UrlRefused` (not http(s); or, with `allow_private=False`, a host or a redirect target that
    resolves to a loopback, private, link-local or otherwise non-public address; the connection then goes to the
    address that was checked), or `OSError` saying what went wrong (`HTTP 404`, a refused connection)."""
    import threading

    if timeout is None or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    download = _Download(url, timeout, allow_private, max_bytes)
    worker = threading.Thread(target=download.run, name="mmsa-fetch", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        download.cancel()
        raise TimeoutError(f"{url}: no complete answer within {timeout:g} s")
    error = download.error
    if error is None:
        return download.body
    if isinstance(error, (TimeoutError, OSError)) and not isinstance(error, (UrlRefused,)):
        import ssl

        if isinstance(error, TimeoutError) or "timed out" in str(error):
            raise TimeoutError(f"{url}: no complete answer within {timeout:g} s") from error
        if isinstance(error, ssl.SSLError):
            raise OSError(f"{url}: TLS error ({error.reason or error})") from None
        if not str(error).startswith(url):
            raise OSError(f"{url}: {error.strerror or error}") from None
    raise error


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


class ImageTooLarge(ValueError):
    """An image of more pixels than the caller accepts, refused before it is decoded."""


def check_image_size(size: tuple[int, int], max_pixels: int | None, what: str = "image") -> None:
    """Refuses an image of more than `max_pixels` pixels (None: no limit) with a message that gives both figures."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(
            f"{what} is {width}x{height} pixels ({width * height / 1e6:.1f} million), more than the "
            f"{max_pixels / 1e6:g} million accepted: resize it first"
        )


def load_rgb_image(
    image,
    timeout: float = DEFAULT_IMAGE_TIMEOUT,
    draft: int | None = None,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
    allow_private: bool = True,
) -> Image.Image:
    """Opens `image` as an upright RGB PIL image: the one loader of training, the feature cache, the processor,
    the pipeline and the CLI, so that a post gives the same pixels on every route.

    `image` is a PIL image, a file path, an http(s) URL (fetched within `timeout` seconds), raw bytes, a binary file
    object, or an `{"bytes"/"path"}` dict as `datasets` stores images. The EXIF orientation is applied (a phone
    photo comes out upright); palette and alpha images are composited onto white, CMYK and greyscale are converted,
    and 16-bit / 32-bit greyscale is rescaled to 8 bits from its own value range.

    `draft`: for a JPEG read from a file, bytes or URL, decode at a reduced scale (PIL's draft mode: the JPEG
    decoder's 1/2, 1/4 or 1/8 scaling) whose shorter side is still at least `draft` pixels; faster, and close to, not
    equal to, the full decode resized (`MmsaImageProcessor(fast_decode=True)` sets it to the transform's resize).

    `max_pixels`: an image of more pixels is refused (`ImageTooLarge`) from its header, before it is decoded.
    `allow_private=False`: a URL is fetched only from a public address (see `fetch_url`).
    """
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if is_url(image):
        image = fetch_url(image, timeout, allow_private=allow_private)
    if isinstance(image, (bytes, bytearray)):
        image = io.BytesIO(image)
    if isinstance(image, (str, os.PathLike)) and not os.path.isfile(image):
        raise FileNotFoundError(f"image file {image} does not exist")
    if isinstance(image, (str, os.PathLike)) or hasattr(image, "read"):
        try:
            opened = Image.open(image)
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(f"image is too large to decode safely ({error})") from None
        with opened:
            check_image_size(opened.size, max_pixels)
            if draft and opened.format == "JPEG":
                opened.draft("RGB", (draft, draft))
            opened.load()
            return load_rgb_image(opened.copy() if opened.mode == "RGB" else opened, max_pixels=max_pixels)
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL image, a file path, a URL or image bytes, got {type(image).__name__}.")
    check_image_size(image.size, max_pixels)
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
