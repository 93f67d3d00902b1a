"""Data for training: on-the-fly transforms of a `datasets` split (or its cached tower features) and the collator."""

import torch

from ..image_io import load_rgb_image


def make_transform(
    processor,
    training: bool,
    max_length: int,
    use_text: bool = True,
    use_images: bool = True,
    text_cache=None,
    image_cache=None,
    modality_labels: bool = False,
):
    """A `Dataset.with_transform` function: tokenises texts (unpadded; the collator pads) and turns images into
    `pixel_values` (random augmentation only when `training`); a frozen tower's inputs are replaced by its cached
    features, read by the `feature_row` column. With `modality_labels`, each post's `text_label` and `image_label`
    go along as `text_labels` and `image_labels` (for the modality heads)."""

    def transform(batch):
        out = {"labels": list(batch["label"])}
        if modality_labels:
            out["text_labels"], out["image_labels"] = list(batch["text_label"]), list(batch["image_label"])
        if use_text:
            if text_cache is not None:
                out.update(text_cache.rows(batch["feature_row"]))
            else:
                texts = processor.normalize(list(batch["text"])) if hasattr(processor, "normalize") else batch["text"]
                encoded = processor.tokenizer(list(texts), truncation=True, max_length=max_length)
                out.update({key: list(values) for key, values in encoded.items()})
        if use_images:
            if image_cache is not None:
                out.update(image_cache.rows(batch["feature_row"]))
            else:
                image_transform = (
                    processor.image_processor.train_transform if training else processor.image_processor.eval_transform
                )
                out["pixel_values"] = [image_transform(load_rgb_image(image)) for image in batch["image"]]
        return out

    return transform


class MmsaDataCollator:
    """Pads token ids (with the processor's tokenizer) or cached text token states, and stacks images, cached image
    features and labels."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, features: list[dict]) -> dict:
        batch = {}
        if "input_ids" in features[0]:
            text_keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in features[0]]
            batch.update(
                self.processor.tokenizer.pad([{k: f[k] for k in text_keys} for f in features], return_tensors="pt")
            )
        for key in ("text_tokens", "text_hidden_states"):  # cached token states, padded as the tokenizer pads
            if key in features[0]:
                tokens = [torch.as_tensor(f[key]) for f in features]
                batch[key] = torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True)
                batch["attention_mask"] = torch.nn.utils.rnn.pad_sequence(
                    [torch.as_tensor(f["attention_mask"], dtype=torch.long) for f in features], batch_first=True
                )
        for key in ("text_features", "pixel_values", "image_features", "image_tokens", "vision_hidden_states"):
            if key in features[0]:
                batch[key] = torch.stack([torch.as_tensor(f[key]) for f in features])
        for key in ("labels", "text_labels", "image_labels"):
            if key in features[0]:  # -1 (a post without that label) is the loss's ignore index
                values = torch.tensor([f[key] for f in features], dtype=torch.long)
                batch[key] = values.masked_fill(values < 0, -100)
        return batch


def fill_feature_caches(
    model, processor, dataset, max_length: int, cache_dir=None, device=None, main_process_first=None,
    hidden_states: bool = True, vision_hidden_states: bool = True,
):  # fmt: skip
    """Frozen towers' features of every split, computed once per post and read from disk afterwards
    (`mmsa.feature_cache`): `{split: {"text_cache": ..., "image_cache": ...}}` with only the frozen towers' (and,
    for a text tower trained by its top layers only, the hidden states its fixed part computes). Each
    split that has a cache gets a `feature_row` column that the transform reads them by; for an image tower trained
    by its last stages only, the feature maps its fixed part computes).

    Filled with every core (a frozen tower's forward pass gives the same features at any thread count); the
    caller's thread count is restored afterwards. `main_process_first(desc)`: the `TrainingArguments` context that
    lets the main process fill the cache before the others read it. `hidden_states` / `vision_hidden_states`: cache
    a partly trained text tower's hidden states (`cache_text_hidden_states`) / image tower's feature maps
    (`cache_vision_hidden_states`)."""
    from contextlib import nullcontext

    from ..feature_cache import (
        cache_image_features,
        cache_text_features,
        cache_text_hidden_states,
        cache_vision_hidden_states,
    )
    from .setup import cores_per_process

    config = model.config
    caches = {name: {} for name in dataset}
    cache_text = config.uses_text and config.freeze_text_backbone
    cache_hidden = hidden_states and config.uses_text and model.mmsa.first_trained_text_layer is not None
    cache_images = config.uses_vision and config.freeze_vision_backbone
    cache_maps = vision_hidden_states and config.uses_vision and model.mmsa.first_trained_vision_stage is not None
    if not (cache_text or cache_hidden or cache_images or cache_maps):
        return caches
    threads = torch.get_num_threads()
    torch.set_num_threads(cores_per_process())
    model.mmsa.to(device or "cpu")
    first = main_process_first or (lambda desc: nullcontext())
    try:
        for name in dataset:
            with first(f"caching frozen features ({name})"):
                if cache_text:
                    caches[name]["text_cache"] = cache_text_features(
                        model.mmsa,
                        processor.tokenizer,
                        dataset[name],
                        max_length,
                        with_tokens=config.uses_tokens,
                        cache_dir=cache_dir,
                        desc=f"text features ({name})",
                        normalization=getattr(processor, "text_normalization", "none"),
                    )
                if cache_hidden:  # a partly trained text tower: the states its fixed part computes
                    caches[name]["text_cache"] = cache_text_hidden_states(
                        model.mmsa,
                        processor.tokenizer,
                        dataset[name],
                        max_length,
                        cache_dir=cache_dir,
                        desc=f"text hidden states ({name})",
                        normalization=getattr(processor, "text_normalization", "none"),
                    )
                if cache_images:
                    caches[name]["image_cache"] = cache_image_features(
                        model.mmsa,
                        processor.image_processor,
                        dataset[name],
                        with_tokens=config.uses_tokens,
                        cache_dir=cache_dir,
                        desc=f"image features ({name})",
                    )
                if cache_maps:  # a partly trained image tower: the feature maps its fixed part computes
                    caches[name]["image_cache"] = cache_vision_hidden_states(
                        model.mmsa,
                        processor.image_processor,
                        dataset[name],
                        cache_dir=cache_dir,
                        desc=f"image feature maps ({name})",
                    )
            dataset[name] = dataset[name].add_column("feature_row", list(range(len(dataset[name]))))
    finally:
        torch.set_num_threads(threads)
    return caches


class PreparedSplits:
    """The splits of a run as the `Trainer` reads them: `splits("train", training=True)` is the split (or the
    `rows` of it) with the transform for this model (its cached features where a tower is frozen and cached, the
    augmenting image transform when `training`)."""

    def __init__(self, dataset, caches: dict, processor, config, max_length: int):
        self.dataset, self.caches, self.processor, self.config, self.max_length = (
            dataset,
            caches,
            processor,
            config,
            max_length,
        )

    def __call__(self, name: str, training: bool, rows=None):
        from datasets import Image as ImageFeature

        split = self.dataset[name] if rows is None else self.dataset[name].select(rows)
        if "image_cache" in self.caches[name]:  # the images are never read: do not decode them for each row
            split = split.cast_column("image", ImageFeature(decode=False))
        return split.with_transform(
            make_transform(
                self.processor,
                training=training,
                max_length=self.max_length,
                use_text=self.config.uses_text,
                use_images=self.config.uses_vision,
                modality_labels=self.config.modality_heads,
                **self.caches[name],
            )
        )
