"""A batch of 1,000 rows, every tenth hostile, through `mmsa predict`: bounded time, one record per row.

    python bench/hostile_batch.py --model runs/offline_minilm_effnet [--rows 1000] [--timeout 10]

The hostile rows cycle through: an image URL on a loopback server that accepts connections and never answers, an
HTTP 404, a broken JPEG, a missing file, `"image": 123`, `"image": null`, a list, text with a lone surrogate, a line
that is not UTF-8, a line that is not JSON. Prints the wall time, the exit status, and rows in / rows out.
"""

import argparse
import http.server
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


ROOT = Path(__file__).resolve().parents[1]


def servers(folder: Path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(256)
    held = []

    def accept_and_say_nothing():
        while True:
            held.append(silent.accept()[0])

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{silent.getsockname()[1]}/photo.jpg", f"http://127.0.0.1:{http_server.server_address[1]}"


def hostile_lines(silent_url: str, http_url: str) -> list[bytes]:
    return [
        json.dumps({"text": "never answers", "image": silent_url}).encode(),
        json.dumps({"text": "not found", "image": f"{http_url}/missing.jpg"}).encode(),
        json.dumps({"text": "broken", "image": "broken.jpg"}).encode(),
        json.dumps({"text": "missing", "image": "nowhere.jpg"}).encode(),
        json.dumps({"text": "number", "image": 123}).encode(),
        json.dumps({"text": "null", "image": None}).encode(),
        json.dumps({"text": "list", "image": ["img0.jpg"]}).encode(),
        b'{"text": "surrogate \\ud800", "image": "img0.jpg"}',
        b'{"text": "caf\xe9", "image": "img0.jpg"}',
        b"{not json",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "runs" / "offline_minilm_effnet"))
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--timeout", default="10")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(20):
            Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(folder / f"img{i}.jpg")
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
        silent_url, http_url = servers(folder)
        hostile = hostile_lines(silent_url, http_url)
        words = ["what a great day", "this is awful", "the view from here", "so sad today", "love it"]
        lines = []
        for row in range(args.rows):
            if row % 10 == 9:
                lines.append(hostile[(row // 10) % len(hostile)])
            else:
                lines.append(
                    json.dumps({"id": row, "text": words[row % len(words)], "image": f"img{row % 20}.jpg"}).encode()
                )
        (folder / "posts.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        command = [
            sys.executable,
            "-m",
            "mmsa.cli",
            "predict",
            "--model",
            args.model,
            "--input",
            str(folder / "posts.jsonl"),
            "--output",
            str(folder / "preds.jsonl"),
            "--timeout",
            args.timeout,
        ]
        start = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        records = (
            (folder / "preds.jsonl").read_text(encoding="utf-8").splitlines() if completed.returncode in (0, 3) else []
        )
        errors = sum("error" in json.loads(line) for line in records)
        print(completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "")
        print(
            f"{args.rows} rows in, {len(records)} records out ({errors} errors), exit status "
            f"{completed.returncode}, {seconds:.1f} s (--timeout {args.timeout}; model loading included)"
        )


if __name__ == "__main__":
    main()
