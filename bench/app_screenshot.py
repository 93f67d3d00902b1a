"""The README's screenshot of the demo: app.py with a model, the first example post submitted, in headless chromium.

python bench/app_screenshot.py --model runs/offline_minilm_effnet --output docs/app.png
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsa.testing_utils import CHROMIUM_ARGS, launch_app  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/offline_minilm_effnet")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "app.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        process, url = launch_app(ROOT / "app.py", args.model, Path(folder) / "app.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(url)
                post = json.loads((ROOT / "examples" / "posts.jsonl").read_text().splitlines()[0])
                page.locator("input[type=file]").first.set_input_files(str(ROOT / "examples" / post["image"]))
                page.get_by_label("Text").fill(post["text"])
                page.get_by_role("button", name="Classify and explain").click()
                page.locator("#heatmap img").first.wait_for(timeout=120_000)
                page.wait_for_timeout(1000)
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.output), full_page=True)
                print(page.locator("#label").inner_text().replace("\n", " "))
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
