"""Explanations: faithful word and image attributions on a trained model, every fusion, frozen towers, outputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmsa import MMSA_FUSIONS
from mmsa.explain import Explanation, explain, heatmap_on_image, word_scores
from mmsa.testing_utils import tiny_model_and_processor


pytest.importorskip("captum")

POSITIVE, NEGATIVE = ["love", "happy", "good", "great"], ["hate", "sad", "bad", "awful"]
FILLER = ["i", "this", "so", "much", "the", "a", "day", "photo"]
COLOURS = {0: (220, 30, 30), 1: (30, 30, 220), 2: (30, 200, 30)}  # negative red, neutral blue, positive green


def synthetic_post(rng, label: int, text_carries: bool = True, image_carries: bool = True, sentiment_words: int = 2):
    """A post whose label its sentiment words and/or its image's coloured square carry (a grey square otherwise)."""
    words = list(rng.choice(FILLER, size=5))
    if label != 1 and text_carries:
        for _ in range(sentiment_words):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POSITIVE if label == 2 else NEGATIVE)))
    pixels = np.full((64, 64, 3), 128, dtype=np.uint8)
    top, left = rng.integers(0, 40, size=2)
    pixels[top : top + 24, left : left + 24] = COLOURS[label] if image_carries else (90, 90, 90)
    return " ".join(words), Image.fromarray(pixels)


@pytest.fixture(scope="module")
def trained():
    """Tiny models trained on the synthetic task (negative vs positive posts, half of them carrying the label in the
    text only, half in the image only), one per fusion, fixed seeds, until both halves are learnt."""
    cache = {}

    def get(fusion):
        if fusion not in cache:
            # no dropout: the tiny widths (8-16) would drown in it
            model, processor = tiny_model_and_processor(
                fusion,
                seed=0,
                text_pooling="mean",
                projection_dropout=0.0,
                attention_dropout=0.0,
                classifier_dropout=0.0,
            )
            rng = np.random.default_rng(0)
            labels = [2 * int(v) for v in rng.integers(0, 2, size=64)]
            posts = [synthetic_post(rng, label, i % 2 == 0, i % 2 == 1) for i, label in enumerate(labels)]
            batch = processor(text=[t for t, _ in posts], images=[i for _, i in posts])
            targets = torch.tensor(labels)
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
            torch.manual_seed(0)
            accuracy = [0.0, 0.0]
            for step in range(1, 241):
                model.train()
                order = torch.randperm(len(labels))[:16]
                loss = model(**{k: v[order] for k, v in batch.items()}, labels=targets[order]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if step % 20 == 0:
                    model.eval()
                    with torch.no_grad():
                        right = (model(**batch).logits.argmax(-1) == targets).float()
                    accuracy = [right[0::2].mean().item(), right[1::2].mean().item()]  # text half, image half
                    if min(accuracy) >= 0.95:
                        break
            model.eval()
            cache[fusion] = model, processor, min(accuracy)
        return cache[fusion]

    return get


def log_odds(model, processor, text, image, label):
    """The class's log-odds, log p / (1 - p), from the logits: a drop in it shows on a model whose probability is
    saturated near 1 (as training on the synthetic task can make it), where a drop in p itself is lost in rounding."""
    with torch.no_grad():
        inputs = processor(text=text if model.config.uses_text else None, images=image)
        logits = model(**inputs).logits[0].double()
        others = torch.cat([logits[:label], logits[label + 1 :]])
        return (logits[label] - torch.logsumexp(others, dim=0)).item()


FAITHFUL = ["naive_combine", "ote", "cmac"]


@pytest.mark.parametrize("fusion", FAITHFUL)
def test_removing_the_top_word_hurts_more_than_removing_a_random_one(fusion, trained):
    model, processor, accuracy = trained(fusion)
    assert accuracy > 0.9, "the synthetic task was not learnt, so the check would mean nothing"
    rng = np.random.default_rng(1)
    top_drops, random_drops = [], []
    for label in (0, 2, 0, 2):
        # one sentiment word among five fillers, the image grey: the text decides
        text, image = synthetic_post(rng, label, image_carries=False, sentiment_words=1)
        explanation = explain(model, processor, text, image, target=label)
        words = [w for w, _ in explanation.words]
        base = log_odds(model, processor, text, image, label)
        top = {int(np.argmax([s for _, s in explanation.words]))}
        top_drops.append(base - log_odds(model, processor, keep(words, top), image, label))
        for _ in range(10):
            chosen = {int(rng.integers(len(words)))}
            random_drops.append(base - log_odds(model, processor, keep(words, chosen), image, label))
    assert np.mean(top_drops) > np.mean(random_drops) + 0.1, (top_drops, random_drops)


def keep(words, removed):
    return " ".join(w for i, w in enumerate(words) if i not in removed) or "the"


@pytest.mark.parametrize("fusion", FAITHFUL)
def test_masking_the_top_region_hurts_more_than_masking_a_random_one(fusion, trained):
    """Greying the fifth of the pixels with the highest heatmap values lowers the class's log-odds more than
    greying a random fifth."""
    model, processor, accuracy = trained(fusion)
    assert accuracy > 0.9
    rng = np.random.default_rng(2)
    top_drops, random_drops = [], []
    for label in (0, 2, 2, 0):
        text, image = synthetic_post(rng, label, text_carries=False)  # fillers only: the image decides
        explanation = explain(model, processor, text, image, target=label)
        heat = explanation.heatmap
        assert heat.shape == (image.height, image.width) and heat.max() == pytest.approx(1.0)
        base = log_odds(model, processor, text, image, label)
        count = heat.size // 5
        top = np.argsort(-heat, axis=None)[:count]
        top_drops.append(base - log_odds(model, processor, text, grey(image, top), label))
        for _ in range(5):
            chosen = rng.choice(heat.size, size=count, replace=False)
            random_drops.append(base - log_odds(model, processor, text, grey(image, chosen), label))
    assert np.mean(top_drops) > np.mean(random_drops) + 0.1, (top_drops, random_drops)


def grey(image, flat_indices):
    pixels = np.asarray(image).copy()
    pixels.reshape(-1, 3)[flat_indices] = 128
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fusion", sorted(MMSA_FUSIONS))
def test_every_fusion_is_explained(fusion):
    model, processor = tiny_model_and_processor(fusion)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    text = "i love this , so much"
    explanation = explain(model, processor, text, image)
    assert isinstance(explanation, Explanation)
    assert (
        explanation.label == explanation.predicted == max(explanation.probabilities, key=explanation.probabilities.get)
    )
    assert sum(explanation.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(explanation.modality_shares.values()) == pytest.approx(1.0)
    config = model.config
    if config.uses_text:
        assert [w for w, _ in explanation.words] == text.split()
        assert "words" in explanation.methods
    else:
        assert explanation.words == []
    if config.uses_vision:
        assert explanation.heatmap.shape == (50, 70)
    else:
        assert explanation.heatmap is None
    # completeness of integrated gradients: attributions sum to p(post) - p(baseline), to within the reported gap
    assert explanation.convergence_delta < 0.05


def test_frozen_towers_are_explained_through():
    """Gradients reach the inputs of frozen towers at explain time (the towers stay frozen)."""
    model, processor = tiny_model_and_processor("naive_cat", freeze_text_backbone=True, freeze_vision_backbone=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    explanation = explain(model, processor, "i love this photo", image)
    assert any(abs(score) > 0 for _, score in explanation.words)
    assert explanation.heatmap.max() == pytest.approx(1.0)
    assert model.config.freeze_text_backbone and model.config.freeze_vision_backbone
    assert not any(p.requires_grad for p in model.mmsa.text_model.parameters())


def test_grad_cam_heatmap():
    model, processor = tiny_model_and_processor("ote")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    explanation = explain(model, processor, "good day", image, image_method="grad_cam")
    assert explanation.heatmap.shape == (60, 90) and "Grad-CAM" in explanation.methods["heatmap"]
    with pytest.raises(ValueError, match="image_method"):
        explain(model, processor, "good day", image, image_method="lime")


def test_target_and_bad_inputs():
    model, processor = tiny_model_and_processor("naive_cat")
    image = Image.new("RGB", (64, 64), (10, 200, 10))
    explanation = explain(model, processor, "good day", image, target="neutral")
    assert explanation.label == "neutral"
    with pytest.raises(ValueError, match="not one of"):
        explain(model, processor, "good day", image, target="meh")
    with pytest.raises(ValueError, match="non-empty text"):
        explain(model, processor, "  ", image)
    with pytest.raises(ValueError, match="needs an image"):
        explain(model, processor, "good day", None)


def test_words_are_merged_from_sub_word_tokens_as_written():
    text = "Sunny   day!! #happy"
    offsets = [(0, 0), (0, 3), (3, 5), (8, 11), (11, 13), (14, 15), (15, 20), (0, 0)]
    scores = [9.0, 0.25, 0.5, 1.0, -2.0, 0.125, 0.25, 9.0]
    words, truncated = word_scores(text, offsets, scores)
    assert words == [("Sunny", 0.75), ("day!!", -1.0), ("#happy", 0.375)] and truncated == 0
    words, truncated = word_scores(text, offsets[:3], scores[:3])
    assert truncated == 2 and words[1:] == [("day!!", 0.0), ("#happy", 0.0)]


def test_heatmap_goes_back_over_the_centre_crop():
    cam = np.ones((7, 7), dtype=np.float32)
    config = {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"}
    heat = heatmap_on_image(cam, (512, 256), config)  # wide image: the crop is a centred square of the height
    assert heat.shape == (256, 512)
    columns = np.flatnonzero(heat.max(axis=0) > 0)
    assert heat[:, 0].max() == 0 and heat[:, -1].max() == 0
    assert abs((columns[0] + columns[-1]) / 2 - 255.5) <= 1  # centred
    assert columns[-1] - columns[0] + 1 == pytest.approx(224, abs=2)  # 224 of 256 px after resize, scale 1


def test_html_and_png(tmp_path):
    model, processor = tiny_model_and_processor("naive_combine")
    image = Image.new("RGB", (64, 48), (200, 20, 20))
    explanation = explain(model, processor, "i hate this <b>photo</b>", image)
    page = explanation.to_html()
    assert "&lt;b&gt;photo&lt;/b&gt;" in page and "<b>" not in page  # user text is escaped
    assert "data:image/png;base64," in page and explanation.label in page
    explanation.save_png(tmp_path / "why.png")
    with Image.open(tmp_path / "why.png") as figure:
        assert figure.width > figure.height > 100
    assert set(explanation.to_dict()) >= {"label", "probabilities", "words", "modality_shares", "methods"}


def test_word_colours_are_the_same_in_the_html_the_legend_and_the_demo():
    """The HTML shades words towards the label and against it in the colours the legend names, and those are the
    colours of gradio's HighlightedText (the demo's words) for positive and negative scores."""
    import dataclasses
    from pathlib import Path

    import gradio

    from mmsa.explain import WORD_COLOURS, WORD_LEGEND

    model, processor = tiny_model_and_processor("naive_combine")
    explanation = explain(model, processor, "i love this", Image.new("RGB", (64, 48), (200, 20, 20)))
    explanation = dataclasses.replace(explanation, words=[("good", 0.5), ("bad", -0.25)])
    page = explanation.to_html()
    for side, sign in (("towards", "good"), ("against", "bad")):
        name, (red, green, blue) = WORD_COLOURS[side]
        assert f"{name}: {side}" in WORD_LEGEND
        span = page[: page.index(f">{sign}</span>")].rsplit("<span", 1)[1]
        assert f"rgba({red}, {green}, {blue}," in span
    assets = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
    palette = [p for p in assets.glob("*.js") if "show_legend" in p.read_text(errors="ignore")]
    frontend = "".join(p.read_text(errors="ignore") for p in palette)
    towards, against = WORD_COLOURS["towards"][1], WORD_COLOURS["against"][1]
    assert (
        f"e<0?`rgba({', '.join(map(str, against))}, ${{-e}})`:`rgba({', '.join(map(str, towards))}, ${{e}})`"
        in frontend
    )


def test_cli_explains_one_post_and_a_batch(tiny_run, tmp_path):
    from mmsa import cli

    image = tmp_path / "photo.png"
    Image.new("RGB", (60, 40), (200, 30, 30)).save(image)
    for name in ("why.html", "why.png", "why.json"):
        result = cli.run(
            ["explain", "--model", str(tiny_run), "--text", "i love this", "--image", str(image), "--output",
             str(tmp_path / name)]
        )  # fmt: skip
        assert (tmp_path / name).stat().st_size > 100
    assert [w for w, _ in result["words"]] == ["i", "love", "this"]
    model, processor = cli.load_explainer(str(tiny_run))
    direct = explain(model, processor, "i love this", str(image))
    assert result["label"] == direct.label and result["probabilities"] == pytest.approx(direct.probabilities)

    posts = tmp_path / "posts.jsonl"
    posts.write_text(
        '{"id": "a", "text": "i love this", "image": "photo.png"}\n'
        "\n"
        '{"id": "b", "text": "sad day", "image": "missing.png"}\n'
        "not json\n"
        '{"id": "c", "text": "", "image": "photo.png"}\n'
        '{"id": "d", "text": "great photo", "image": "photo.png"}\n'
    )
    counts = cli.run(["explain", "--model", str(tiny_run), "--input", str(posts), "--output", str(tmp_path / "out")])
    assert counts == {"rows": 5, "explained": 2, "errors": 3, "blank_lines": 1}
    records = [json.loads(line) for line in (tmp_path / "out" / "explanations.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4, 5, 6]
    assert [("error" in r) for r in records] == [False, True, True, True, False]
    assert "does not exist" in records[1]["error"] and "empty 'text'" in records[3]["error"]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"explanations.jsonl", "line-1.html", "line-6.html"}
    assert cli.main(["explain", "--model", str(tiny_run), "--input", str(posts), "--output", str(tmp_path / "o")]) == 3
    with pytest.raises(SystemExit):
        cli.run(["explain", "--model", str(tiny_run), "--text", "hi", "--image", str(image), "--output", "x.txt"])
