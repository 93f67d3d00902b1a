"""Runs a folder written by `mmsa export-onnx` with ONNX Runtime, numpy, Pillow and the tokenizer only: no torch,
torchvision or timm (`pip install "mmsa[onnx]"`).

```python
from mmsa.onnx_runtime import OnnxSentimentClassifier

classifier = OnnxSentimentClassifier("onnx/", variant="int8")
classifier({"text": "Sunny day at the beach", "image": "photo.jpg"})    # [{"label": "positive", "score": 0.93}]
```

`NumpyImageProcessor` reproduces timm's eval transform (resize of the shorter side to `input_size / crop_pct` with
Pillow, centre crop, scaling to [0, 1], normalisation) on numpy arrays, with the same Pillow calls as torchvision's
transforms, so its pixels equal `MmsaImageProcessor`'s (tested).
"""

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

from .image_io import load_rgb_image
from .text_normalization import normalize_texts


MANIFEST = "onnx_manifest.json"
PROCESSOR_FILE = "processor_config.json"
PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


class NumpyImageProcessor:
    """timm's eval transform for a tower's `pretrained_cfg`, on numpy: `processor(images)["pixel_values"]` is a
    float32 array `(batch, 3, height, width)`. `fast_decode` decodes JPEGs at a reduced scale no smaller than the
    resize (as `MmsaImageProcessor(fast_decode=True)`)."""

    def __init__(self, pretrained_cfg: dict, fast_decode: bool = False):
        crop_mode = pretrained_cfg.get("crop_mode") or "center"
        if crop_mode != "center":
            raise NotImplementedError(f"crop_mode={crop_mode!r}: only timm's 'center' eval transform is implemented.")
        self.input_size = tuple(pretrained_cfg["input_size"][-2:])
        if self.input_size[0] != self.input_size[1]:
            raise NotImplementedError(f"input_size {self.input_size}: only square inputs are implemented.")
        self.crop_pct = pretrained_cfg.get("crop_pct") or 0.875
        interpolation = pretrained_cfg.get("interpolation") or "bilinear"
        if interpolation not in PIL_INTERPOLATION:
            raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(PIL_INTERPOLATION)}.")
        self.resample = PIL_INTERPOLATION[interpolation]
        self.mean = np.asarray(pretrained_cfg.get("mean", (0.485, 0.456, 0.406)), dtype=np.float32)[:, None, None]
        self.std = np.asarray(pretrained_cfg.get("std", (0.229, 0.224, 0.225)), dtype=np.float32)[:, None, None]
        self.fast_decode = fast_decode

    @classmethod
    def from_pretrained(cls, folder, fast_decode: bool | None = None) -> "NumpyImageProcessor":
        """From an exported folder's `processor_config.json` (or a `preprocessor_config.json`)."""
        folder = Path(folder)
        for name in (PROCESSOR_FILE, "preprocessor_config.json"):
            if (folder / name).is_file():
                saved = json.loads((folder / name).read_text())
                saved = saved.get("image_processor", saved)
                break
        else:
            raise FileNotFoundError(f"{folder} holds neither {PROCESSOR_FILE} nor preprocessor_config.json")
        if "pretrained_cfg" not in saved:
            raise ValueError(f"{folder}: the image processor has no timm pretrained_cfg")
        decode = saved.get("fast_decode", False) if fast_decode is None else fast_decode
        return cls(saved["pretrained_cfg"], fast_decode=decode)

    @property
    def resize_size(self) -> int:
        return int(math.floor(self.input_size[0] / self.crop_pct))

    @property
    def draft_size(self) -> int | None:
        return self.resize_size if self.fast_decode else None

    def transform(self, image: Image.Image) -> np.ndarray:
        """One RGB image to a normalised `(3, height, width)` float32 array."""
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != (width, height):
            image = image.resize(size, self.resample)
        crop_height, crop_width = self.input_size
        top = int(round((image.height - crop_height) / 2.0))
        left = int(round((image.width - crop_width) / 2.0))
        image = image.crop((left, top, left + crop_width, top + crop_height))
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return (pixels - self.mean) / self.std

    def __call__(self, images) -> dict:
        """`images`: one image or a list (PIL images, paths, bytes or URLs, read by `load_rgb_image`)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        arrays = [self.transform(load_rgb_image(image, draft=self.draft_size)) for image in images]
        return {"pixel_values": np.stack(arrays)}


def read_manifest(folder: Path) -> dict:
    """An export's `onnx_manifest.json`, checked: JSON, the keys the runtime reads, and graph files that lie inside
    the folder (a manifest cannot point the runtime at a file elsewhere). Raises ValueError naming the file."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} is not an ONNX export of mmsa (no {MANIFEST}): make one with mmsa export-onnx")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); export again") from None
    problems = []
    if not isinstance(manifest, dict):
        problems.append("expected a JSON object")
    else:
        if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
            problems.append("'files' must map variants to graph files")
        if not isinstance(manifest.get("inputs"), list) or not all(
            isinstance(item, dict) and isinstance(item.get("name"), str) for item in manifest["inputs"]
        ):
            problems.append("'inputs' must be a list of {'name': ...}")
        if not isinstance(manifest.get("id2label"), dict):
            problems.append("'id2label' must map label ids to names")
        for variant, name in (manifest.get("files") or {}).items() if isinstance(manifest.get("files"), dict) else []:
            inside = isinstance(name, str) and (folder / name).resolve().parent == folder.resolve()
            if not inside:
                problems.append(f"file {name!r} of {variant!r} is not a file name inside {folder}")
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    return manifest


class MmsaOnnxModel:
    """An exported folder under ONNX Runtime: `model(**inputs)` takes the processor's outputs (numpy arrays or
    tensors) and returns numpy logits. `variant`: "float32" or "int8"."""

    def __init__(self, folder, variant: str = "float32", threads: int | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if variant not in self.manifest["files"]:
            raise ValueError(f"{self.folder} has no {variant!r} model (it has: {', '.join(self.manifest['files'])}).")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        graph = self.folder / self.manifest["files"][variant]
        if not graph.is_file():
            raise ValueError(f"{graph} does not exist: {MANIFEST} names it, so the export is incomplete; export again")
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's InvalidProtobuf, Fail, ...: a truncated or foreign file
            raise ValueError(
                f"{graph} is not a loadable ONNX model ({type(error).__name__}: {str(error)[:300]}); export again"
            ) from None
        self.input_names = [item["name"] for item in self.manifest["inputs"]]
        self.id2label = {int(k): v for k, v in self.manifest["id2label"].items()}
        self.uses_text = any(name != "pixel_values" for name in self.input_names)
        self.uses_vision = "pixel_values" in self.input_names
        # The model's config.json as attributes (fusion, id2label, ...), with what the graph's inputs say it uses.
        saved = json.loads((self.folder / "config.json").read_text())
        self.config = SimpleNamespace(
            **{**saved, "id2label": self.id2label, "uses_text": self.uses_text, "uses_vision": self.uses_vision}
        )
        self.variant = variant

    @classmethod
    def from_pretrained(cls, folder, variant: str = "float32", threads: int | None = None):
        return cls(folder, variant=variant, threads=threads)

    def __call__(self, **inputs) -> np.ndarray:
        return self.outputs(**inputs)["logits"]

    def outputs(self, **inputs) -> dict[str, np.ndarray]:
        """Every output of the graph by name: `logits`, and `text_logits` / `image_logits` with modality heads."""
        feed = {}
        for name in self.input_names:
            if name not in inputs:
                raise ValueError(f"the ONNX model needs {name!r}")
            value = inputs[name]
            feed[name] = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
        names = [output.name for output in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed)))


def load_tokenizer(folder):
    """The tokenizer saved in `folder`, by the class its `tokenizer_config.json` names (`AutoTokenizer` would read
    `config.json`, whose `mmsa` model type only the torch side of the package registers)."""
    import transformers

    name = json.loads((Path(folder) / "tokenizer_config.json").read_text()).get("tokenizer_class")
    tokenizer_class = getattr(transformers, name, None) if name else None
    return (tokenizer_class or transformers.PreTrainedTokenizerFast).from_pretrained(folder)


class OnnxSentimentClassifier:
    """The `multimodal-sentiment` pipeline's interface over an exported folder: `classifier(post_or_posts,
    batch_size=32, top_k=1)` with posts `{"text": ..., "image": ...}` (images as `load_rgb_image` reads them) gives
    the same records as the PyTorch pipeline (`[{"label", "score"}, ...]` per post, best first).

    Posts are batched by text length (less padding for the text tower; results in input order), and while ONNX
    Runtime scores one batch, a thread reads and preprocesses the next (Pillow releases the GIL while it decodes and
    resizes). `fast_decode` overrides the saved processor's setting.
    """

    def __init__(self, folder, variant: str = "float32", threads: int | None = None, fast_decode: bool | None = None):
        self.model = MmsaOnnxModel(folder, variant=variant, threads=threads)
        self.tokenizer = load_tokenizer(folder) if self.model.uses_text else None
        self.image_processor = NumpyImageProcessor.from_pretrained(folder, fast_decode=fast_decode)
        saved = (
            json.loads((Path(folder) / PROCESSOR_FILE).read_text())
            if (Path(folder) / PROCESSOR_FILE).is_file()
            else {}
        )
        self.max_length = saved.get("max_length", 128)
        self.text_normalization = saved.get("text_normalization", "none")

    def preprocess_text(self, posts: list[dict]) -> dict:
        """The graph's text inputs for a batch of posts (none for an image-only model)."""
        if not self.model.uses_text:
            return {}
        texts = normalize_texts([post["text"] for post in posts], self.text_normalization)
        return dict(
            self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        )

    def preprocess(self, posts: list[dict]) -> dict:
        """The graph's inputs for a batch of posts."""
        inputs = self.preprocess_text(posts)
        if self.model.uses_vision:
            inputs.update(self.image_processor([post["image"] for post in posts]))
        return inputs

    def ranked(self, logits: np.ndarray) -> list[list[dict]]:
        logits = logits.astype(np.float64)
        probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        id2label = self.model.id2label
        return [
            [{"label": id2label[int(i)], "score": float(row[i])} for i in np.argsort(-row, kind="stable")]
            for row in probabilities
        ]

    def postprocess(self, outputs: dict, top_k=1, return_modalities: bool = False) -> list:
        results = [ranked if top_k is None else ranked[:top_k] for ranked in self.ranked(outputs["logits"])]
        if not return_modalities:
            return results
        if "text_logits" not in outputs:
            raise ValueError("return_modalities=True needs a model with modality heads (config.modality_heads)")
        text, image = self.ranked(outputs["text_logits"]), self.ranked(outputs["image_logits"])
        return [
            {"scores": scores, "text_sentiment": t[0], "image_sentiment": i[0]}
            for scores, t, i in zip(results, text, image)
        ]

    def __call__(self, posts, batch_size: int = 32, top_k=1, return_modalities: bool = False):
        single = isinstance(posts, dict)
        posts = [posts] if single else list(posts)
        # Batches of posts of similar text length (the text tower's cost grows with the padded length); the
        # results come back in input order.
        order = list(range(len(posts)))
        if self.model.uses_text and len(posts) > batch_size:
            lengths = [
                len(ids)
                for ids in self.tokenizer([p["text"] for p in posts], truncation=True, max_length=self.max_length)[
                    "input_ids"
                ]
            ]
            order.sort(key=lengths.__getitem__)
        batches = [[posts[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]
        results = []
        with ThreadPoolExecutor(max_workers=1) as reader:
            upcoming = reader.submit(self.preprocess, batches[0]) if batches else None
            for index in range(len(batches)):
                inputs = upcoming.result()
                if index + 1 < len(batches):
                    upcoming = reader.submit(self.preprocess, batches[index + 1])
                results.extend(self.postprocess(self.model.outputs(**inputs), top_k, return_modalities))
        in_order = [None] * len(posts)
        for position, result in zip(order, results):
            in_order[position] = result
        return in_order[0] if single else in_order


__all__ = ["MmsaOnnxModel", "NumpyImageProcessor", "OnnxSentimentClassifier"]
