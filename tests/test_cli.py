"""The `mmsa` command line and the pipeline under bad input: time-outs, hostile rows, atomic output, refusals."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import pipeline

from mmsa import cli, load_rgb_image
from mmsa.posts import InvalidPost
from mmsa.testing_utils import example_posts


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def silent_server():
    """A loopback server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/photo.jpg"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture(scope="module")
def file_server(tmp_path_factory):
    """A loopback HTTP server over a folder holding `photo.png`."""
    folder = tmp_path_factory.mktemp("served")
    Image.new("RGB", (30, 20), (10, 200, 10)).save(folder / "photo.png")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_image_urls_time_out_and_report_http_status(silent_server, file_server):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="no complete answer within 1 s"):
        load_rgb_image(silent_server, timeout=1)
    assert time.monotonic() - start < 5
    with pytest.raises(OSError, match="HTTP 404"):
        load_rgb_image(f"{file_server}/missing.png")
    assert load_rgb_image(f"{file_server}/photo.png").getpixel((0, 0)) == (10, 200, 10)


def test_pipeline_takes_a_timeout(tiny_run, silent_server):
    classifier = cli.load_classifier(str(tiny_run))
    start = time.monotonic()
    with pytest.raises(InvalidPost, match="no complete answer within 1 s"):
        classifier({"text": "i love this", "image": silent_server}, timeout=1)
    assert time.monotonic() - start < 5
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        classifier({"text": "i love this", "image": silent_server}, timeout=0)
    with pytest.raises(ValueError, match="not valid Unicode"):
        classifier({"text": "bad \ud800 text", "image": Image.new("RGB", (8, 8))})


def write_lines(path: Path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")


def batch_argv(model: Path, folder: Path, *options: str, output: str = "out.jsonl") -> list[str]:
    """`mmsa predict` from `folder/posts.jsonl` to `folder/<output>`."""
    paths = ["--input", str(folder / "posts.jsonl"), "--output", str(folder / output)]
    return ["predict", "--model", str(model), *paths, *options]


def test_every_row_gets_one_record_in_order(tiny_run, tmp_path, silent_server):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.png")
    good = {"text": "i love this", "image": "photo.png"}
    lines = [
        b"\xef\xbb\xbf" + json.dumps({**good, "id": "first"}).encode(),  # 1: UTF-8 byte-order mark
        json.dumps({"id": "int image", "text": "x", "image": 123}).encode(),  # 2
        json.dumps({"id": "list image", "text": "x", "image": ["photo.png"]}).encode(),  # 3
        json.dumps({"id": "null image", "text": "x", "image": None}).encode(),  # 4
        b"",  # 5: blank, counted as a line
        b'{"id": "surrogate text", "text": "bad \\ud800", "image": "photo.png"}',  # 6
        b'{"id": "bad \\udc80 id", "text": "fine", "image": "photo.png"}',  # 7: predicted, id kept escaped
        b'{"id": "latin-1", "text": "caf\xe9", "image": "photo.png"}',  # 8: a byte that is not UTF-8
        json.dumps(
            {"id": "separators", "text": "a\u2028b\u2029c\x85d", "image": "photo.png"}, ensure_ascii=False
        ).encode(),  # 9: one row, not four
        json.dumps({"id": "slow url", "text": "x", "image": silent_server}).encode(),  # 10
        b"[1, 2]",  # 11
        json.dumps({**good, "id": "last"}).encode(),  # 12
    ]
    write_lines(tmp_path / "posts.jsonl", lines)
    start = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "mmsa.cli", *batch_argv(tiny_run, tmp_path, "--batch_size", "4", "--timeout", "1")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert time.monotonic() - start < 120
    assert completed.returncode == cli.ROWS_FAILED_STATUS, completed.stderr[-2000:]
    assert "11 rows: 4 predicted, 7 failed, 1 blank lines ignored" in completed.stderr
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]
    by_line = {r["line"]: r for r in records}
    assert {line for line, r in by_line.items() if "label" in r} == {1, 7, 9, 12}
    assert by_line[1]["id"] == "first" and by_line[9]["id"] == "separators"
    assert by_line[7]["id"] == "bad \udc80 id"
    assert "'image' must be a file path or URL string, got int" in by_line[2]["error"]
    assert "got list" in by_line[3]["error"] and "missing 'image'" in by_line[4]["error"]
    assert "not valid Unicode" in by_line[6]["error"]
    assert "not valid UTF-8 (byte 0xe9" in by_line[8]["error"]
    assert "no complete answer within 1 s" in by_line[10]["error"]
    assert "a post must be a JSON object" in by_line[11]["error"]
    assert "label" not in by_line[10] and len(records) == 11


def test_batch_output_is_atomic_and_never_the_input(tiny_run, tmp_path, monkeypatch):
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.png")
    source = tmp_path / "posts.jsonl"
    write_lines(
        source, [json.dumps({"id": i, "text": "i love this", "image": "photo.png"}).encode() for i in range(6)]
    )
    before = source.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["predict", "--model", str(tiny_run), "--input", str(source), "--output", str(source)])
    assert exit_info.value.code == 2 and source.read_bytes() == before

    output = tmp_path / "out.jsonl"
    output.write_text("previous results\n")
    classifier = cli.load_classifier(str(tiny_run))
    calls = []

    def crash_on_second_batch(posts, **kwargs):
        calls.append(len(posts))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return original(posts, **kwargs)

    original = classifier.__call__
    monkeypatch.setattr(type(classifier), "__call__", lambda self, posts, **kw: crash_on_second_batch(posts, **kw))
    with pytest.raises(RuntimeError, match="killed"):
        cli.predict_file(classifier, source, output, batch_size=2, top_k=1)
    assert output.read_text() == "previous results\n"  # untouched: nothing half-written replaced it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "photo.png", "posts.jsonl"]


@pytest.mark.parametrize(
    "option", [["--batch_size", "0"], ["--batch_size", "-1"], ["--timeout", "0"], ["--timeout", "nan"]]
)
def test_numeric_options_are_validated(tiny_run, tmp_path, option):
    (tmp_path / "posts.jsonl").write_text('{"text": "x", "image": "p.png"}\n')
    with pytest.raises(SystemExit) as exit_info:
        cli.run(batch_argv(tiny_run, tmp_path, *option))
    assert exit_info.value.code == 2 and not (tmp_path / "out.jsonl").exists()


def permuted_copy(run_dir: Path, folder: Path, order: list[int], names: dict[int, str] | None = None) -> Path:
    """The model of `run_dir` with its labels in another order (head rows permuted to match)."""
    import shutil

    shutil.copytree(run_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    old = {int(k): v for k, v in config["id2label"].items()}
    config["id2label"] = {str(new): (names or old)[old_index] for new, old_index in enumerate(order)}
    config["label2id"] = {label: int(i) for i, label in config["id2label"].items()}
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    for key in [
        k for k in weights if k.endswith(("out_proj.weight", "out_proj.bias")) and k.startswith("classifiers")
    ]:
        weights[key] = weights[key][order].contiguous()
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_evaluate_compares_by_label_name(tiny_run, tmp_path):
    dataset = json.loads((tiny_run / "run_info.json").read_text())["dataset"]
    reference = cli.run(["evaluate", "--model", str(tiny_run), "--dataset", dataset])
    permuted = permuted_copy(tiny_run, tmp_path / "permuted", [2, 0, 1])
    assert json.loads((permuted / "config.json").read_text())["id2label"]["0"] == "positive"
    # the same predictions, so the same counts; the calibration metrics sum the probabilities in another order
    assert cli.run(["evaluate", "--model", str(permuted), "--dataset", dataset]) == pytest.approx(reference, rel=1e-6)
    other = permuted_copy(tiny_run, tmp_path / "other", [0, 1, 2], {0: "negative", 1: "mixed", 2: "positive"})
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["evaluate", "--model", str(other), "--dataset", dataset])
    assert exit_info.value.code == 2


def test_trainer_and_evaluate_predict_the_same_posts(tiny_run, tmp_path):
    """The trainer's test predictions (frozen towers, from the feature cache) equal `mmsa evaluate`'s (processor +
    model), post by post."""
    dataset = json.loads((tiny_run / "run_info.json").read_text())["dataset"]
    cli.run(["evaluate", "--model", str(tiny_run), "--dataset", dataset, "--output_dir", str(tmp_path)])
    trainer = (tiny_run / "test_predictions.jsonl").read_text().splitlines()
    evaluated = (tmp_path / "test_predictions.jsonl").read_text().splitlines()
    test_posts = json.loads((tiny_run / "test_results.json").read_text())["test_samples"]
    assert len(trainer) == test_posts > 0 and trainer == evaluated


def test_folders_whose_weights_do_not_cover_the_config_are_refused(tiny_run, tmp_path, capsys):
    import shutil

    import push_to_hub

    broken = tmp_path / "two_layers"
    shutil.copytree(tiny_run, broken)
    config = json.loads((broken / "config.json").read_text())
    config["fusion_num_layers"] = 2
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["predict", "--model", str(broken), "--text", "i love this", "--image", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2 and "missing tensor" in capsys.readouterr().err
    with pytest.raises(Exception, match="missing tensor"):
        pipeline("multimodal-sentiment", model=str(broken), trust_remote_code=True)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        push_to_hub.main(["--model_dir", str(broken), "--repo_id", "someone/x", "--dry_run", str(tmp_path / "up")])
    assert "missing tensor" in capsys.readouterr().err and not (tmp_path / "up").exists()


def test_clear_messages_instead_of_tracebacks(tiny_run, tmp_path):
    dataset = json.loads((tiny_run / "run_info.json").read_text())["dataset"]

    def mmsa(*args, argv_bytes=None):
        command = [sys.executable, "-m", "mmsa.cli", *args]
        if argv_bytes is not None:
            command = [os.fsencode(c) for c in command] + argv_bytes
        return subprocess.run(command, capture_output=True, cwd=ROOT)

    split = mmsa("evaluate", "--model", str(tiny_run), "--dataset", dataset, "--split", "dev")
    assert split.returncode == 2 and b"has no split 'dev'; its splits are train, validation, test" in split.stderr
    folder = mmsa("predict", "--model", str(tmp_path / "no_such_model"), "--text", "hi")
    assert folder.returncode == 2 and b"does not exist" in folder.stderr and b"Repo id" not in folder.stderr
    text = mmsa("predict", "--model", str(tiny_run), argv_bytes=[b"--text", b"caf\xe9"])
    assert text.returncode == 2 and b"not valid Unicode" in text.stderr
    for completed in (split, folder, text):
        assert b"Traceback" not in completed.stderr


def test_cli_predict_single_batch_and_evaluate(tiny_run, tmp_path, capsys):
    posts = example_posts(tmp_path)
    cli.run(["predict", "--model", str(tiny_run), "--text", "i love this", "--image", str(tmp_path / "photo.png")])
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = cli.load_classifier(str(tiny_run))({"text": "i love this", "image": str(tmp_path / "photo.png")})
    assert single[0]["label"] == expected[0]["label"] and single[0]["score"] == pytest.approx(expected[0]["score"])

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    rows = [
        {"id": "a", "text": posts[0]["text"], "image": "photo.png"},
        {"id": "b", "text": "fine", "image": "missing.jpg"},
        {"id": "c", "text": "", "image": "photo.png"},
        {"id": "d", "text": "ok", "image": "broken.jpg"},
        {"id": "e", "text": "great day", "image": "photo.png"},
    ]
    lines = [json.dumps(r) for r in rows[:3]] + ["{not json"] + [json.dumps(r) for r in rows[3:]]
    (tmp_path / "posts.jsonl").write_text("\n".join(lines) + "\n")
    counts = cli.run(batch_argv(tiny_run, tmp_path, "--batch_size", "2", output="preds.jsonl"))
    assert counts == {"rows": 6, "predicted": 2, "errors": 4, "blank_lines": 0}
    records = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["id"] == "a" and "label" in records[0] and records[5]["id"] == "e" and "label" in records[5]
    assert "missing.jpg does not exist" in records[1]["error"]
    assert "text" in records[2]["error"] and records[3]["error"].startswith("invalid JSON")
    assert "cannot read image 'broken.jpg'" in records[4]["error"]

    raw = json.loads((tiny_run / "run_info.json").read_text())["dataset"]
    metrics = cli.run(["evaluate", "--model", str(tiny_run), "--dataset", raw, "--output_dir", str(tmp_path / "ev")])
    reported = json.loads((tiny_run / "test_results.json").read_text())
    for key in ("test_accuracy", "test_macro_f1", "test_weighted_f1"):
        assert metrics[key] == pytest.approx(reported[key])
    assert (tmp_path / "ev" / "test_confusion_matrix.png").is_file()
    assert (tmp_path / "ev" / "test_reliability_diagram.png").is_file()


def test_console_script_exits_zero(tiny_run, tmp_path):
    example_posts(tmp_path)
    command = [
        "mmsa",
        "predict",
        "--model",
        str(tiny_run),
        "--text",
        "i love this",
        "--image",
        str(tmp_path / "photo.png"),
        "--dtype",
        "bfloat16",
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    printed = json.loads(completed.stdout.strip().splitlines()[-1])
    expected = cli.load_classifier(str(tiny_run), dtype="bfloat16")(
        {"text": "i love this", "image": str(tmp_path / "photo.png")}
    )
    assert printed[0]["label"] == expected[0]["label"] and printed[0]["score"] == pytest.approx(expected[0]["score"])
    failed = subprocess.run(command[:-2] + ["--dtype", "int8"], capture_output=True, text=True)
    assert failed.returncode == 2 and "invalid choice: 'int8'" in failed.stderr


@pytest.mark.slow
def test_batch_prediction_shards_over_two_accelerate_processes(tiny_run, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m mmsa.cli predict`, on a machine without GPUs: two CPU
    processes, one output with every row once, in input order, the same predictions as one process."""
    example_posts(tmp_path)
    lines = [json.dumps({"id": i, "text": f"post number {i} is {'great' if i % 2 else 'sad'}", "image": "photo.png"})
             for i in range(11)]  # fmt: skip
    lines[3], lines[8] = "{not json", json.dumps({"id": 8, "text": "", "image": "photo.png"})
    (tmp_path / "posts.jsonl").write_text("\n".join(lines) + "\n")
    outputs = {}
    for name, launcher in (
        ("one", [sys.executable, "-m", "mmsa.cli"]),
        ("two", [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--main_process_port", "29531", "-m", "mmsa.cli"]),
    ):  # fmt: skip
        out = tmp_path / f"{name}.jsonl"
        run = subprocess.run(
            [*launcher, "predict", "--model", str(tiny_run), "--input", str(tmp_path / "posts.jsonl"), "--output",
             str(out), "--all_scores"],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""},
        )  # fmt: skip
        # the two bad rows: status 3, which the launcher reports as a failed process (status 1)
        assert run.returncode == (cli.ROWS_FAILED_STATUS if name == "one" else 1), run.stderr[-3000:]
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
        if name == "two":
            assert "11 rows: 9 predicted by 2 processes, 2 failed" in run.stderr
            assert not list(tmp_path.glob(".two.jsonl.part*"))  # the parts were joined and removed
    one, two = outputs["one"], outputs["two"]
    assert [r["line"] for r in two] == [r["line"] for r in one] == list(range(1, 12))
    for a, b in zip(one, two):
        assert a.keys() == b.keys() and a.get("error") == b.get("error") and a.get("id") == b.get("id")
        assert [s["label"] for s in a.get("scores", [])] == [s["label"] for s in b.get("scores", [])]
        assert [s["score"] for s in a.get("scores", [])] == pytest.approx([s["score"] for s in b.get("scores", [])])
