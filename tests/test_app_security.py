"""The demo under hostile input, served in this process on loopback: local paths and file URLs in the URL box, private
addresses, a trickling server, oversized and broken uploads, side-by-side requests, and uploads left on disk."""

import hashlib
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_reliability import serve as serve_http


pytestmark = pytest.mark.slow
gr = pytest.importorskip("gradio")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def loaded(tiny_run):
    import app

    return app.load(str(tiny_run))


def launch(loaded, **options):
    import app

    demo = app.build_demo(*loaded, n_steps=2, **options)
    port = free_port()
    app.serve(demo, options.get("concurrency", 4), server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def public_demo(loaded):
    """The demo as a public Space runs it: private addresses refused."""
    demo, url = launch(loaded, timeout=3)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def local_demo(loaded):
    """The demo with --allow_private_urls, so that loopback test servers can be reached."""
    demo, url = launch(loaded, timeout=3, allow_private_urls=True)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def web():
    server, url = serve_http("127.0.0.1")
    yield url
    server.shutdown()


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def app_error(url, image, image_url, text="i love this") -> str:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    with pytest.raises(Exception) as error:
        client.predict(handle_file(str(image)) if image else None, image_url, text, api_name="/explain")
    return str(error.value)


def test_the_url_box_takes_only_public_http_urls(public_demo, web):
    import app

    for location in ("/etc/hostname", "/etc/shadow", "file:///etc/passwd", "examples/sunny_beach.jpg"):
        assert app.URL_ONLY in app_error(public_demo, None, location)
    refused = app.url_unavailable(3)
    messages = {
        app_error(public_demo, None, url)
        for url in (f"{web}/photo.png", f"{web}/missing.png", "http://127.0.0.1:1/x.png", "http://[::1]:1/x.png")
    }
    assert messages == {refused}  # one message for a served image, a 404 and closed ports alike


def test_a_trickling_url_is_cut_off_and_does_not_hold_up_others(local_demo, web, photo):
    from gradio_client import Client, handle_file

    import app

    client = Client(local_demo, verbose=False)
    assert client.predict(None, f"{web}/photo.png", "i love this", api_name="/explain")[0]["label"]
    start = time.monotonic()
    slow = client.submit(None, f"{web}/trickle", "i love this", api_name="/explain")
    time.sleep(0.5)
    fast = Client(local_demo, verbose=False).predict(handle_file(str(photo)), "", "i love this", api_name="/explain")
    fast_done = time.monotonic() - start
    assert fast[0]["label"] and not slow.done() and fast_done < 3, fast_done
    with pytest.raises(Exception, match="No image could be fetched"):
        slow.result(timeout=30)
    assert time.monotonic() - start < 3 + 3  # the time-out bounds the whole download, plus the queue's polling
    assert app.url_unavailable(3).startswith("No image could be fetched")


def test_oversized_and_broken_uploads_get_the_apps_message(public_demo, tmp_path):
    import psutil

    import app

    huge = tmp_path / "huge.png"
    Image.new("L", (9000, 9000), 0).save(huge, optimize=True)
    truncated = tmp_path / "truncated.png"
    data = huge.read_bytes()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    process = psutil.Process()
    before = process.memory_info().rss
    start = time.monotonic()
    assert "9000x9000 pixels" in app_error(public_demo, huge, "")
    assert process.memory_info().rss - before < 300_000_000 and time.monotonic() - start < 20
    assert len(data) < 1_000_000
    assert app.UPLOAD_UNREADABLE in app_error(public_demo, truncated, "")
    assert app.UPLOAD_UNREADABLE in app_error(public_demo, garbage, "")
    assert "under 5000 characters" in app_error(public_demo, None, "", text="x" * 5001)


def test_uploads_are_deleted_once_read(public_demo, photo):
    from gradio.utils import get_upload_folder
    from gradio_client import Client, handle_file

    digest = hashlib.sha256(photo.read_bytes()).hexdigest()

    def stored():
        return [
            path
            for path in Path(get_upload_folder()).rglob("*")
            if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest
        ]

    client = Client(public_demo, verbose=False)
    label, *_ = client.predict(handle_file(str(photo)), "", "i love this", api_name="/explain")
    assert label["label"] and stored() == []


def test_examples_stay_usable(public_demo):
    from gradio_client import Client, handle_file

    import app

    image, text = app.example_posts()[0]
    client = Client(public_demo, verbose=False)
    first = client.predict(handle_file(image), "", text, api_name="/explain")[0]
    again = client.predict(handle_file(image), "", text, api_name="/explain")[0]
    assert first == again


def test_concurrency_is_configured(loaded):
    import app

    demo = app.build_demo(*loaded, n_steps=2, concurrency=3)
    limits = {fn.concurrency_limit for fn in demo.fns.values() if fn.api_name == "explain"}
    assert limits == {3}


def test_the_demo_shows_each_modality_on_its_own(tmp_path, photo):
    """A model with modality heads: the demo's fifth output gives what the text and the image convey alone."""
    from gradio_client import Client, handle_file

    import app
    from mmsa.pipeline_mmsa import save_for_pipeline
    from mmsa.testing_utils import tiny_model_and_processor

    model, processor = tiny_model_and_processor("naive_cat", seed=3, modality_heads=True, initializer_range=0.5)
    save_for_pipeline(model.eval(), processor, tmp_path / "heads")
    demo, url = launch(app.load(str(tmp_path / "heads")), timeout=3)
    try:
        *_, modalities = Client(url, verbose=False).predict(
            handle_file(str(photo)), "", "i love this", api_name="/explain"
        )
    finally:
        demo.close()
    shown = {item["label"].split(":")[0]: item["confidence"] for item in modalities["confidences"]}
    assert set(shown) == {"text", "image"} and all(0 < score <= 1 for score in shown.values())
