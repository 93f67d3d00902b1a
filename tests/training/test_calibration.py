"""Calibrated probabilities (temperature scaling, ECE / NLL / Brier) and the modality heads with the labelling rule."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mmsa import MmsaForSequenceClassification, MmsaProcessor, cli
from mmsa.calibration import (
    brier_score,
    calibrated_ece,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
    softmax,
)
from mmsa.data import build_mvsa
from mmsa.modeling_mmsa import rule_distribution
from mmsa.pipeline_mmsa import save_for_pipeline
from mmsa.testing_utils import tiny_model_and_processor, write_fake_mvsa


LABEL2ID = {"negative": 0, "neutral": 1, "positive": 2}


def test_calibration_metrics_by_hand():
    probabilities = [[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.2, 0.6]]
    references = [0, 1, 1, 2]
    # bins: 0.9 (right) | 0.8 (wrong) | 0.6, 0.6 (both right)
    assert expected_calibration_error(probabilities, references) == pytest.approx((0.1 + 0.8 + 2 * 0.4) / 4)
    assert negative_log_likelihood(probabilities, references) == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.6])))
    assert brier_score([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], [0, 1]) == pytest.approx((0 + 0.5) / 2)
    bins = reliability_bins(probabilities, references)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 2, 0, 1, 1, 0]
    assert calibration_metrics(probabilities, references)["mean_confidence"] == pytest.approx(0.725)


def test_calibrated_ece_is_the_sampling_floor_of_a_calibrated_model():
    """The simulated ECE of a calibrated model agrees with ECE measured on outcomes drawn the same way, is 0 for
    certain predictions, and falls as the posts grow in number."""
    rng = np.random.default_rng(3)
    confidences = 1 / 3 + (2 / 3) * rng.beta(1.5, 1.0, 452)
    mean, std = calibrated_ece(confidences, draws=1000)
    measured = []
    for _ in range(300):
        right = rng.random(len(confidences)) < confidences
        others = (1 - confidences) / 2
        probabilities = np.stack([confidences, others, others], axis=1)
        measured.append(expected_calibration_error(probabilities, np.where(right, 0, 1)))
    assert abs(mean - np.mean(measured)) < 0.003 and 0.02 < mean < 0.06 and 0.005 < std < 0.02
    assert calibrated_ece(np.ones(50)) == (0.0, 0.0)
    assert calibrated_ece(np.tile(confidences, 20), draws=200)[0] < mean / 3
    assert calibrated_ece(confidences, seed=5) == calibrated_ece(confidences, seed=5)
    with pytest.raises(ValueError, match="top-class probabilities"):
        calibrated_ece([0.5, 1.2])


def test_fit_temperature_recovers_the_temperature_of_the_data():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 3))
    references = np.array([rng.choice(3, p=p) for p in softmax(logits / 2.5)])
    temperature = fit_temperature(logits, references)
    assert temperature == pytest.approx(2.5, rel=0.1)
    fitted = calibration_metrics(softmax(logits / temperature), references)
    raw = calibration_metrics(softmax(logits), references)
    assert fitted["nll"] < raw["nll"] and fitted["ece"] < raw["ece"]


def test_temperature_scales_the_logits_but_not_the_predictions_or_the_loss():
    model, processor = tiny_model_and_processor("mm_transformer", seed=3, initializer_range=0.5)
    inputs = processor(
        text=["i love this", "sad awful day", "the photo"], images=[Image.new("RGB", (40, 40), (9, 99, 199))] * 3
    )
    labels = torch.tensor([2, 0, 1])
    model.eval()
    with torch.no_grad():
        raw = model(**inputs, labels=labels)
        model.config.temperature = 3.0
        scaled = model(**inputs, labels=labels)
    torch.testing.assert_close(scaled.logits, raw.logits / 3.0)
    assert torch.equal(scaled.logits.argmax(-1), raw.logits.argmax(-1))
    assert scaled.loss == raw.loss  # the loss is on the raw logits


def test_temperature_survives_save_and_load_and_old_configs_load_at_one(tmp_path):
    model, processor = tiny_model_and_processor("naive_cat")
    model.config.temperature = 1.7
    model.save_pretrained(tmp_path / "new")
    assert MmsaForSequenceClassification.from_pretrained(tmp_path / "new").config.temperature == 1.7
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("temperature", "modality_heads", "text_temperature", "image_temperature", "rule_weight"):
        saved.pop(key)
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    old = MmsaForSequenceClassification.from_pretrained(tmp_path / "old")
    assert old.config.temperature == 1.0 and old.config.modality_heads is False


def test_the_rule_reproduces_the_labelling_rule():
    one_hot = torch.eye(3)
    for text in range(3):
        for image in range(3):
            implied = rule_distribution(one_hot[[text]], one_hot[[image]], LABEL2ID)[0]
            names = {0: "negative", 1: "neutral", 2: "positive"}
            pair = {names[text], names[image]}
            if pair == {"negative", "positive"}:
                continue  # dropped by the rule: no mass (renormalised away in real distributions)
            expected = text if text == image else (image if names[text] == "neutral" else text)
            assert int(implied.argmax()) == expected and float(implied.max()) == pytest.approx(1.0)
    mixed = rule_distribution(torch.tensor([[0.5, 0.2, 0.3]]), torch.tensor([[0.1, 0.6, 0.3]]), LABEL2ID)
    assert float(mixed.sum()) == pytest.approx(1.0)


COLOURS = {"negative": (200, 20, 20), "neutral": (20, 200, 20), "positive": (20, 20, 200)}
WORDS = {"negative": "sad awful bad", "neutral": "the photo day", "positive": "happy great good"}


def synthetic_posts(rng, n):
    """Posts whose text carries one label and image another; the post label follows the rule (-100: a conflict)."""
    names = list(LABEL2ID)
    posts = []
    for _ in range(n):
        text, image = names[rng.integers(3)], names[rng.integers(3)]
        if {text, image} == {"negative", "positive"}:
            post = -100
        else:
            post = LABEL2ID[text if text == image or image == "neutral" else image]
        posts.append((WORDS[text], Image.new("RGB", (48, 48), COLOURS[image]), LABEL2ID[text], LABEL2ID[image], post))
    return posts


def batch(processor, posts):
    inputs = processor(text=[p[0] for p in posts], images=[p[1] for p in posts])
    return inputs, *(torch.tensor([p[k] for p in posts]) for k in (2, 3, 4))


def test_modality_heads_learn_their_own_modality_and_the_rule_gives_the_post_label():
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor(
        "naive_cat",
        modality_heads=True,
        modality_loss_weight=1.0,
        text_pooling="mean",
        freeze_text_backbone=True,
        freeze_vision_backbone=True,
        projection_dropout=0.0,
        classifier_dropout=0.0,
        initializer_range=0.2,
    )
    with torch.no_grad():  # a random tower as a trained one is scaled: activations of order 1, not 1e-5
        for module in model.mmsa.vision_model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    model.eval()
    inputs, text_labels, image_labels, labels = batch(processor, synthetic_posts(np.random.default_rng(0), 96))
    with torch.no_grad():  # the towers are frozen: train the heads on their features, as the feature cache does
        features = {
            "text_features": model.mmsa.encode_text(inputs["input_ids"], inputs["attention_mask"])[0],
            "image_features": model.mmsa.encode_image(inputs["pixel_values"])[0],
        }
    assert (labels == -100).any()  # conflicting posts train the modality heads only
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(80):
        loss = model(**features, labels=labels, text_labels=text_labels, image_labels=image_labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_inputs, test_text, test_image, test_labels = batch(processor, synthetic_posts(np.random.default_rng(1), 60))
    with torch.no_grad():  # new posts, through the whole model
        outputs = model(**test_inputs)
        model.config.rule_weight = 1.0
        ruled = model(**test_inputs).logits
    assert float((outputs.text_logits.argmax(-1) == test_text).float().mean()) == 1.0
    assert float((outputs.image_logits.argmax(-1) == test_image).float().mean()) == 1.0
    labelled = test_labels != -100
    assert torch.equal(ruled.argmax(-1)[labelled], test_labels[labelled])
    assert torch.allclose(ruled.exp().sum(-1), torch.ones(len(test_labels)))


def test_conflicting_posts_enter_the_training_split_only(tmp_path):
    posts = {i: (["positive,positive", "negative,negative", "neutral,neutral", "positive,negative"][i % 4], "x y")
             for i in range(1, 61)}  # fmt: skip
    raw = write_fake_mvsa(tmp_path / "raw", posts)
    plain, report = build_mvsa(raw, seed=3, return_report=True)
    with_conflicts, conflict_report = build_mvsa(raw, seed=3, conflicts_in_train=True, return_report=True)
    assert conflict_report.conflicts_in_train == report.skipped["label_conflict"] == 15
    for name in ("validation", "test"):
        assert with_conflicts[name]["id"] == plain[name]["id"] and -1 not in with_conflicts[name]["label"]
    train = with_conflicts["train"]
    added = [row for row in train if row["label"] == -1]
    assert len(added) == 15 and {(r["text_label"], r["image_label"]) for r in added} == {(2, 0)}
    assert sorted(r["id"] for r in train if r["label"] != -1) == sorted(plain["train"]["id"])


@pytest.fixture(scope="module")
def heads_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads") / "model"
    model, processor = tiny_model_and_processor("naive_cat", seed=2, modality_heads=True, initializer_range=0.5)
    model.config.temperature = 2.0
    save_for_pipeline(model.eval(), processor, folder)
    return folder


def test_modality_predictions_on_every_route(heads_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    from mmsa.explain import explain
    from mmsa.onnx import export_onnx
    from mmsa.onnx_runtime import OnnxSentimentClassifier

    image = tmp_path / "photo.png"
    Image.new("RGB", (50, 40), (20, 20, 200)).save(image)
    post = {"text": "happy great good", "image": str(image)}
    classifier = cli.load_classifier(str(heads_folder))
    result = classifier(post, return_modalities=True)
    assert set(result) == {"scores", "text_sentiment", "image_sentiment"}
    assert set(result["text_sentiment"]) == {"label", "score"}
    model = classifier.model
    processor = MmsaProcessor.from_pretrained(heads_folder)
    with torch.no_grad():
        outputs = model(**processor(text=[post["text"]], images=[Image.open(image)]))
    assert result["text_sentiment"]["label"] == model.config.id2label[int(outputs.text_logits.argmax())]

    source = tmp_path / "posts.jsonl"
    source.write_text(json.dumps({"text": post["text"], "image": "photo.png"}) + "\n")
    cli.run(["predict", "--model", str(heads_folder), "--input", str(source), "--output", str(tmp_path / "o.jsonl")])
    record = json.loads((tmp_path / "o.jsonl").read_text())
    assert record["label"] == result["scores"][0]["label"]
    assert record["text_sentiment"] == pytest.approx(result["text_sentiment"])
    assert record["image_sentiment"] == pytest.approx(result["image_sentiment"])

    explanation = explain(model, processor, post["text"], str(image), n_steps=2)
    assert explanation.modality_sentiments["image"]["label"] == result["image_sentiment"]["label"]
    assert explanation.probabilities[result["scores"][0]["label"]] == pytest.approx(result["scores"][0]["score"])

    export_onnx(str(heads_folder), tmp_path / "onnx")
    onnx_result = OnnxSentimentClassifier(tmp_path / "onnx")(post, return_modalities=True)
    assert onnx_result["scores"][0]["label"] == result["scores"][0]["label"]
    assert onnx_result["scores"][0]["score"] == pytest.approx(result["scores"][0]["score"], abs=1e-4)  # calibrated
    assert onnx_result["text_sentiment"]["score"] == pytest.approx(result["text_sentiment"]["score"], abs=1e-4)


def test_training_calibrates_and_reports_calibration(tiny_run):
    test = json.loads((tiny_run / "test_results.json").read_text())
    assert {"test_ece", "test_nll", "test_brier", "test_mean_confidence"} <= set(test)
    calibration = json.loads((tiny_run / "calibration_results.json").read_text())
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["temperature"] == calibration["temperature"] != 1.0
    assert calibration["nll_after"] <= calibration["nll_before"]
    assert (tiny_run / "test_reliability_diagram.png").read_bytes()[:4] == b"\x89PNG"


def test_mmsa_calibrate_writes_the_temperature_and_keeps_the_predictions(tiny_run, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_run, folder)
    config = json.loads((folder / "config.json").read_text())
    config["temperature"] = 1.0
    (folder / "config.json").write_text(json.dumps(config))
    dataset = json.loads((folder / "run_info.json").read_text())["dataset"]
    post = {"text": "i love this", "image": Image.new("RGB", (40, 30), (200, 30, 30))}
    before = cli.load_classifier(str(folder))(post, top_k=None)
    result = cli.run(["calibrate", "--model", str(folder), "--dataset", dataset])
    after = cli.load_classifier(str(folder))(post, top_k=None)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["temperature"] == result["temperature"] != 1.0 and result["nll_after"] <= result["nll_before"]
    assert {k: v for k, v in saved.items() if k != "temperature"} == {
        k: v for k, v in config.items() if k != "temperature"
    }
    assert before[0]["label"] == after[0]["label"] and before[0]["score"] != pytest.approx(after[0]["score"])
    metrics = cli.run(["evaluate", "--model", str(folder), "--dataset", dataset, "--split", "validation"])
    assert {"validation_ece", "validation_nll", "validation_brier"} <= set(metrics)


def test_mmsa_calibrate_fits_the_modality_temperatures_and_the_rule_weight(heads_folder, tmp_path):
    from mmsa.testing_utils import fake_mvsa_posts

    folder = tmp_path / "model"
    shutil.copytree(heads_folder, folder)
    raw = write_fake_mvsa(tmp_path / "raw", fake_mvsa_posts(40, seed=2))
    result = cli.run(["calibrate", "--model", str(folder), "--dataset", str(raw)])
    saved = json.loads((folder / "config.json").read_text())
    for key in ("temperature", "text_temperature", "image_temperature", "rule_weight"):
        assert saved[key] == result[key]
    assert saved["rule_weight"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert result["split"] == "validation" and result["posts"] > 0


def test_calibration_holdout_rows_are_a_stratified_part_of_the_labelled_training_posts():
    from collections import Counter

    from mmsa.training import calibration_holdout_rows

    labels = [0] * 40 + [1] * 20 + [2] * 30 + [-1] * 10
    train, held = calibration_holdout_rows(labels, 0.2, seed=3)
    assert sorted(train + held) == list(range(100)) and not set(train) & set(held)
    assert Counter(labels[i] for i in held) == {0: 8, 1: 4, 2: 6}  # stratified; no post without a post label
    assert calibration_holdout_rows(labels, 0.2, seed=3) == (train, held)
    assert calibration_holdout_rows(labels, 0.2, seed=4) != (train, held)
    assert calibration_holdout_rows(labels, 0.0, seed=3) == (None, None)
    with pytest.raises(ValueError, match="calibration_holdout"):
        calibration_holdout_rows(labels, 1.0, seed=3)


def test_training_calibrates_on_posts_held_out_of_training(assets, tmp_path):
    """`--calibration_holdout`: the temperature is fitted on a part of the training split the model never trained
    on, not on the validation split that chose its checkpoint."""
    from run_helpers import tiny_args

    import train_hf

    frozen = ("--num_train_epochs", "1", "--freeze_text_backbone", "true", "--freeze_vision_backbone", "true")
    train_hf.main(tiny_args(assets, tmp_path / "held", *frozen, "--calibration_holdout", "0.25"))
    train_hf.main(tiny_args(assets, tmp_path / "plain", *frozen))
    dataset = build_mvsa(assets["raw"])
    held = json.loads((tmp_path / "held" / "calibration_results.json").read_text())
    plain = json.loads((tmp_path / "plain" / "calibration_results.json").read_text())
    assert plain["posts"] == len(dataset["validation"]) and plain["calibrated_on"] == "the validation split"
    assert held["posts"] == round(0.25 * len(dataset["train"]))
    assert held["calibrated_on"] == f"{held['posts']} posts held out of the training split"
    trained = json.loads((tmp_path / "held" / "train_results.json").read_text())["train_samples"]
    assert trained == len(dataset["train"]) - held["posts"]
    steps = json.loads((tmp_path / "held" / "trainer_state.json").read_text())["max_steps"]
    assert steps == -(-trained // 8) < json.loads((tmp_path / "plain" / "trainer_state.json").read_text())["max_steps"]
    config = json.loads((tmp_path / "held" / "config.json").read_text())
    assert config["temperature"] == held["temperature"]
