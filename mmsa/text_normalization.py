"""Text normalisations a processor can apply before tokenising (`MmsaProcessor(text_normalization=...)`), the same in
training, the feature cache and inference (the PyTorch and ONNX routes). Needs no torch.

- `"none"`: the text as it is.
- `"tweet"`: user mentions become `@USER` and URLs `HTTPURL` (placeholders, as BERTweet's normalisation does),
  `#hashtag` becomes `# hashtag` (the word is seen as a word), and emoji become their names (`😂` -> `face with
  tears of joy`, with the `emoji` package).
"""

import re


TEXT_NORMALIZATIONS = ("none", "tweet")
URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
MENTION = re.compile(r"(?<![\w@])@\w+")
HASHTAG = re.compile(r"(?<![\w#])#(\w+)")
SPACES = re.compile(r"\s+")


def normalize_tweet(text: str) -> str:
    """`text` with mentions, URLs, hashtags and emoji normalised (see the module docstring)."""
    import emoji

    text = URL.sub(" HTTPURL ", text)
    text = MENTION.sub(" @USER ", text)
    text = HASHTAG.sub(r"# \1", text)
    text = emoji.demojize(text, delimiters=(" ", " "))
    text = re.sub(r"(?<=\w)_(?=\w)", " ", text)  # the names' underscores ("face_with_tears_of_joy")
    return SPACES.sub(" ", text).strip()


def normalize_text(text: str, normalization: str = "none") -> str:
    """`text` under one of `TEXT_NORMALIZATIONS`; a text that normalises to nothing is kept as it is."""
    if normalization not in TEXT_NORMALIZATIONS:
        raise ValueError(f"text_normalization must be one of {TEXT_NORMALIZATIONS}, got {normalization!r}")
    if normalization == "none":
        return text
    return normalize_tweet(text) or text


def normalize_texts(texts, normalization: str = "none"):
    """`normalize_text` of one text or each text of a list."""
    if isinstance(texts, str):
        return normalize_text(texts, normalization)
    return [normalize_text(text, normalization) for text in texts]


__all__ = ["TEXT_NORMALIZATIONS", "normalize_text", "normalize_texts", "normalize_tweet"]
