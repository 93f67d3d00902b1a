"""The `multimodal-sentiment` pipeline: `{"text": ..., "image": ...}` in, `{"label", "score"}` out."""

import torch
from transformers import Pipeline

from .image_io import DEFAULT_IMAGE_TIMEOUT
from .posts import read_post


class MultimodalSentimentPipeline(Pipeline):
    """Classifies image + text posts.

    ```python
    >>> from transformers import pipeline
    >>> classifier = pipeline("multimodal-sentiment", model="path/or/repo", trust_remote_code=True)
    >>> classifier({"text": "what a day #sunny", "image": "photo.jpg"})
    [{'label': 'positive', 'score': 0.91}]
    >>> classifier([post_a, post_b], batch_size=16, top_k=None)  # every label, for each post
    ```

    `image` is a PIL image, a file path or an http(s) URL, read by `load_rgb_image` as in training (EXIF
    orientation applied; a URL must arrive within `timeout` seconds, default 10: `classifier(post, timeout=3)` or
    `pipeline(..., timeout=3)`); a model built for one modality (`text_only`, `image_only`) needs only that key.
    `top_k=1` (default) gives the best label, `top_k=None` all labels. A model with modality heads also tells what the
    text alone and the image alone convey: `classifier(post, return_modalities=True)` gives `{"scores": [...],
    "text_sentiment": {"label", "score"}, "image_sentiment": {"label", "score"}}`.

    For speed: the image tower runs in channels-last memory format; `dtype=torch.bfloat16` halves the precision
    (on CPUs with AVX512-BF16/AMX and recent GPUs), and `torch_compile=True` compiles the image tower
    (`MmsaPreTrainedModel.optimize_for_inference`), at the cost of a compilation on the first batch of each size.
    """

    _load_processor = True
    _load_tokenizer = True
    _load_image_processor = True
    _load_feature_extractor = False

    def __init__(self, *args, torch_compile: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.model.optimize_for_inference(channels_last=True, compile_vision=torch_compile)

    def _sanitize_parameters(self, top_k="", timeout=None, return_modalities=None, **kwargs):
        preprocess, postprocess = {}, {}
        if return_modalities is not None:
            postprocess["return_modalities"] = return_modalities
        if timeout is not None:
            if not isinstance(timeout, (int, float)) or timeout <= 0:
                raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
            preprocess["timeout"] = timeout
        if top_k != "":
            postprocess["top_k"] = top_k
        return preprocess, {}, postprocess

    def preprocess(self, inputs, timeout=DEFAULT_IMAGE_TIMEOUT):
        config = self.model.config
        post = read_post(
            inputs,
            config.uses_text,
            config.uses_vision,
            timeout=timeout,
            draft=getattr(self.image_processor, "draft_size", None),
        )
        return dict(self.processor(text=post.get("text"), images=post.get("image")))

    def _forward(self, model_inputs):
        outputs = self.model(**model_inputs)
        return {"logits": outputs.logits, "text_logits": outputs.text_logits, "image_logits": outputs.image_logits}

    def postprocess(self, model_outputs, top_k=1, return_modalities=False):
        results = ranked_labels(model_outputs["logits"][0], self.model.config.id2label)
        results = results if top_k is None else results[:top_k]
        if not return_modalities:
            return results
        if model_outputs.get("text_logits") is None:
            raise ValueError("return_modalities=True needs a model with modality heads (config.modality_heads)")
        return {
            "scores": results,
            **{
                f"{name}_sentiment": ranked_labels(model_outputs[f"{name}_logits"][0], self.model.config.id2label)[0]
                for name in ("text", "image")
            },
        }


def ranked_labels(logits, id2label) -> list[dict]:
    """`[{"label", "score"}, ...]` from one post's logits, best first (scores: the softmax probabilities)."""
    probabilities = torch.softmax(logits.float(), dim=-1)
    ranked = torch.argsort(probabilities, descending=True).tolist()
    return [{"label": id2label[i], "score": float(probabilities[i])} for i in ranked]


def multimodal_sentiment_pipeline(model, processor, **kwargs):
    """`pipeline("multimodal-sentiment", ...)` for a loaded model and processor (its tokenizer and image processor
    passed along, as the pipeline factory wants them); `kwargs` go to `transformers.pipeline`."""
    from transformers import pipeline

    return pipeline(
        "multimodal-sentiment",
        model=model,
        processor=processor,
        tokenizer=processor.tokenizer,
        image_processor=processor.image_processor,
        **kwargs,
    )


def save_for_pipeline(model, processor, save_directory) -> None:
    """Saves `model` and `processor` to `save_directory` as a folder the `multimodal-sentiment` pipeline loads, also
    without `mmsa` installed (`trust_remote_code=True`): through `Pipeline.save_pretrained`, which copies this file
    beside the model code and records the task in the config's `custom_pipelines` (the pipeline registry's save
    path). The model is readied for inference in place (`optimize_for_inference`), so call this last."""
    classifier = multimodal_sentiment_pipeline(model, processor)
    classifier.save_pretrained(save_directory)
    processor.save_pretrained(save_directory)
