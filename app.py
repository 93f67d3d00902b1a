"""Try a model in the browser: a Gradio demo that classifies an image + text post and shows why.

    python app.py [--model runs/offline_minilm_effnet] [--server_port 7860] [--share]
    python app.py --model someone/mmsa-model --trust_remote_code --revision <commit>

`--model` is a saved model folder (default: the main job's output) or a Hub id. The `mmsa` classes load it in-library;
`--trust_remote_code` (with a pinned `--revision`) runs the repository's own code instead, for models this version of
`mmsa` does not know. Nothing is shared publicly unless `--share` is given. On a Hugging Face Space this file is the
app (see `space/README.md`); the Space sets `MMSA_MODEL` to the model's Hub id.
"""

import argparse
import os
from pathlib import Path

import gradio as gr

import mmsa  # noqa: F401  (registers the mmsa model type with the Auto classes)
from mmsa.explain import explain
from mmsa.processing_mmsa import load_rgb_image


EXAMPLES = Path(__file__).resolve().parent / "examples"
DEFAULT_MODEL = "runs/offline_minilm_effnet"


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


def build_demo(model, processor, n_steps: int = 16) -> gr.Blocks:
    """The Blocks app for a loaded model and processor."""
    config = model.config

    def run(image, image_url, text):
        if config.uses_text and not (text or "").strip():
            raise gr.Error("Please type the post's text.")
        if config.uses_vision:
            if image is None and not (image_url or "").strip():
                raise gr.Error("Please upload an image or give an image URL.")
            try:
                picture = load_rgb_image(image if image is not None else image_url.strip())
            except Exception as error:  # unreadable upload, bad URL, time-out, HTTP error
                raise gr.Error(f"Cannot read the image: {error}") from error
        else:
            picture = None
        try:
            explanation = explain(model, processor, text if config.uses_text else None, picture, n_steps=n_steps)
        except ValueError as error:
            raise gr.Error(str(error)) from error
        scale = max([abs(score) for _, score in explanation.words] + [1e-12])
        words = [(word, score / scale) for word, score in explanation.words]
        return (
            explanation.probabilities,
            words,
            explanation.overlay(),
            explanation.modality_shares,
        )

    with gr.Blocks(title="Multimodal sentiment (mmsa)") as demo:
        gr.Markdown(
            "# Multimodal sentiment\nAn image and its text, classified as negative, neutral or positive, with the "
            "words and image regions that drove the decision (integrated gradients) and each modality's share."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"])
                image_url = gr.Textbox(label="…or an image URL", placeholder="https://…")
                text = gr.Textbox(label="Text", lines=3, placeholder="What the post says")
                submit = gr.Button("Classify and explain", variant="primary")
            with gr.Column():
                label = gr.Label(label="Sentiment", num_top_classes=len(config.id2label), elem_id="label")
                words = gr.HighlightedText(
                    label="Words, shaded by attribution (red: towards the label, blue: against)",
                    elem_id="words",
                )
                heatmap = gr.Image(label="Image evidence (heatmap)", type="pil", elem_id="heatmap")
                shares = gr.Label(label="Modality shares", elem_id="shares")
        submit.click(run, [image, image_url, text], [label, words, heatmap, shares], api_name="explain")
        gr.Examples(example_posts(), [image, text], label="Example posts (made for this demo)")
        gr.Markdown(
            "Methods: see the `mmsa.explain` docs. Scores of words are relative (the largest is ±1). "
            "Nothing you submit is stored."
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
    args = parser.parse_args(argv)
    if not Path(args.model).is_dir() and args.model == DEFAULT_MODEL:
        parser.error(f"{DEFAULT_MODEL} does not exist: run the main job first (README), or pass --model")
    model, processor = load(args.model, args.trust_remote_code, args.revision)
    build_demo(model, processor, args.steps).launch(
        server_name=args.server_name, server_port=args.server_port, share=args.share
    )


if __name__ == "__main__":
    main()
