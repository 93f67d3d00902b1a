"""The Gradio demo, in a real browser (Playwright driving Debian's chromium) and through `gradio_client`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsa.testing_utils import CHROMIUM_ARGS, launch_app


ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("MMSA_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app_url(tiny_run):
    pytest.importorskip("gradio")
    process, url = launch_app(ROOT / "app.py", tiny_run, tiny_run.parent / "app.log", steps=4)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def post(tmp_path_factory):
    folder = tmp_path_factory.mktemp("post")
    image = folder / "photo.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image)
    return {"text": "i love this photo so much", "image": str(image)}


@pytest.fixture(scope="module")
def expected(tiny_run, post):
    from mmsa import cli

    scores = cli.load_classifier(str(tiny_run))(post, top_k=None)
    return {score["label"]: score["score"] for score in scores}


def test_gradio_client_gets_what_the_pipeline_gives(app_url, post, expected):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    label, words, heatmap, shares, modalities = client.predict(
        handle_file(post["image"]), "", post["text"], api_name="/explain"
    )
    assert label["label"] == max(expected, key=expected.get)
    shown = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert shown == pytest.approx(expected, abs=1e-5)
    assert [item["token"] for item in words] == post["text"].split()
    assert Path(heatmap).is_file()
    assert sum(item["confidence"] for item in shares["confidences"]) == pytest.approx(1.0)
    assert modalities.get("confidences") in (None, [])  # no modality heads: nothing shown
    with pytest.raises(Exception, match="upload an image"):
        client.predict(None, "", post["text"], api_name="/explain")
    with pytest.raises(Exception, match="type the post's text"):
        client.predict(handle_file(post["image"]), "", "   ", api_name="/explain")


def chromium_or_skip():
    if not Path(CHROMIUM).is_file():
        if shutil.which("apt-get"):
            pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/setup.sh does it when root)")
        pytest.skip(f"no {CHROMIUM} and no apt-get to install it: the browser test needs Debian's chromium")
    return pytest.importorskip("playwright.sync_api", reason="playwright is installed by scripts/setup.sh")


def test_the_demo_in_a_real_browser(app_url, post, expected, tmp_path):
    sync_api = chromium_or_skip()
    artifacts = Path(os.environ.get("MMSA_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(app_url)
        page.locator("input[type=file]").first.set_input_files(post["image"])
        page.get_by_label("Text").fill(post["text"])
        page.get_by_role("button", name="Classify and explain").click()
        page.locator("#heatmap img").first.wait_for(timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(artifacts / "app.png"), full_page=True)
        label_text = page.locator("#label").inner_text()
        words_text = page.locator("#words").inner_text()
        heatmap_source = page.locator("#heatmap img").first.get_attribute("src")
        browser.close()
    best = max(expected, key=expected.get)
    assert label_text.splitlines()[1 if label_text.startswith("Sentiment") else 0].strip() == best
    for name, probability in expected.items():
        assert name in label_text and f"{round(probability * 100)}%" in label_text, (name, label_text)
    for word in post["text"].split():
        assert word in words_text
    assert heatmap_source
    assert (artifacts / "app.png").stat().st_size > 10_000


def test_space_files():
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(ROOT / "space" / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and (ROOT / card.data.app_file).is_file()
    requirements = (ROOT / "space" / "requirements.txt").read_text()
    assert f"gradio=={card.data.sdk_version}" in requirements and "captum" in requirements
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert f"gradio=={card.data.sdk_version}" in constraints  # the Space runs the gradio the tests ran


def test_app_refuses_a_missing_default_model(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "app.py")], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 2 and "run the main job first" in run.stderr
