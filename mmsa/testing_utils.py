"""Tiny random models, tokenizers and processors for tests and examples (no downloads)."""

from transformers import BertTokenizer

from .configuration_mmsa import MmsaConfig
from .feature_cache import FEATURE_VERSION
from .modeling_mmsa import MmsaForSequenceClassification
from .processing_mmsa import MmsaProcessor


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "i love this so much hate sad happy day the a # @ http : / . ! , good bad photo great awful"
).split()


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={word: i for i, word in enumerate(TINY_VOCAB)})


def tiny_config(fusion: str = "ote", **kwargs) -> MmsaConfig:
    """A BERT with one 32-wide layer and a ResNet-10 image tower, small enough for fast CPU tests."""
    text_config = dict(
        model_type="bert",
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    vision_config = dict(architecture="resnet10t", pretrained_cfg={"input_size": (3, 64, 64), "crop_pct": 1.0})
    defaults = dict(fusion_hidden_size=16, fusion_num_heads=4, classifier_hidden_size=8)
    defaults.update(kwargs)
    return MmsaConfig(text_config=text_config, vision_config=vision_config, fusion=fusion, **defaults)


def tiny_model_and_processor(fusion: str = "ote", seed: int = 0, **kwargs):
    import torch

    torch.manual_seed(seed)
    config = tiny_config(fusion, **kwargs)
    model = MmsaForSequenceClassification(config)
    processor = MmsaProcessor.from_model_config(config, tiny_tokenizer(), max_length=32)
    return model, processor


def write_fake_mvsa(root, posts, variant: str = "single", header: str | None = None, extra_rows=()):
    """Writes a raw MVSA release in the real format (CRLF, tab-separated, `text,image` pairs) under `root`.

    `posts`: `{id: (labels, text)}` where `labels` is one `"text,image"` string per annotator (one for MVSA-Single,
    three for MVSA-Multiple) and `text` is `str` (written as UTF-8) or `bytes` (written as is). Each post gets a small
    JPEG whose colour depends on its id. `extra_rows` are raw label lines appended as they are.
    """
    import io
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    annotators = 1 if variant == "single" else 3
    lines = [header if header is not None else "\t".join(["ID"] + ["text,image"] * annotators)]
    for post_id, (labels, text) in posts.items():
        labels = [labels] if isinstance(labels, str) else list(labels)
        lines.append("\t".join([str(post_id)] + labels))
        (data / f"{post_id}.txt").write_bytes(text if isinstance(text, bytes) else (text + " \n").encode("utf-8"))
        buffer = io.BytesIO()
        shade = (int(post_id) * 37) % 256
        Image.new("RGB", (24 + int(post_id) % 5, 20), (shade, 255 - shade, 90)).save(buffer, format="JPEG")
        (data / f"{post_id}.jpg").write_bytes(buffer.getvalue())
    lines.extend(extra_rows)
    (root / "labelResultAll.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return root


def fake_mvsa_posts(n: int = 40, seed: int = 0):
    """`n` posts for `write_fake_mvsa` whose texts carry their label (so tiny models can learn them)."""
    import random

    rng = random.Random(seed)
    words = {
        "positive": "i love this great happy day",
        "negative": "i hate this awful sad day",
        "neutral": "the photo of the day",
    }
    pairs = [
        "positive,positive",
        "negative,negative",
        "neutral,neutral",
        "neutral,positive",
        "negative,neutral",
        "positive,negative",
    ]
    posts = {}
    for post_id in range(1, n + 1):
        pair = pairs[rng.randrange(len(pairs))]
        text_label = pair.split(",")[0] if pair.split(",")[0] != "neutral" else pair.split(",")[1]
        posts[post_id] = (pair, f"{words[text_label]} #{post_id} @user http://t.co/x{post_id}")
    return posts


def write_tiny_towers(folder, seed: int = 0):
    """Saves the tiny random text tower (with its tokenizer) and image tower as `folder/text` and `folder/vision`,
    usable as `text_model_name_or_path` / `vision_model_name_or_path`."""
    from pathlib import Path

    model, processor = tiny_model_and_processor("naive_cat", seed=seed)
    folder = Path(folder)
    model.mmsa.text_model.save_pretrained(folder / "text")
    processor.tokenizer.save_pretrained(folder / "text")
    model.mmsa.vision_model.save_pretrained(folder / "vision")
    return folder / "text", folder / "vision"


def behaviour_probe(seed: int = 0, dtype: str = "float32") -> dict:
    """What today's modelling code computes, in a few numbers: for every fusion strategy, a tiny model is joined from
    tiny towers with `from_text_vision_pretrained` under a fixed seed (so the fusion layers' initialisation is
    covered), then its eval-mode logits on fixed posts and its logits after one AdamW step are recorded; the pixel
    means of a fixed EXIF-rotated RGBA image through the processor cover the image route. The order of each model's
    parameters is recorded too (`parameter_order`): it is the order in which gradient clipping sums the gradient
    norms, so a change of it alters a long training run without changing one step's logits beyond float noise.

    Results under `bench/results/` store this probe; a run whose probe differs from today's (beyond float noise)
    was trained by other modelling code. `dtype="float64"` computes it in double precision (`code_probe`, what the
    staleness check compares): float32 kernels round differently on other CPUs (AVX2 against AVX-512 convolutions
    move these logits by up to 6e-3), double-precision ones agree to far below the check's tolerance, so the float64
    probe identifies the code and not the machine.
    """
    import io
    import tempfile

    import numpy as np
    import torch
    from PIL import Image

    from .modeling_mmsa import FUSION_STRATEGIES

    torch.manual_seed(seed)
    texts = ["i love this great day", "i hate this awful photo !"]
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 56, 4), dtype=np.uint8), mode="RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", exif=exif)
    probe = {}
    with tempfile.TemporaryDirectory() as folder:
        text_dir, vision_dir = write_tiny_towers(folder, seed=seed)
        for fusion in (*FUSION_STRATEGIES, "ensemble"):  # every built-in strategy, the ensemble of them too
            torch.manual_seed(seed)
            # A wide initialiser, so that logits are of order 1 and any change of initialisation shows.
            model = MmsaForSequenceClassification.from_text_vision_pretrained(
                str(text_dir),
                str(vision_dir),
                fusion=fusion,
                fusion_hidden_size=16,
                fusion_num_heads=4,
                classifier_hidden_size=8,
                initializer_range=0.5,
            )
            processor = MmsaProcessor.from_model_config(model.config, tiny_tokenizer(), max_length=32)
            inputs = processor(text=texts, images=[image, Image.open(io.BytesIO(buffer.getvalue()))])
            if dtype == "float64":
                model = model.double()
                inputs["pixel_values"] = inputs["pixel_values"].double()
            model.eval()
            with torch.no_grad():
                before = model(**inputs).logits
            model.train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
            model(**inputs, labels=torch.tensor([2, 0])).loss.backward()
            optimizer.step()
            model.eval()
            with torch.no_grad():
                after = model(**inputs).logits
            probe[fusion] = [round(float(v), 6) for v in torch.cat([before.flatten(), after.flatten()])]
            probe[f"{fusion}_parameter_order"] = parameter_order(model)
        probe["pixels"] = [round(float(v), 6) for v in inputs["pixel_values"].mean(dim=(2, 3)).flatten()]
    probe["features"] = [FEATURE_VERSION]  # how frozen towers' features are computed and cached
    return probe


def parameter_order(model) -> list[int]:
    """A digest of the shapes of `model.parameters()` in iteration order: `[n]`, n the first 48 bits of the SHA-256
    of the JSON list of shapes (one number, so that it compares like the probe's other entries)."""
    import hashlib
    import json

    shapes = json.dumps([list(parameter.shape) for parameter in model.parameters()])
    return [int(hashlib.sha256(shapes.encode()).hexdigest()[:12], 16)]


def probe_keys(fusion: str) -> list[str]:
    """The `behaviour_probe` entries that determine a run of `fusion`: its logits, its parameter order, the pixels and
    the version of the cached features."""
    return [fusion, f"{fusion}_parameter_order", "pixels", "features"]


def code_probe(seed: int = 0) -> dict:
    """The behaviour probe in double precision: what identifies the modelling code whatever the CPU."""
    return behaviour_probe(seed, dtype="float64")


def probes_match(a: dict, b: dict, tolerance: float = 1e-4, keys=None) -> bool:
    """Whether two `behaviour_probe` results agree: every number within `tolerance`, over `keys` (all of them, and
    the same key set, when None). A run of one fusion is reproducible by other code when `probe_keys(fusion)` match."""
    if keys is None:
        if a.keys() != b.keys():
            return False
        keys = a.keys()
    if any(k not in a or k not in b for k in keys):
        return False
    return all(len(a[k]) == len(b[k]) and all(abs(x - y) <= tolerance for x, y in zip(a[k], b[k])) for k in keys)


def write_random_paper_towers(folder, tokenizer_source=None):
    """Randomly initialised towers of the paper's real shapes, BERT-base and timm `resnet50`, built from their
    configs (nothing downloaded), saved as `folder/text` (with a tokenizer: `tokenizer_source`'s, else the tiny one)
    and `folder/vision`, for exercising `configs/paper_bert_resnet50.yaml` offline."""
    from pathlib import Path

    from transformers import AutoModel, AutoTokenizer, BertConfig, TimmWrapperConfig

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source) if tokenizer_source else tiny_tokenizer()
    text = AutoModel.from_config(BertConfig(vocab_size=max(len(tokenizer), 30522)))  # bert-base-uncased's shape
    text.save_pretrained(folder / "text")
    tokenizer.save_pretrained(folder / "text")
    AutoModel.from_config(TimmWrapperConfig(architecture="resnet50")).save_pretrained(folder / "vision")
    return folder / "text", folder / "vision"


def example_posts(folder):
    """Three posts for pipeline and CLI tests, their images given three ways (a PIL image, a file path written to
    `folder/photo.png`, a greyscale PIL image)."""
    from pathlib import Path

    from PIL import Image

    image = Image.new("RGB", (70, 50), (200, 30, 30))
    image.save(Path(folder) / "photo.png")
    return [
        {"text": "i love this great day", "image": image},
        {"text": "sad awful", "image": str(Path(folder) / "photo.png")},
        {"text": "the photo", "image": Image.new("L", (20, 90), 100)},
    ]


TRAIN_ONLY_FLAGS = ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                    "--early_stopping_patience", "0", "--disable_tqdm", "true"]  # fmt: skip
"""`train_hf.py` flags for a run that only trains (no per-epoch evaluation or checkpoints), for tests and benchmarks
that time or inspect training steps."""


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Flags for Debian's chromium under Playwright (`executable_path="/usr/bin/chromium"`) on a machine without a
display or network."""


def launch_app(app, model, log_path, steps: int = 16, wait_seconds: float = 180.0, extra_args=()):
    """Starts the demo script `app` (a path to `app.py`, which lives beside the package in the repository, not in
    it) with `--model MODEL` on a free local port; returns `(process, url)` once it answers (the caller terminates
    the process). Raises RuntimeError with the end of the app's log if it exits or does not answer."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    app = Path(app)
    if not app.is_file():
        raise FileNotFoundError(f"{app} does not exist: launch_app needs the repository's app.py")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(log_path, "w")
    command = [sys.executable, str(app), "--model", str(model), "--server_port", str(port), "--steps", str(steps)]
    process = subprocess.Popen([*command, *extra_args], cwd=app.parent, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.close()
            raise RuntimeError(f"app.py exited: {Path(log_path).read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return process, url
        except OSError:
            time.sleep(0.5)
    process.terminate()
    log.close()
    raise RuntimeError(f"app.py did not answer within {wait_seconds:.0f} s")
