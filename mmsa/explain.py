"""Why a model said what it said: word attributions, an image heatmap and each modality's share of the decision.

```python
from mmsa.explain import explain

explanation = explain(model, processor, "What a sunny day #happy", "photo.jpg")
explanation.label, explanation.probabilities   # the prediction explained
explanation.words                               # [("What", 0.01), ("sunny", 0.21), ...]: towards (+) / against (-)
explanation.heatmap                             # (height, width) array in [0, 1], at the image's own size
explanation.modality_shares                     # {"text": 0.7, "image": 0.3}
explanation.save_png("why.png"); explanation.to_html()
```

The methods are Captum's, applied to the probability of the explained class (the predicted one unless `target` is
given):

- **Words: integrated gradients** (`LayerIntegratedGradients` on the text tower's token embeddings, from a baseline
  post whose tokens are all padding, special tokens kept). A word's score is the sum over its sub-word tokens; the
  scores of all words plus the image's sum to the change in probability between the baseline and the post (up to
  `convergence_delta`). Positive: the word pushed towards the class; negative: away from it.
- **Image: integrated gradients** from the same run, with the image attributed at the image tower's stem
  convolution from an all-zero (mean-grey) baseline image: the attribution summed over channels, its positive part
  (evidence *for* the class), smoothed over 5x5 positions. `image_method="grad_cam"` uses Grad-CAM instead
  (`LayerGradCam` on the deepest feature map at least 7 positions wide, for the class score before the softmax).
  Either map is placed back on the original image over the region the model sees (timm's centre crop; 0 outside
  it) and scaled so that its maximum is 1.
- **Modality shares.** Fusions with a text head and an image head (`naive_combine`, `cmac`, `hstec`) take them from
  the heads: each head's log-probability of the class minus that of a uniform guess, as shares of their absolute
  sum. The others take them from the integrated-gradients run: each modality's summed attribution, as shares of
  their absolute sum.

Frozen towers are explained too: gradients flow through them at explain time.
"""

import base64
import html
import io
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .image_io import MAX_IMAGE_PIXELS
from .posts import read_post


WORD = re.compile(r"\S+")
OVERLAY_MAX_SIDE = 1024
"""The heatmap overlay is drawn at most this many pixels on its longer side."""


WORD_COLOURS = {"towards": ("red", (239, 68, 60)), "against": ("purple", (128, 90, 213))}
"""How a word's attribution is shaded, towards the explained label or against it (its strength sets the opacity):
the colours of the demo's `gradio.HighlightedText` for scores in [-1, 1], so that the demo, the HTML and the PNG
explanations agree."""
WORD_LEGEND = f"{WORD_COLOURS['towards'][0]}: towards the label, {WORD_COLOURS['against'][0]}: against"


@dataclass
class Explanation:
    """One explained prediction. See the module docstring for what each number means."""

    label: str
    """The explained class (the prediction, unless another `target` was asked for)."""
    probabilities: dict[str, float]
    """Every label's probability for this post."""
    words: list[tuple[str, float]]
    """The post's words as written (split on whitespace), each with its attribution towards `label`."""
    heatmap: np.ndarray | None
    """`(height, width)` relevance in [0, 1] at the image's own size (see `methods`); None for a text-only model."""
    modality_shares: dict[str, float]
    """`{"text": ..., "image": ...}`, summing to 1 (a single modality has 1.0)."""
    methods: dict[str, str]
    """The method behind `words`, `heatmap` and `modality_shares`."""
    text: str | None = None
    image: Image.Image | None = field(default=None, repr=False)
    predicted: str | None = None
    """The model's prediction (equal to `label` unless a `target` was given)."""
    convergence_delta: float | None = None
    """Integrated gradients' completeness gap: (sum of attributions) - (p(post) - p(baseline))."""
    truncated_words: int = 0
    """Words past the processor's `max_length`, which the model did not see (score 0)."""
    modality_sentiments: dict | None = None
    """With modality heads: `{"text": {"label", "score"}, "image": {...}}`, what each modality alone conveys."""

    def overlay(self, alpha: float = 0.5, max_side: int = OVERLAY_MAX_SIDE) -> Image.Image | None:
        """The image with the heatmap over it (red where the evidence lies), at most `max_side` pixels on its longer
        side: the colour map is applied at that display size, so a large photo costs no more memory than a small one."""
        if self.image is None or self.heatmap is None:
            return None
        import matplotlib

        image = self.image.convert("RGB")
        heatmap = Image.fromarray(self.heatmap.astype(np.float32), mode="F")
        if max(image.size) > max_side:
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image, heatmap = image.resize(size, Image.BILINEAR), heatmap.resize(size, Image.BILINEAR)
        values = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
        colours = (matplotlib.colormaps["jet"](values, bytes=True))[..., :3]
        return Image.blend(image, Image.fromarray(colours), alpha)

    def to_html(self) -> str:
        """A self-contained HTML fragment: probabilities, highlighted words, the image with its heatmap, shares."""
        scale = max([abs(score) for _, score in self.words] + [1e-12])
        spans = []
        for word, score in self.words:
            strength = abs(score) / scale
            red, green, blue = WORD_COLOURS["towards" if score >= 0 else "against"][1]
            colour = f"rgba({red}, {green}, {blue}, {strength:.2f})"
            spans.append(
                f'<span title="{score:+.4f}" style="background:{colour};padding:1px 2px;border-radius:3px">'
                f"{html.escape(word)}</span>"
            )
        bars = "".join(
            f"<tr><td>{html.escape(name)}</td><td><div style='background:#4a7;width:{200 * p:.0f}px;height:12px'>"
            f"</div></td><td>{p:.3f}</td></tr>"
            for name, p in sorted(self.probabilities.items(), key=lambda item: -item[1])
        )
        shares = ", ".join(f"{name} {share:.0%}" for name, share in self.modality_shares.items())
        parts = [
            "<div class='mmsa-explanation'>",
            f"<h3>{html.escape(self.label)}</h3><table>{bars}</table>",
            f"<p>{' '.join(spans)}</p>" if spans else "",
        ]
        overlay = self.overlay()
        if overlay is not None:
            buffer = io.BytesIO()
            overlay.save(buffer, format="PNG")
            encoded = base64.b64encode(buffer.getvalue()).decode()
            parts.append(f"<img alt='heatmap' style='max-width:320px' src='data:image/png;base64,{encoded}'/>")
        parts.append(f"<p>Modality shares: {html.escape(shares)}</p>")
        methods = "; ".join(f"{key}: {value}" for key, value in self.methods.items())
        parts.append(f"<p style='font-size:small'>{html.escape(methods)}</p></div>")
        return "\n".join(part for part in parts if part)

    def save_png(self, path) -> None:
        """A side-by-side figure: highlighted text, the image with its heatmap, probability bars and shares."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 0.9]})
        text_axis, image_axis, bar_axis = axes
        text_axis.axis("off")
        text_axis.set_title(f"words ({WORD_LEGEND})")
        scale = max([abs(score) for _, score in self.words] + [1e-12])
        x, y = 0.0, 0.92
        for word, score in self.words:
            width = 0.022 * (len(word) + 1)
            if x + width > 1.0:
                x, y = 0.0, y - 0.09
            rgb = WORD_COLOURS["towards" if score >= 0 else "against"][1]
            colour = (*(channel / 255 for channel in rgb), abs(score) / scale)
            text_axis.text(x, y, word, fontsize=11, bbox={"facecolor": colour, "edgecolor": "none", "pad": 1.5})
            x += width
        overlay = self.overlay()
        image_axis.axis("off")
        if overlay is not None:
            image_axis.imshow(overlay)
            method = self.methods.get("heatmap", "")
            image_axis.set_title("image: " + ("Grad-CAM" if "Grad-CAM" in method else "integrated gradients"))
        names = list(self.probabilities)
        bar_axis.barh(names, [self.probabilities[name] for name in names], color="#4a7")
        bar_axis.set_xlim(0, 1)
        shares = ", ".join(f"{name} {share:.0%}" for name, share in self.modality_shares.items())
        bar_axis.set_title(f"{self.label} | {shares}")
        figure.tight_layout()
        figure.savefig(path, dpi=100, format="png")
        plt.close(figure)

    def to_dict(self) -> dict:
        """JSON-ready: everything but the image and the heatmap array."""
        return {
            "label": self.label,
            "predicted": self.predicted,
            "probabilities": self.probabilities,
            "words": [[word, score] for word, score in self.words],
            "modality_shares": self.modality_shares,
            "methods": self.methods,
            "convergence_delta": self.convergence_delta,
            "truncated_words": self.truncated_words,
            "modality_sentiments": self.modality_sentiments,
        }


@contextmanager
def gradients_through_towers(model):
    """Lets gradients flow through frozen towers (their weights stay frozen: only activations get gradients)."""
    config = model.config
    saved = config.freeze_text_backbone, config.freeze_vision_backbone
    config.freeze_text_backbone = config.freeze_vision_backbone = False
    try:
        yield
    finally:
        config.freeze_text_backbone, config.freeze_vision_backbone = saved


def image_layers(model, input_size: int):
    """The image tower's stem convolution (for integrated gradients) and the feature map for Grad-CAM: the deepest
    stage still at least 7 positions wide for this input size (the last one at 224 px for ResNets and EfficientNets;
    an earlier one for small inputs, where the last map is too coarse to point at anything)."""
    timm_model = model.mmsa.vision_model.timm_model
    first_conv = (timm_model.pretrained_cfg or {}).get("first_conv") or "conv1"
    if isinstance(first_conv, (list, tuple)):
        first_conv = first_conv[0]
    stages = [info for info in timm_model.feature_info if input_size // info["reduction"] >= 7]
    stage = (stages or timm_model.feature_info[:1])[-1]["module"]
    return timm_model.get_submodule(first_conv), timm_model.get_submodule(stage)


def heatmap_on_image(cam: np.ndarray, size: tuple[int, int], data_config: dict) -> np.ndarray:
    """Places a `(h, w)` map over the model's input crop back on an image of `size` (width, height): timm's eval
    transform resizes the shorter side to `input / crop_pct` and takes the centre crop (or squashes the image)."""
    width, height = size
    crop = data_config["input_size"][-1]
    out = np.zeros((height, width), dtype=np.float32)
    if data_config.get("crop_mode", "center") == "squash":
        box = (0, 0, width, height)
    else:
        scale = (crop / data_config.get("crop_pct", 1.0)) / min(width, height)
        side_w, side_h = min(width, crop / scale), min(height, crop / scale)
        left, top = (width - side_w) / 2, (height - side_h) / 2
        box = (int(round(left)), int(round(top)), int(round(left + side_w)), int(round(top + side_h)))
    box_w, box_h = max(box[2] - box[0], 1), max(box[3] - box[1], 1)
    resized = np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((box_w, box_h), Image.BILINEAR))
    out[box[1] : box[1] + box_h, box[0] : box[0] + box_w] = resized[: height - box[1], : width - box[0]]
    out = np.clip(out, 0.0, None)
    return out / out.max() if out.max() > 0 else out


def word_scores(text: str, offsets, token_scores) -> tuple[list[tuple[str, float]], int]:
    """Sums token scores into the whitespace-separated words of `text` (tokens found by their character offsets);
    returns the words and how many of them no token reached (cut off by truncation)."""
    spans = [(match.start(), match.end(), match.group()) for match in WORD.finditer(text)]
    scores, seen = [0.0] * len(spans), [False] * len(spans)
    index = 0
    for (start, end), score in zip(offsets, token_scores):
        if end <= start:  # special tokens and padding
            continue
        while index < len(spans) and spans[index][1] <= start:
            index += 1
        if index < len(spans) and spans[index][0] <= start:
            scores[index] += float(score)
            seen[index] = True
    last_seen = max([i for i, flag in enumerate(seen) if flag], default=-1)
    return [(word, score) for (_, _, word), score in zip(spans, scores)], len(spans) - 1 - last_seen


def head_shares(model, inputs, target: int) -> dict[str, float] | None:
    """For two-head fusions (a text head, an image head): each head's log-probability of `target` minus a uniform
    guess's, as shares of their absolute sum."""
    if getattr(model.mmsa.fusion, "head_modalities", None) != ("text", "image"):
        return None
    with torch.no_grad():
        outputs = model.mmsa(**inputs)
        heads = [head(branch) for head, branch in zip(model.classifiers, outputs.branch_embeds)]
    uniform = -np.log(model.config.num_labels)
    contributions = [abs(float(torch.log_softmax(h, dim=-1)[0, target]) - float(uniform)) for h in heads]
    total = sum(contributions) or 1.0
    return {"text": contributions[0] / total, "image": contributions[1] / total}


def target_index(config, target, predicted: int) -> int:
    """The class to explain: `target` as a label name or index, or the prediction."""
    if target is None:
        return predicted
    if isinstance(target, str):
        if target not in config.label2id:
            raise ValueError(f"target {target!r} is not one of {list(config.label2id)}.")
        return int(config.label2id[target])
    return int(target)


def modality_sentiments(outputs, id2label) -> dict | None:
    """`{"text": {"label", "score"}, "image": {...}}` from a model with modality heads, else None."""
    if getattr(outputs, "text_logits", None) is None:
        return None
    sentiments = {}
    for name in ("text", "image"):
        modality = torch.softmax(getattr(outputs, f"{name}_logits").float(), dim=-1)[0]
        sentiments[name] = {"label": id2label[int(modality.argmax())], "score": float(modality.max())}
    return sentiments


def attribution_layers(model, processor, inputs: dict, keys: list[str]):
    """The layers integrated gradients attributes at (the token embeddings, the image tower's stem), their
    baselines (a post whose tokens are padding, special tokens kept; a zero image), and the deepest feature map for
    Grad-CAM."""
    layers, baselines, last_stage = [], [], None
    if "input_ids" in keys:
        special = torch.tensor(
            processor.tokenizer.get_special_tokens_mask(
                inputs["input_ids"][0].tolist(), already_has_special_tokens=True
            )
        ).bool()
        pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
        baselines.append(torch.where(special, inputs["input_ids"][0], pad).unsqueeze(0))
        layers.append(model.mmsa.text_model.get_input_embeddings())
    if "pixel_values" in keys:
        stem, last_stage = image_layers(model, inputs["pixel_values"].shape[-1])
        baselines.append(torch.zeros_like(inputs["pixel_values"]))
        layers.append(stem)
    return layers, baselines, last_stage


def image_heatmap(by_key, score, inputs, keys, last_stage, picture, processor, image_method, methods) -> np.ndarray:
    """The heatmap at the image's own size: the integrated gradients at the stem (positive part, smoothed over 5x5),
    or Grad-CAM on the deepest feature map."""
    from captum.attr import LayerGradCam

    if image_method == "grad_cam":
        cam = LayerGradCam(score, last_stage).attribute(tuple(inputs[key] for key in keys), relu_attributions=True)
        cam = cam.detach()[0].sum(dim=0)
        methods["heatmap"] = f"Grad-CAM (captum LayerGradCam) on the image tower's {cam.shape[0]}x{cam.shape[1]} map"
    else:
        cam = by_key["pixel_values"].detach()[0].sum(dim=0).clamp(min=0)
        cam = torch.nn.functional.avg_pool2d(cam[None, None], 5, stride=1, padding=2)[0, 0]
        methods["heatmap"] = "integrated gradients at the image tower's stem convolution, positive part"
    return heatmap_on_image(cam.numpy(), picture.size, processor.image_processor.data_config)


def text_attributions(by_key, processor, text: str, inputs, n_steps: int, methods) -> tuple[list, int]:
    """The words' scores (token attributions summed per whitespace word) and how many words truncation cut off."""
    token_scores = by_key["input_ids"].detach()[0].sum(dim=-1).numpy()
    encoded = processor.tokenizer(text, truncation=True, max_length=processor.max_length, return_offsets_mapping=True)
    if encoded["input_ids"] != inputs["input_ids"][0].tolist():
        raise RuntimeError("the tokenizer's offsets do not match the processor's tokens")
    words, truncated = word_scores(text, encoded["offset_mapping"], token_scores)
    if len(processor.tokenizer(text, truncation=False)["input_ids"]) <= processor.max_length:
        truncated = 0  # words no token reached (zero-width characters, say) were not cut off
    methods["words"] = f"integrated gradients (captum LayerIntegratedGradients, {n_steps} steps) on token embeddings"
    return words, truncated


def shares_of_modalities(model, config, inputs, by_key, target_id: int, methods) -> dict[str, float]:
    """Each modality's share of the decision: from the two heads where the fusion has them, else from the
    integrated gradients summed per modality."""
    if not (config.uses_text and config.uses_vision):
        methods["modality_shares"] = "a single modality"
        return {"text": 1.0} if config.uses_text else {"image": 1.0}
    shares = head_shares(model, inputs, target_id)
    if shares is not None:
        methods["modality_shares"] = "the text and image heads' log-probabilities of the class over a uniform guess"
        return shares
    sums = {"text": abs(float(by_key["input_ids"].sum())), "image": abs(float(by_key["pixel_values"].sum()))}
    total = sum(sums.values()) or 1.0
    methods["modality_shares"] = "integrated gradients summed over each modality (image at the stem conv)"
    return {name: value / total for name, value in sums.items()}


def explain(
    model,
    processor,
    text=None,
    image=None,
    target=None,
    n_steps: int = 16,
    image_method: str = "integrated_gradients",
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> Explanation:
    """Explains `model`'s prediction for one post (`text`, `image`: a PIL image, path, URL or bytes).

    `target`: the label (name or index) to explain, by default the predicted one. `n_steps`: integrated-gradients
    steps (more is more exact and slower; `Explanation.convergence_delta` tells how exact). `image_method`:
    `"integrated_gradients"` (the heatmap from the same run as the words) or `"grad_cam"`. An image of more than
    `max_pixels` pixels is refused before it is decoded (the heatmap is made at the image's own size)."""
    if image_method not in ("integrated_gradients", "grad_cam"):
        raise ValueError(f"image_method must be 'integrated_gradients' or 'grad_cam', got {image_method!r}.")
    from captum.attr import LayerIntegratedGradients

    config = model.config
    post = read_post({"text": text, "image": image}, config.uses_text, config.uses_vision, max_pixels=max_pixels)
    text, picture = post.get("text"), post.get("image")
    if text is not None and hasattr(processor, "normalize"):
        text = processor.normalize(text)  # the words explained are the words the model saw
    model.eval()
    inputs = dict(processor(text=text if config.uses_text else None, images=picture))
    with torch.no_grad():
        outputs = model(**inputs)
    probabilities = torch.softmax(outputs.logits.float(), dim=-1)[0]
    predicted = int(probabilities.argmax())
    target_id = target_index(config, target, predicted)
    keys = [key for key in ("input_ids", "pixel_values") if key in inputs]
    extra = {key: value for key, value in inputs.items() if key not in keys}

    def logits(*tensors):
        batch = {
            **dict(zip(keys, tensors)),
            **{k: v.expand(tensors[0].shape[0], *v.shape[1:]) for k, v in extra.items()},
        }
        return model(**batch).logits.float()

    def probability(*tensors):
        return torch.softmax(logits(*tensors), dim=-1)[:, target_id]

    def score(*tensors):  # the class score before the softmax, as Grad-CAM takes it (no saturation)
        return logits(*tensors)[:, target_id]

    layers, baselines, last_stage = attribution_layers(model, processor, inputs, keys)
    methods, heatmap, words, truncated = {}, None, [], 0
    with gradients_through_towers(model), warnings.catch_warnings():
        # the layers are independent (token embeddings, image stem), which captum cannot know
        warnings.filterwarnings("ignore", message="Multiple layers provided")
        attributor = LayerIntegratedGradients(probability, layers if len(layers) > 1 else layers[0])
        attributions, delta = attributor.attribute(
            tuple(inputs[key] for key in keys),
            baselines=tuple(baselines),
            n_steps=n_steps,
            internal_batch_size=n_steps,
            return_convergence_delta=True,
        )
        by_key = dict(zip(keys, attributions if isinstance(attributions, (list, tuple)) else [attributions]))
        if "pixel_values" in keys:
            heatmap = image_heatmap(by_key, score, inputs, keys, last_stage, picture, processor, image_method, methods)
    if "input_ids" in keys:
        words, truncated = text_attributions(by_key, processor, text, inputs, n_steps, methods)
    shares = shares_of_modalities(model, config, inputs, by_key, target_id, methods)
    return Explanation(
        label=config.id2label[target_id],
        probabilities={config.id2label[i]: float(p) for i, p in enumerate(probabilities)},
        words=words,
        heatmap=heatmap,
        modality_shares=shares,
        methods=methods,
        text=text if config.uses_text else None,
        image=picture,
        predicted=config.id2label[predicted],
        convergence_delta=float(delta.abs().max()),
        truncated_words=truncated,
        modality_sentiments=modality_sentiments(outputs, config.id2label),
    )


__all__ = ["Explanation", "explain"]
