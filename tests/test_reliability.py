"""Hostile and broken inputs: the URL fetcher's policy and deadline, image size caps, atomic and checked outputs, and a
clear message (exit status 2, the file named) wherever a traceback used to be."""

import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import push_to_hub
import train_hf
from mmsa import cli, image_io
from mmsa.data import MvsaFormatError, load_mvsa, read_split_file
from mmsa.explain import Explanation, explain
from mmsa.file_utils import atomic_file, atomic_folder
from mmsa.image_io import ImageTooLarge, UrlRefused, fetch_url, load_rgb_image
from mmsa.posts import InvalidPost, read_post
from mmsa.testing_utils import fake_mvsa_posts, tiny_model_and_processor, write_fake_mvsa, write_tiny_towers


ROOT = Path(__file__).resolve().parents[1]


def png_bytes(size=(30, 20), colour=(10, 200, 10)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


class Handler(http.server.BaseHTTPRequestHandler):
    """`/photo.png`: an image; `/redirect?to=URL`: a 302 there; `/trickle`: headers, then one byte every 0.2 s."""

    def do_GET(self):
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
        elif self.path == "/photo.png":
            body = png_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(2000):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


def serve(host: str):
    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"


@pytest.fixture(scope="module")
def web():
    """Two loopback servers: 127.0.0.1 and 127.0.0.2 (both loopback; tests treat the first as public)."""
    first, first_url = serve("127.0.0.1")
    second, second_url = serve("127.0.0.2")
    yield first_url, second_url
    first.shutdown()
    second.shutdown()


# --- the URL fetcher ----------------------------------------------------------------------------------------------


def test_fetcher_refuses_other_schemes_and_private_hosts(web, monkeypatch):
    public, private = web
    assert fetch_url(f"{public}/photo.png", 5) == png_bytes()  # the library default: the user owns the machine
    for url in ("file:///etc/passwd", "ftp://example.com/x.png", "/etc/passwd"):
        with pytest.raises(UrlRefused, match="only http"):
            fetch_url(url, 5)
    for url in (f"{public}/photo.png", "http://[::1]:9/x.png", "http://[::ffff:127.0.0.1]:9/", "http://10.0.0.1/"):
        with pytest.raises(UrlRefused, match="not a public address"):
            fetch_url(url, 5, allow_private=False)
    # each redirect target is checked: with 127.0.0.1 taken as public, a redirect to 127.0.0.2 is refused
    monkeypatch.setattr(image_io, "public_address", lambda address: address == "127.0.0.1")
    assert fetch_url(f"{public}/redirect?to={public}/photo.png", 5, allow_private=False) == png_bytes()
    with pytest.raises(UrlRefused, match="127.0.0.2 is not a public address"):
        fetch_url(f"{public}/redirect?to={private}/photo.png", 5, allow_private=False)


def test_fetcher_deadline_bounds_a_trickling_server(web):
    public, _ = web
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no complete answer within 1.5 s"):
        fetch_url(f"{public}/trickle", 1.5)
    assert time.monotonic() - start < 2.5
    with pytest.raises(OSError, match="HTTP 404"):
        fetch_url(f"{public}/missing.png", 5)


def test_cli_predict_on_a_trickling_url_returns_within_its_timeout(tiny_run, web, tmp_path):
    public, _ = web
    classifier = cli.load_classifier(str(tiny_run))
    source = tmp_path / "posts.jsonl"
    source.write_text(json.dumps({"text": "i love this", "image": f"{public}/trickle"}) + "\n")
    start = time.monotonic()
    counts = cli.predict_file(classifier, source, tmp_path / "out.jsonl", batch_size=4, top_k=1, timeout=3)
    elapsed = time.monotonic() - start
    assert counts["errors"] == 1 and elapsed < 3.8, elapsed
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert "no complete answer within 3 s" in record["error"]


# --- images: size caps and the overlay ----------------------------------------------------------------------------


def test_large_images_are_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (9000, 9000), 0).save(path, optimize=True)
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLarge, match="9000x9000 pixels"):
            load_rgb_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # never decoded (it would be 243 MB as RGB)
    with pytest.raises(InvalidPost, match="more than the 40 million accepted"):
        read_post({"text": "x", "image": str(path)})
    model, processor = tiny_model_and_processor("naive_cat")
    with pytest.raises(ValueError, match="9000x9000"):
        explain(model, processor, "good day", str(path))
    assert load_rgb_image(path, max_pixels=None).size == (9000, 9000)  # the cap can be lifted by whoever owns it


def test_overlay_is_drawn_at_a_bounded_size():
    image = Image.new("RGB", (6000, 3000), (1, 2, 3))
    explanation = Explanation(
        label="positive",
        probabilities={"positive": 1.0},
        words=[],
        heatmap=np.linspace(0, 1, 6000 * 3000, dtype=np.float32).reshape(3000, 6000),
        modality_shares={"image": 1.0},
        methods={},
        image=image,
    )
    tracemalloc.start()
    try:
        overlay = explanation.overlay()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert overlay.size == (1024, 512)
    assert peak < 150_000_000  # a float64 RGBA map at full size would take 576 MB


def test_zero_width_text_has_no_truncated_words():
    model, processor = tiny_model_and_processor("naive_cat")
    image = Image.new("RGB", (64, 64), (10, 200, 10))
    explanation = explain(model, processor, "\u200b\u200b \u200d", image, n_steps=2)
    assert explanation.truncated_words == 0
    long = " ".join(["good"] * 100)
    assert explain(model, processor, long, image, n_steps=2).truncated_words == 100 - (processor.max_length - 2)


# --- outputs: atomic, checked before the work, with the usual mode ------------------------------------------------


def test_atomic_outputs_get_the_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.txt") as handle:
            handle.write("x")
        with atomic_folder(tmp_path / "folder") as folder:
            (folder / "b.txt").write_text("y")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    with pytest.raises(ValueError, match="not empty"):
        with atomic_folder(tmp_path / "folder", overwrite=False):
            pass


def test_predict_output_is_checked_before_the_batch(tiny_run, tmp_path):
    (tmp_path / "posts.jsonl").write_text('{"text": "x", "image": "p.png"}\n')
    (tmp_path / "existing").mkdir()
    for output, message in ((tmp_path / "existing", "is an existing folder"), (tmp_path / "posts.jsonl" / "o", "")):
        completed = subprocess.run(
            [sys.executable, "-m", "mmsa.cli", "predict", "--model", str(tiny_run), "--input",
             str(tmp_path / "posts.jsonl"), "--output", str(output)],
            capture_output=True, text=True, cwd=ROOT,
        )  # fmt: skip
        assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr[-500:]
        assert message in completed.stderr and "predicting" not in completed.stderr


def test_sigterm_leaves_no_partial_file(tiny_run, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts and never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.png"
    (tmp_path / "posts.jsonl").write_text(json.dumps({"text": "x", "image": url}) + "\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "mmsa.cli", "predict", "--model", str(tiny_run), "--input",
         str(tmp_path / "posts.jsonl"), "--output", str(tmp_path / "out.jsonl"), "--timeout", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.jsonl.*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob(".out.jsonl.*")), "the batch did not start"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        process.kill()
        listener.close()
    assert process.returncode == 128 + signal.SIGTERM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posts.jsonl"]


def test_evaluate_names_every_report_by_its_split(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p.name: p.read_bytes() for p in run.glob("test_*")}
    assert {"test_confusion_matrix.png", "test_classification_report.txt", "test_confusion_matrix.json"} <= set(before)
    dataset = json.loads((run / "run_info.json").read_text())["dataset"]
    cli.run(["evaluate", "--model", str(run), "--dataset", dataset, "--split", "validation", "--output_dir", str(run)])
    assert {p.name: p.read_bytes() for p in run.glob("test_*")} == before
    assert (run / "validation_confusion_matrix.png").is_file()
    assert "negative" in (run / "validation_classification_report.txt").read_text()
    file = tmp_path / "a_file"
    file.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["evaluate", "--model", str(run), "--dataset", dataset, "--output_dir", str(file)])
    assert exit_info.value.code == 2


def tree_digest(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_push_to_hub_dry_run_never_rewrites_or_merges(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    source = tree_digest(run)
    for target in (run, run / "upload"):
        with pytest.raises(SystemExit) as exit_info:
            push_to_hub.main(["--model_dir", str(run), "--repo_id", "user/m", "--dry_run", str(target)])
        assert exit_info.value.code == 2
        assert "overlaps, the model folder" in capsys.readouterr().err
    assert tree_digest(run) == source
    stale = tmp_path / "upload"
    stale.mkdir()
    (stale / "stale.bin").write_text("old")
    with pytest.raises(SystemExit):
        push_to_hub.main(["--model_dir", str(run), "--repo_id", "user/m", "--dry_run", str(stale)])
    assert "not empty" in capsys.readouterr().err and (stale / "stale.bin").is_file()
    push_to_hub.main(["--model_dir", str(run), "--repo_id", "user/m", "--dry_run", str(stale), "--overwrite"])
    written = {p.name for p in stale.iterdir()}
    assert "stale.bin" not in written and {"README.md", "test_confusion_matrix.png", "model.safetensors"} <= written
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SystemExit):
        push_to_hub.main(["--model_dir", str(run), "--repo_id", "user/m", "--dry_run", str(a_file)])
    assert "is an existing file" in capsys.readouterr().err
    (run / "test_results.json").write_text('{"test_accuracy": ')
    with pytest.raises(SystemExit):
        push_to_hub.main(["--model_dir", str(run), "--repo_id", "user/m", "--dry_run", str(tmp_path / "new")])
    assert "test_results.json is not valid JSON" in capsys.readouterr().err


def test_onnx_export_is_atomic_and_its_files_are_checked(tiny_run, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from mmsa import onnx as mmsa_onnx
    from mmsa.onnx_runtime import MmsaOnnxModel

    export = tmp_path / "onnx"
    mmsa_onnx.export_onnx(str(tiny_run), export)
    before = tree_digest(export)
    with pytest.raises(ValueError, match="not empty"):
        mmsa_onnx.export_onnx(str(tiny_run), export)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mmsa.processing_mmsa.MmsaProcessor.save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        mmsa_onnx.export_onnx(str(tiny_run), export, overwrite=True)
    monkeypatch.undo()
    assert tree_digest(export) == before and sorted(p.name for p in tmp_path.iterdir()) == ["onnx"]
    MmsaOnnxModel(export)  # still the complete old export

    broken = tmp_path / "broken"
    for damage, message in (
        (lambda f: (f / "model.onnx").write_bytes(b"garbage"), "not a loadable ONNX model"),
        (lambda f: (f / "model.onnx").write_bytes((f / "model.onnx").read_bytes()[:5000]), "not a loadable"),
        (lambda f: (f / "model.onnx").unlink(), "does not exist"),
        (lambda f: (f / "onnx_manifest.json").write_text("{"), "onnx_manifest.json is not valid JSON"),
        (lambda f: rewrite_manifest(f, files={"float32": "../../etc/passwd"}), "is not a file name inside"),
        (lambda f: rewrite_manifest(f, inputs="x"), "'inputs' must be a list"),
    ):
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(export, broken)
        damage(broken)
        with pytest.raises(ValueError, match=message):
            MmsaOnnxModel(broken)
        with pytest.raises(SystemExit) as exit_info:
            cli.run(["predict", "--model", str(broken), "--backend", "onnx", "--text", "hi", "--image", "x.png"])
        assert exit_info.value.code == 2 and str(broken) in capsys.readouterr().err
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(SystemExit):
        cli.run(["export-onnx", "--model", str(tiny_run), "--output", str(file)])
    assert "is an existing file" in capsys.readouterr().err


def rewrite_manifest(folder: Path, **changes):
    manifest = json.loads((folder / "onnx_manifest.json").read_text())
    manifest.update(changes)
    (folder / "onnx_manifest.json").write_text(json.dumps(manifest))


def test_explain_outputs_are_checked_and_atomic(tiny_run, tmp_path, monkeypatch, capsys):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.png")
    source = tmp_path / "posts.jsonl"
    source.write_text("".join(json.dumps({"text": t, "image": "photo.png"}) + "\n" for t in ("i love this", "sad")))
    out = tmp_path / "why"
    cli.run(["explain", "--model", str(tiny_run), "--input", str(source), "--output", str(out), "--steps", "2"])
    before = tree_digest(out)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["explain", "--model", str(tiny_run), "--input", str(source), "--output", str(out)])
    assert exit_info.value.code == 2 and "not empty" in capsys.readouterr().err
    from mmsa import explain as explain_module

    calls = []

    def killed_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = explain_module.explain
    monkeypatch.setattr(explain_module, "explain", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        cli.run(["explain", "--model", str(tiny_run), "--input", str(source), "--output", str(out), "--overwrite"])
    monkeypatch.undo()
    assert tree_digest(out) == before  # the records still describe the figures beside them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png", "posts.jsonl", "why"]
    folder = tmp_path / "folder.html"
    folder.mkdir()
    for args, message in (
        (["--input", str(source), "--output", str(source)], "is an existing file"),
        (["--text", "hi", "--image", str(tmp_path / "photo.png"), "--output", str(folder)], "is an existing folder"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(["explain", "--model", str(tiny_run), *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --- model folders ------------------------------------------------------------------------------------------------


def test_damaged_and_pickle_model_folders_get_a_message(tiny_run, tmp_path, capsys):
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_run, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_run, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(2)}, pickled / "pytorch_model.bin")
    tokenizer = tmp_path / "auto_tokenizer"
    shutil.copytree(tiny_run, tokenizer)
    saved = json.loads((tokenizer / "tokenizer_config.json").read_text())
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({**saved, "tokenizer_class": "AutoTokenizer"}))
    for folder, message in (
        (truncated, "the weights file cannot be read"),
        (pickled, "a pickle file, which is refused"),
        (tokenizer, "tokenizer_class must name a tokenizer class"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(["predict", "--model", str(folder), "--text", "hi", "--image", "x.png"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and str(folder) in err, err
        assert "weights_only" not in err


# --- training arguments and data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def towers_and_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability")
    text, vision = write_tiny_towers(folder / "towers")
    raw = write_fake_mvsa(folder / "raw", fake_mvsa_posts(30, seed=3))
    return text, vision, raw, folder


def train_args(towers_and_data, *extra):
    text, vision, raw, folder = towers_and_data
    return ["--text_model_name_or_path", str(text), "--vision_model_name_or_path", str(vision),
            "--dataset_name_or_path", str(raw), "--output_dir", str(folder / "run"), "--fusion", "naive_cat",
            "--feature_cache_dir", str(folder / "cache"), "--disable_tqdm", "true", *extra]  # fmt: skip


def test_train_hf_refuses_bad_requests_with_a_message(towers_and_data, tmp_path, capsys):
    _, _, raw, folder = towers_and_data
    listed = tmp_path / "list.yaml"
    listed.write_text("- fusion\n- cmac\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("fusion: [cmac\n")
    split_string = tmp_path / "split.json"
    split_string.write_text(json.dumps({"train": "123456789", "validation": [], "test": []}))
    (tmp_path / "empty").mkdir()
    cases = [
        (train_args(towers_and_data, "--num_train_epochs", "-1"), "--num_train_epochs must be positive"),
        (train_args(towers_and_data, "--num_train_epochs", "0"), "--num_train_epochs must be positive"),
        ([str(listed)], "expected a mapping"),
        ([str(broken)], "broken.yaml is not valid YAML"),
        (train_args(towers_and_data, "--split_file", str(split_string)), "'train' must be a list of post ids"),
        (train_args(towers_and_data, "--dataset_name_or_path", str(tmp_path / "empty")), "is an empty folder"),
        (train_args(towers_and_data, "--dataset_name_or_path", str(tmp_path / "none")), "does not exist"),
        (train_args(towers_and_data, "--fusion_hidden_size"), "--fusion_hidden_size needs a value"),
    ]
    for argv, message in cases:
        assert train_hf.cli_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err, (argv, err)
    assert not (folder / "run" / "model.safetensors").exists()


def test_bare_boolean_flags_mean_true():
    argv = ["--freeze_vision_backbone", "--fusion", "cmac", "--freeze_text_backbone"]
    folded = train_hf.fold_config_flags(argv)
    assert folded[:2] == ["--fusion", "cmac"]
    overrides = folded[folded.index("--config_overrides") + 1]
    assert set(overrides.split(",")) == {"freeze_vision_backbone=true", "freeze_text_backbone=true"}
    model_args, _, _ = train_hf.parse_args(argv + ["--freeze_text_backbone", "false"])
    assert model_args.fusion == "cmac"
    assert "freeze_text_backbone=false" in model_args.config_overrides


def test_split_files_are_checked_item_by_item(tmp_path):
    for splits, message in (
        ({"train": "123456789", "validation": [], "test": []}, "'train' must be a list of post ids, got str"),
        ({"train": None, "validation": [], "test": []}, "'train' must be a list of post ids, got NoneType"),
        ({"train": [1, [2]], "validation": [], "test": []}, "'train' item 1 must be a post id"),
        ({"train": [1], "validation": [True], "test": []}, "'validation' item 0 must be a post id"),
    ):
        path = tmp_path / "split.json"
        path.write_text(json.dumps(splits))
        with pytest.raises(MvsaFormatError, match=message):
            read_split_file(path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MvsaFormatError, match="bad.json: not a JSON split file"):
        read_split_file(tmp_path / "bad.json")
    with pytest.raises(MvsaFormatError, match="is a file"):
        load_mvsa(tmp_path / "bad.json")


def first_update(towers_and_data, batch_size: int, accumulation: int, learning_rate: float = 0.5) -> dict:
    text, vision, raw, folder = towers_and_data
    output = folder / f"accumulation-{batch_size}-{accumulation}-{learning_rate}"
    train_hf.main(
        train_args(
            towers_and_data,
            "--output_dir", str(output), "--max_steps", "1", "--per_device_train_batch_size", str(batch_size),
            "--gradient_accumulation_steps", str(accumulation), "--optim", "sgd", "--head_learning_rate", str(learning_rate),
            "--max_grad_norm", "1e9", "--warmup_steps", "0", "--lr_scheduler_type", "constant",
            "--projection_dropout", "0", "--classifier_dropout", "0", "--eval_strategy", "no", "--save_strategy",
            "no", "--load_best_model_at_end", "false", "--do_eval", "false", "--do_predict", "false",
            "--early_stopping_patience", "0", "--cpu_threads", "1", "--dataloader_drop_last", "true",
            "--freeze_text_backbone", "--freeze_vision_backbone",
        )
    )  # fmt: skip
    from safetensors.torch import load_file

    return load_file(output / "model.safetensors")


def test_gradient_accumulation_gives_the_update_of_the_larger_batch(towers_and_data):
    initial = first_update(towers_and_data, batch_size=8, accumulation=1, learning_rate=0.0)
    big = first_update(towers_and_data, batch_size=8, accumulation=1)
    accumulated = first_update(towers_and_data, batch_size=4, accumulation=2)
    heads = [k for k in big if k.startswith("classifiers.")]
    assert heads
    step_big = torch.cat([(big[k] - initial[k]).flatten() for k in heads])
    step_accumulated = torch.cat([(accumulated[k] - initial[k]).flatten() for k in heads])
    assert step_big.abs().max() > 1e-3  # a real update, so that a k-times larger one would show
    assert torch.allclose(step_accumulated, step_big, atol=1e-6, rtol=1e-4)


def test_image_store_is_keyed_by_the_decoder(monkeypatch):
    from mmsa import feature_cache

    versions = feature_cache.image_decoder_versions()
    assert versions["pillow"] and versions["jpg"]
    import PIL

    monkeypatch.setattr(PIL, "__version__", "0.0-other")
    assert feature_cache.image_decoder_versions() != versions


def test_plain_pytest_imports_the_repository_scripts(tmp_path):
    pytest_binary = Path(sys.executable).with_name("pytest")
    if not pytest_binary.is_file():
        pytest.skip("no pytest console script beside this Python")
    test = ROOT / "tests" / "test_reliability.py"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [str(pytest_binary), "-q", f"{test}::test_bare_boolean_flags_mean_true"],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-1500:]
