"""The `multimodal-sentiment` pipeline: inputs and outputs, remote code, fast paths."""

import functools
import http.server
import threading

import pytest
import torch
from PIL import Image
from transformers import pipeline

from mmsa import cli
from mmsa.testing_utils import example_posts


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


@pytest.fixture
def image_server(tmp_path):
    Image.new("RGB", (30, 30), (10, 200, 10)).save(tmp_path / "served.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/served.png"
    server.shutdown()


def test_pipeline_inputs_and_outputs(run_dir, tmp_path, image_server):
    classifier = pipeline("multimodal-sentiment", model=str(run_dir), trust_remote_code=True)
    assert type(classifier).__name__ == "MultimodalSentimentPipeline"
    in_library = cli.load_classifier(str(run_dir))  # the installed package's class, no code from the folder
    assert type(in_library).__module__ == "mmsa.pipeline_mmsa"
    posts = example_posts(tmp_path) + [{"text": "i love this", "image": image_server}]
    best = classifier(posts[0])
    assert len(best) == 1 and set(best[0]) == {"label", "score"}
    everything = classifier(posts, batch_size=3, top_k=None)
    assert len(everything) == 4 and all(len(p) == 3 for p in everything)
    assert all(abs(sum(o["score"] for o in p) - 1) < 1e-5 for p in everything)
    one_by_one = [classifier(p, top_k=None) for p in posts]
    for batched, single in zip(everything, one_by_one):
        assert [o["label"] for o in batched] == [o["label"] for o in single]
        assert [o["score"] for o in batched] == pytest.approx([o["score"] for o in single], abs=1e-5)
    url_image = Image.open(tmp_path / "served.png")
    from_pil = classifier({"text": "i love this", "image": url_image}, top_k=None)
    assert [o["label"] for o in from_pil] == [o["label"] for o in everything[3]]
    assert [o["score"] for o in from_pil] == pytest.approx([o["score"] for o in everything[3]], abs=1e-6)
    with pytest.raises(ValueError, match="empty 'text'"):
        classifier({"text": " ", "image": posts[0]["image"]})


def test_pipeline_fast_paths_agree_with_float32(run_dir, tmp_path):
    posts = example_posts(tmp_path)
    default = cli.load_classifier(str(run_dir))
    reference = default(posts, batch_size=3, top_k=None)
    vision_weights = [
        m.weight
        for m in default.model.mmsa.vision_model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)
    ]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in vision_weights)
    for options in ({"dtype": "bfloat16"}, {"torch_compile": True}):
        classifier = cli.load_classifier(str(run_dir), **options)
        if "dtype" in options:
            assert classifier.model.dtype == torch.bfloat16
        fast = classifier(posts, batch_size=3, top_k=None)
        for got, expected in zip(fast, reference):
            scores = {o["label"]: o["score"] for o in got}
            assert [scores[o["label"]] for o in expected] == pytest.approx(
                [o["score"] for o in expected], abs=0.03 if "dtype" in options else 1e-4
            )
    remote = pipeline("multimodal-sentiment", model=str(run_dir), trust_remote_code=True, dtype=torch.bfloat16)
    assert remote.model.dtype == torch.bfloat16 and len(remote(posts[0], top_k=None)) == 3
    with pytest.raises(ValueError, match="dtype must be one of"):
        cli.load_classifier(str(run_dir), dtype="int8")
