"""Try a model in the browser: a Gradio demo that classifies an image + text post and shows why.

    python app.py [--model runs/offline_minilm_effnet] [--server_port 7860] [--share]
    python app.py --model someone/mmsa-model --trust_remote_code --revision <commit>

`--model` is a saved model folder (default: the main job's output) or a Hub id. The `mmsa` classes load it in-library;
`--trust_remote_code` (with a pinned `--revision`) runs the repository's own code instead, for models this version of
`mmsa` does not know. Nothing is shared publicly unless `--share` is given. The image URL box fetches only public
http(s) addresses; `--allow_private_urls` lifts that for a demo on your own machine. On a Hugging Face Space this file is the
app (see `space/README.md`); the Space sets `MMSA_MODEL` to the model's Hub id.
"""

import argparse
import hashlib
import os
import threading
from pathlib import Path

import gradio as gr

import mmsa  # noqa: F401  (registers the mmsa model type with the Auto classes)
from mmsa.explain import WORD_LEGEND, explain
from mmsa.image_io import DEFAULT_IMAGE_TIMEOUT, MAX_IMAGE_DOWNLOAD_BYTES, MAX_IMAGE_PIXELS, fetch_url, is_url
from mmsa.posts import InvalidPost, read_post


EXAMPLES = Path(__file__).resolve().parent / "examples"
DEFAULT_MODEL = "runs/offline_minilm_effnet"
MAX_TEXT_CHARACTERS = 5000
MAX_UPLOAD = "20mb"
CACHE_SECONDS = 300
"""Gradio's copies of what the demo shows (heatmaps, example images) are deleted this many seconds after they were
made; uploads are deleted as soon as they are read."""
URL_ONLY = "The image URL must start with http:// or https://."
UPLOAD_UNREADABLE = "The uploaded file cannot be read as an image."


def url_unavailable(timeout: float) -> str:
    """The one message of every refused or failed URL (so that the demo tells nothing about the server's network)."""
    return (
        "No image could be fetched from that URL. Only public http(s) addresses are fetched, within "
        f"{timeout:g} s and {MAX_IMAGE_DOWNLOAD_BYTES // (1024 * 1024)} MB."
    )


def uploaded_image(**kwargs) -> gr.Image:
    """A `gr.Image` whose upload reaches the app as its file path, undecoded (`mmsa.posts.read_post` decodes it),
    and whose unreadable uploads get the app's own message instead of Gradio's generic error. (Its `preprocess` is
    wrapped on the instance: a subclass would make Gradio write a type stub beside this file.)"""
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except Exception as error:  # Pillow cannot even open it (not an image, a decompression bomb)
            if payload is not None and getattr(payload, "path", None):
                Path(payload.path).unlink(missing_ok=True)
            raise gr.Error(UPLOAD_UNREADABLE) from error

    component.preprocess = checked
    return component


def load(model_id: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
    model = AutoModelForSequenceClassification.from_pretrained(model_id, **kwargs).eval()
    return model, AutoProcessor.from_pretrained(model_id, **kwargs)


def example_posts() -> list[list[str]]:
    """The example posts that ship with the repository (`examples/`: images and texts made for the demo)."""
    import json

    posts = [json.loads(line) for line in (EXAMPLES / "posts.jsonl").read_text().splitlines() if line.strip()]
    return [[str(EXAMPLES / post["image"]), post["text"]] for post in posts]


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def take_upload(path: str, keep: set[str]) -> bytes:
    """The bytes of an uploaded file, which is then deleted (unless it is a copy of an example image, which Gradio
    serves again on the next click)."""
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() not in keep:
        Path(path).unlink(missing_ok=True)
        try:
            Path(path).parent.rmdir()  # Gradio keeps each upload in a folder of its own
        except OSError:
            pass
    return data


def build_demo(
    model,
    processor,
    n_steps: int = 16,
    allow_private_urls: bool = False,
    timeout: float = DEFAULT_IMAGE_TIMEOUT,
    concurrency: int = 4,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> gr.Blocks:
    """The Blocks app for a loaded model and processor.

    Every input is treated as hostile: the URL box takes only http(s) URLs, fetched (unless `allow_private_urls`)
    only from public addresses, each redirect checked, within `timeout` seconds for the whole download; every
    refusal and failure of a URL gets one message. Images of more than `max_pixels` pixels are refused before they
    are decoded. `concurrency` requests run side by side, so a slow URL does not hold up other visitors; the model
    itself explains one post at a time."""
    config = model.config
    model_lock = threading.Lock()  # explanations lift the towers' freeze flags for the call: one at a time
    keep = {file_digest(image) for image, _ in example_posts()}

    def read_image(image, image_url):
        if image is not None:
            return take_upload(image, keep)
        if not (image_url or "").strip():
            raise gr.Error("Please upload an image or give an image URL.")
        if not is_url(image_url.strip()):
            raise gr.Error(URL_ONLY)
        try:
            return fetch_url(image_url.strip(), timeout, allow_private=allow_private_urls)
        except (OSError, ValueError) as error:  # refused, unreachable, HTTP error, time-out, too large
            raise gr.Error(url_unavailable(timeout)) from error

    def run(image, image_url, text):
        if config.uses_text and not (text or "").strip():
            raise gr.Error("Please type the post's text.")
        if config.uses_text and len(text) > MAX_TEXT_CHARACTERS:
            raise gr.Error(f"Please keep the text under {MAX_TEXT_CHARACTERS} characters.")
        data = read_image(image, image_url) if config.uses_vision else None
        try:
            post = read_post(
                {"text": text, "image": data}, config.uses_text, config.uses_vision, max_pixels=max_pixels
            )
        except InvalidPost as error:
            message = str(error)
            if message.startswith("cannot read image"):
                message = UPLOAD_UNREADABLE if image is not None else "The URL's content cannot be read as an image."
            raise gr.Error(message) from error
        with model_lock:
            try:
                explanation = explain(model, processor, post.get("text"), post.get("image"), n_steps=n_steps)
            except ValueError as error:
                raise gr.Error(str(error)) from error
        scale = max([abs(score) for _, score in explanation.words] + [1e-12])
        words = [(word, score / scale) for word, score in explanation.words]
        sentiments = explanation.modality_sentiments or {}
        return (
            explanation.probabilities,
            words,
            explanation.overlay(),
            explanation.modality_shares,
            {f"{name}: {item['label']}": item["score"] for name, item in sentiments.items()},
        )

    with gr.Blocks(title="Multimodal sentiment (mmsa)", delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as demo:
        gr.Markdown(
            "# Multimodal sentiment\nAn image and its text, classified as negative, neutral or positive, with the "
            "words and image regions that drove the decision (integrated gradients) and each modality's share."
        )
        with gr.Row():
            with gr.Column():
                image = uploaded_image(label="Image", sources=["upload", "clipboard"], format="png")
                image_url = gr.Textbox(label="…or an image URL", placeholder="https://…", max_length=2048)
                text = gr.Textbox(
                    label="Text", lines=3, placeholder="What the post says", max_length=MAX_TEXT_CHARACTERS
                )
                submit = gr.Button("Classify and explain", variant="primary")
            with gr.Column():
                label = gr.Label(label="Sentiment", num_top_classes=len(config.id2label), elem_id="label")
                words = gr.HighlightedText(
                    label=f"Words, shaded by attribution ({WORD_LEGEND})",
                    elem_id="words",
                )
                heatmap = gr.Image(label="Image evidence (heatmap)", type="pil", elem_id="heatmap")
                shares = gr.Label(label="Modality shares", elem_id="shares")
                modalities = gr.Label(
                    label="Each modality on its own (the text head and the image head)",
                    elem_id="modalities",
                    visible=bool(config.modality_heads),
                )
        submit.click(
            run,
            [image, image_url, text],
            [label, words, heatmap, shares, modalities],
            api_name="explain",
            concurrency_limit=concurrency,
        )
        gr.Examples(example_posts(), [image, text], label="Example posts (made for this demo)")
        gr.Markdown(
            "Methods: see the `mmsa.explain` docs. Scores of words are relative (the largest is ±1). "
            "Uploaded images are deleted as soon as they are read, and the results shown are deleted from the "
            f"server within {CACHE_SECONDS // 60} minutes; nothing you submit is kept."
        )
    return demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("MMSA_MODEL", DEFAULT_MODEL), help="folder or Hub id")
    parser.add_argument("--trust_remote_code", action="store_true", help="run the model repository's own code")
    parser.add_argument("--revision", default=None, help="Hub revision (pin a commit with --trust_remote_code)")
    parser.add_argument("--steps", type=int, default=16, help="integrated-gradients steps")
    parser.add_argument("--server_name", default="127.0.0.1")
    parser.add_argument("--server_port", type=int, default=None)
    parser.add_argument("--share", action="store_true", help="a public gradio.live link (off by default)")
    parser.add_argument(
        "--allow_private_urls",
        action="store_true",
        help="also fetch image URLs on loopback and private addresses (for a demo on your own machine only)",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_IMAGE_TIMEOUT, help="seconds an image URL may take")
    parser.add_argument("--concurrency", type=int, default=4, help="requests served side by side")
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir() and args.model == DEFAULT_MODEL:
        parser.error(f"{DEFAULT_MODEL} does not exist: run the main job first (README), or pass --model")
    if not args.timeout > 0 or args.concurrency < 1:
        parser.error("--timeout must be positive and --concurrency at least 1")
    model, processor = load(args.model, args.trust_remote_code, args.revision)
    demo = build_demo(
        model,
        processor,
        args.steps,
        allow_private_urls=args.allow_private_urls,
        timeout=args.timeout,
        concurrency=args.concurrency,
    )
    serve(demo, args.concurrency, server_name=args.server_name, server_port=args.server_port, share=args.share)


def serve(demo: gr.Blocks, concurrency: int = 4, **launch_kwargs):
    """Queues `concurrency` requests side by side and launches the app, with uploads capped at `MAX_UPLOAD`."""
    return demo.queue(default_concurrency_limit=concurrency).launch(max_file_size=MAX_UPLOAD, **launch_kwargs)


if __name__ == "__main__":
    main()
