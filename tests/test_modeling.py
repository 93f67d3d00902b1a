from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from mmsa import FUSION_STRATEGIES, FusionNeeds, MmsaConfig, MmsaForSequenceClassification, MmsaModel
from mmsa.testing_utils import TINY_VOCAB, tiny_config, tiny_model_and_processor


def padded_batch(processor, size):
    images = [Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("RGB", (40, 90), (20, 30, 200))]
    batch = processor(text=["i love this so much great day", "sad"], images=images)
    batch["pixel_values"] = torch.nn.functional.interpolate(batch["pixel_values"], size=(size, size))
    return batch


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
@pytest.mark.parametrize("image_size", [64, 96])
def test_forward_backward_loss(fusion, image_size):
    model, processor = tiny_model_and_processor(fusion)
    batch = padded_batch(processor, image_size)
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()  # really padded
    out = model(**batch, labels=torch.tensor([2, 0]))
    assert out.logits.shape == (2, 3)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    fusion_grads = [p.grad for n, p in model.named_parameters() if "classifiers" in n]
    assert fusion_grads and all(g is not None and torch.isfinite(g).all() for g in fusion_grads)
    # Every parameter that exists takes part in the loss (DDP needs no find_unused_parameters).
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


@pytest.mark.parametrize("fusion", ["cmac", "hstec", "mm_transformer", "text_only"])
def test_padding_does_not_change_predictions(fusion):
    model, processor = tiny_model_and_processor(fusion)
    model.eval()
    image = Image.new("RGB", (64, 64), (10, 120, 40))
    short = processor(text=["sad day"], images=[image])
    long = processor(text=["sad day", "i love this so much great day the photo"], images=[image, image])
    with torch.no_grad():
        alone = model(**short).logits[0]
        padded = model(**long).logits[0]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_unimodal_fusions_build_one_tower_and_need_one_input():
    text_model, processor = tiny_model_and_processor("text_only")
    assert text_model.mmsa.vision_model is None
    batch = processor(text=["good"])
    assert text_model(**batch).logits.shape == (1, 3)

    image_model, _ = tiny_model_and_processor("image_only")
    assert image_model.mmsa.text_model is None
    pixels = processor(images=[Image.new("L", (30, 30))])
    assert image_model(**pixels).logits.shape == (1, 3)
    with pytest.raises(ValueError, match="pixel_values"):
        image_model(input_ids=batch["input_ids"])


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_save_load_round_trip_is_exact(tmp_path, fusion):
    model, processor = tiny_model_and_processor(fusion)
    model.eval()
    batch = padded_batch(processor, 64)
    model.save_pretrained(tmp_path)
    reloaded, info = MmsaForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert all(not keys for keys in (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]))
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_auto_classes(tmp_path):
    model, _ = tiny_model_and_processor("naive_cat")
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MmsaConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is MmsaModel
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)) is MmsaForSequenceClassification


def test_config_round_trip_and_validation():
    config = tiny_config("hstec", class_weights=[1.0, 3.0, 0.5], freeze_vision_backbone=True)
    as_dict = config.to_dict()
    again = MmsaConfig.from_dict(as_dict)
    assert again.to_dict() == as_dict
    assert again.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert again.vision_config.architecture == "resnet10t"
    with pytest.raises(ValueError, match="fusion"):
        MmsaConfig(fusion="late")
    with pytest.raises(ValueError, match="class_weights"):
        MmsaConfig(class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="divisible"):
        MmsaConfig(fusion_hidden_size=30, fusion_num_heads=8)


def test_class_weights_change_the_loss():
    model, processor = tiny_model_and_processor("naive_cat")
    model.eval()
    with torch.no_grad():
        model.classifiers[0].out_proj.bias.copy_(torch.tensor([2.0, -1.0, 0.5]))  # clearly non-uniform logits
    batch = padded_batch(processor, 64)
    labels = torch.tensor([1, 1])
    with torch.no_grad():
        plain = model(**batch, labels=labels)
        model.config.class_weights = [1.0, 5.0, 1.0]
        weighted = model(**batch, labels=labels)
    # Both rows have the same class, so a weighted mean equals the plain mean; a mixed batch shows the difference.
    torch.testing.assert_close(plain.loss, weighted.loss)
    mixed = torch.tensor([1, 2])
    with torch.no_grad():
        logits = weighted.logits
        expected = torch.nn.functional.cross_entropy(logits, mixed, weight=torch.tensor([1.0, 5.0, 1.0]))
        assert torch.allclose(model(**batch, labels=mixed).loss, expected)
        assert not torch.allclose(expected, torch.nn.functional.cross_entropy(logits, mixed))


@pytest.mark.parametrize("which", ["text", "vision"])
def test_frozen_towers_get_no_gradient_and_keep_eval_mode(which):
    model, processor = tiny_model_and_processor("mm_transformer", **{f"freeze_{which}_backbone": True})
    tower = model.mmsa.text_model if which == "text" else model.mmsa.vision_model
    other = model.mmsa.vision_model if which == "text" else model.mmsa.text_model
    model.train()
    assert not any(m.training for m in tower.modules()) and all(m.training for m in other.modules())
    tower.train()  # a frozen tower switched to training by hand goes back to eval with the model's next train()
    model.train()
    assert not any(m.training for m in tower.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    before = {n: t.clone() for n, t in tower.state_dict().items()}
    out = model(**padded_batch(processor, 64), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in tower.parameters())
    assert any(p.grad is not None for p in other.parameters())
    # BatchNorm running statistics did not move in a training-mode forward.
    assert all(torch.equal(before[n], t) for n, t in tower.state_dict().items())


def test_output_attentions_and_base_model_output():
    model, processor = tiny_model_and_processor("mm_transformer", fusion_num_layers=2)
    batch = padded_batch(processor, 64)
    out = model.mmsa(**batch, output_attentions=True)
    assert len(out.attentions) == 2
    sequence = 3 + batch["input_ids"].shape[1] + 4  # fusion + pooled text + pooled image + tokens + 2x2 feature map
    assert out.attentions[0].shape == (2, sequence, sequence)
    assert out.pooler_output.shape == (2, 3 * 16)
    # Attention to padded text positions is zero.
    pad = ~batch["attention_mask"][1].bool()
    assert torch.all(out.attentions[0][1, :, 3 : 3 + pad.numel()][:, pad] == 0)


def test_gradient_checkpointing_gives_same_gradients():
    model, processor = tiny_model_and_processor(
        "hstec", projection_dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0
    )
    model.eval()  # deterministic (no dropout) while still computing gradients
    model.config.text_config.hidden_dropout_prob = 0.0
    batch = padded_batch(processor, 64)
    labels = torch.tensor([0, 2])
    model(**batch, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.mmsa.text_model.is_activation_checkpointing
    model.train()
    model.mmsa.text_model.eval()
    model.mmsa.vision_model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model(**batch, labels=labels).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_pretrained_towers_arrive_bit_identical(tmp_path):
    source, _ = tiny_model_and_processor("cmac", seed=3)
    source.mmsa.text_model.save_pretrained(tmp_path / "text")
    source.mmsa.vision_model.save_pretrained(tmp_path / "vision")
    model = MmsaForSequenceClassification.from_text_vision_pretrained(
        str(tmp_path / "text"), str(tmp_path / "vision"), fusion="cmac", fusion_hidden_size=16, fusion_num_heads=4
    )
    for tower, folder in (("text_model", "text"), ("vision_model", "vision")):
        saved = load_file(tmp_path / folder / "model.safetensors")
        loaded = getattr(model.mmsa, tower).state_dict()
        assert saved and all(torch.equal(tensor, loaded[key]) for key, tensor in saved.items())
    assert model.config.fusion == "cmac" and model.config.text_config.hidden_size == 32
    # Fusion layers are fresh, not copies of the source model's.
    assert not torch.equal(model.classifiers[0].dense.weight, source.classifiers[0].dense.weight)


def test_from_text_vision_pretrained_rejects_non_timm_vision(tmp_path):
    source, _ = tiny_model_and_processor("naive_cat")
    source.mmsa.text_model.save_pretrained(tmp_path / "text")
    with pytest.raises(ValueError, match="timm"):
        MmsaForSequenceClassification.from_text_vision_pretrained(str(tmp_path / "text"), str(tmp_path / "text"))


def test_optimize_for_inference_keeps_outputs_and_state_dict(tmp_path):
    model, processor = tiny_model_and_processor("mm_transformer")
    model.eval()
    batch = padded_batch(processor, 64)
    keys = set(model.state_dict())
    with torch.no_grad():
        reference = model(**batch).logits
        model.optimize_for_inference(channels_last=True)
        convolutions = [m for m in model.mmsa.vision_model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convolutions and all(
            m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
            for m in convolutions
            if m.kernel_size != (1, 1)
        )
        torch.testing.assert_close(model(**batch).logits, reference, atol=1e-5, rtol=1e-5)
        model.optimize_for_inference(compile_vision=True)
        compiled = model(**batch).logits
        torch.testing.assert_close(compiled, reference, atol=1e-4, rtol=1e-4)
    assert set(model.state_dict()) == keys
    model.save_pretrained(tmp_path)
    reloaded = MmsaForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, reference, atol=1e-5, rtol=1e-5)


def test_bfloat16_model_takes_float32_pixels():
    model, processor = tiny_model_and_processor("cmac")
    model.eval()
    batch = padded_batch(processor, 64)
    with torch.no_grad():
        reference = torch.softmax(model(**batch).logits, -1)
        model.to(torch.bfloat16)
        assert batch["pixel_values"].dtype == torch.float32
        logits = model(**batch).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(torch.softmax(logits.float(), -1), reference, atol=0.03, rtol=0)


QUIET_BUILD = """
import sys, torch
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification
from mmsa import MmsaForSequenceClassification
from mmsa.testing_utils import tiny_tokenizer, write_tiny_towers

folder = sys.argv[1]
text, _ = write_tiny_towers(folder)
# An image tower saved with its ImageNet classifier, as timm checkpoints and the offline EfficientNet come.
TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet10t", num_labels=5)).save_pretrained(
    folder + "/classifier_vision")
model = MmsaForSequenceClassification.from_text_vision_pretrained(text, folder + "/classifier_vision",
                                                                 fusion="mm_transformer", fusion_hidden_size=16,
                                                                 fusion_num_heads=4)
ids = tiny_tokenizer()(["i love this"], return_tensors="pt")
model(**ids, pixel_values=torch.rand(1, 3, 64, 64)).logits.sum().backward()
print("built", model.mmsa.text_model.config._attn_implementation)
"""


def test_building_from_pretrained_towers_prints_no_spurious_warnings(tmp_path):
    """No 'UNEXPECTED timm_model.classifier' load report, no 'AttentionInterface ... None' warning (a fresh process:
    the latter is a warn-once)."""
    import subprocess
    import sys

    completed = subprocess.run([sys.executable, "-c", QUIET_BUILD, str(tmp_path)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "built sdpa" in completed.stdout
    output = completed.stdout + completed.stderr
    assert "UNEXPECTED" not in output and "classifier" not in output
    assert "AttentionInterface" not in output


FIXTURES = Path(__file__).with_name("fixtures")


def test_registry_and_config_list_agree():
    from mmsa import FUSION_NEEDS, MMSA_FUSIONS

    assert set(MMSA_FUSIONS) == set(FUSION_NEEDS) == {*FUSION_STRATEGIES, "ensemble"}
    for name, fusion_class in MMSA_FUSIONS.items():
        assert FUSION_NEEDS[name] == fusion_class.needs
        config = tiny_config(name)
        assert (config.uses_text, config.uses_vision, config.uses_tokens) == tuple(fusion_class.needs)
        assert fusion_class.description() and "\n" not in fusion_class.description()


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_state_dict_keys_are_pinned(fusion):
    """Checkpoints keep loading: each fusion's own keys (towers aside) are those pinned when the registry came."""
    import json

    model, _ = tiny_model_and_processor(fusion)
    keys = sorted(k for k in model.state_dict() if ".text_model." not in k and ".vision_model." not in k)
    assert keys == json.loads((FIXTURES / "state_dict_keys.json").read_text())[fusion]


@pytest.mark.parametrize("fusion", FUSION_STRATEGIES)
def test_pre_registry_weights_give_the_same_outputs(fusion):
    """A state dict saved before fusion strategies became registered modules, converted, gives the logits and
    attention weights that code computed (fixture made by the pre-registry code, commit 3ef868b), to the rounding of
    float32 kernels: bit for bit on the CPU that made the fixture, within 1e-5 on CPUs whose kernels round otherwise
    (AVX-512 against AVX2). A wrongly converted tensor moves them by orders of magnitude more."""
    import json

    from safetensors import safe_open

    from mmsa.modeling_mmsa import convert_pre_registry_state_dict

    with safe_open(str(FIXTURES / "pre_registry_fusions.safetensors"), framework="pt") as handle:
        # Copies in fresh memory: CPU matrix kernels may round differently on the unaligned memory of a mapped file.
        tensors = {key: handle.get_tensor(key).clone() for key in handle.keys()}
        settings = json.loads(handle.metadata()["config"])
    inputs = {k.removeprefix("inputs."): v for k, v in tensors.items() if k.startswith("inputs.")}
    state = {k.removeprefix(f"{fusion}.state."): v for k, v in tensors.items() if k.startswith(f"{fusion}.state.")}
    model, _ = tiny_model_and_processor(fusion, seed=7, **settings)
    missing, unexpected = model.load_state_dict(convert_pre_registry_state_dict(state), strict=False)
    assert unexpected == [] and all(".text_model." in k or ".vision_model." in k for k in missing)
    model.eval()
    with torch.no_grad():
        output = model(**inputs, output_attentions=True)
    torch.testing.assert_close(output.logits, tensors[f"{fusion}.logits"], rtol=1e-5, atol=1e-5)
    expected = [tensors[k] for k in sorted(k for k in tensors if k.startswith(f"{fusion}.attentions."))]
    assert len(output.attentions or ()) == len(expected)
    for attention, reference in zip(output.attentions or (), expected):
        torch.testing.assert_close(attention, reference, rtol=1e-5, atol=1e-6)


def test_a_fusion_of_ones_own_is_one_class(tmp_path):
    """The README's example: register a fusion from outside the package, train a step, save, reload."""
    from torch import nn

    from mmsa import FusionNeeds, MmsaFusion, register_fusion, unregister_fusion

    @register_fusion("gated_sum")
    class GatedSumFusion(MmsaFusion):
        """Gated sum: a learned sigmoid gate mixes the pooled text and image vectors, -> C(d)."""

        needs = FusionNeeds(text=True, image=True, tokens=False)

        def __init__(self, config):
            super().__init__(config)
            self.gate = nn.Linear(2 * config.fusion_hidden_size, config.fusion_hidden_size)
            self.branch_sizes = (config.fusion_hidden_size,)

        def forward(self, inputs, output_attentions=False):
            gate = torch.sigmoid(self.gate(torch.cat([inputs.text, inputs.image], dim=-1)))
            return (gate * inputs.text + (1 - gate) * inputs.image,), ()

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_fusion("gated_sum")(GatedSumFusion)
        model, processor = tiny_model_and_processor("gated_sum")
        batch = padded_batch(processor, 64)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(**batch, labels=torch.tensor([2, 0])).loss.backward()
        assert model.mmsa.fusion.gate.weight.grad is not None
        optimizer.step()
        model.save_pretrained(tmp_path)
        reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
        assert "mmsa.fusion.gate.weight" in load_file(tmp_path / "model.safetensors")
    finally:
        unregister_fusion("gated_sum")
    with pytest.raises(ValueError, match="`fusion` must be one of"):
        MmsaConfig(fusion="gated_sum")


def test_the_registry_lists_and_unregisters_fusions():
    from torch import nn

    from mmsa import FUSION_NEEDS, MmsaFusion, list_fusions, register_fusion, unregister_fusion

    assert list_fusions() == sorted([*FUSION_STRATEGIES, "ensemble"])
    seen = {}

    @register_fusion("token_spy")
    class TokenSpyFusion(MmsaFusion):
        """Records what it receives (a fusion that declared tokens=False)."""

        needs = FusionNeeds(text=True, image=True, tokens=False)

        def __init__(self, config):
            super().__init__(config)
            self.proj = nn.Linear(config.fusion_hidden_size, config.fusion_hidden_size)
            self.branch_sizes = (config.fusion_hidden_size,)

        def forward(self, inputs, output_attentions=False):
            seen.update(text_tokens=inputs.text_tokens, text_mask=inputs.text_mask, image_tokens=inputs.image_tokens)
            return (self.proj(inputs.text + inputs.image),), ()

    try:
        assert "token_spy" in list_fusions() and FUSION_NEEDS["token_spy"] == TokenSpyFusion.needs
        model, processor = tiny_model_and_processor("token_spy")
        model(**padded_batch(processor, 64))
        assert seen == {"text_tokens": None, "text_mask": None, "image_tokens": None}
    finally:
        assert unregister_fusion("token_spy") is TokenSpyFusion
    assert "token_spy" not in list_fusions() and "token_spy" not in FUSION_NEEDS
    with pytest.raises(KeyError, match="not registered"):
        unregister_fusion("token_spy")


def test_a_pre_registry_folder_loads_as_it_is(tmp_path):
    """A checkpoint whose fusion tensors have their pre-registry names loads through `from_pretrained` itself."""
    import re

    from safetensors.torch import save_file

    model, _ = tiny_model_and_processor("mm_transformer", seed=1)
    model.save_pretrained(tmp_path)
    current = load_file(tmp_path / "model.safetensors")
    names = "cross_attention_text|cross_attention_image|fusion_layers|fusion_token|modality_embeddings|fusion_norm"
    old = {re.sub(rf"^mmsa\.fusion\.(?=({names}))", "mmsa.", key): value for key, value in current.items()}
    assert sum(a != b for a, b in zip(old, current)) > 0
    save_file(old, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    reloaded = MmsaForSequenceClassification.from_pretrained(tmp_path)
    assert all(torch.equal(reloaded.state_dict()[key], value) for key, value in current.items())


def test_attention_weights_are_recorded_without_changing_the_output():
    model, processor = tiny_model_and_processor("mm_transformer", seed=2, initializer_range=0.5)
    model.eval()
    batch = padded_batch(processor, 64)
    with torch.no_grad():
        plain = model(**batch)
        recorded = model(**batch, output_attentions=True)
    torch.testing.assert_close(recorded.logits, plain.logits, rtol=1e-5, atol=1e-6)
    assert len(recorded.attentions) == model.config.fusion_num_layers
    assert all(torch.allclose(a.sum(-1), torch.ones_like(a.sum(-1))) for a in recorded.attentions)
    assert all(not layer.self_attn._forward_hooks for layer in model.mmsa.fusion.fusion_layers)  # hooks removed


def test_an_ensemble_averages_its_members_heads():
    """`fusion="ensemble"`: the members' heads over the same towers, averaged as log-probabilities; a member that
    declared tokens=False gets none; the folder saves and loads as one model."""
    import tempfile

    model, processor = tiny_model_and_processor(
        "ensemble", seed=5, ensemble_fusions=["naive_cat", "naive_combine", "mm_transformer"], initializer_range=0.5
    )
    assert [type(m).__name__ for m in model.mmsa.fusion.members] == [
        "NaiveCatFusion",
        "NaiveCombineFusion",
        "MmTransformerFusion",
    ]
    assert len(model.classifiers) == 4  # naive_combine has a text head and an image head
    model.eval()
    batch = padded_batch(processor, 64)
    with torch.no_grad():
        outputs = model.mmsa(**batch)
        heads = [torch.log_softmax(h(b), -1) for h, b in zip(model.classifiers, outputs.branch_embeds)]
        logits = model(**batch).logits
    torch.testing.assert_close(logits, torch.stack(heads).mean(0))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reloaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        assert reloaded.config.ensemble_fusions == ["naive_cat", "naive_combine", "mm_transformer"]
        with torch.no_grad():
            assert torch.equal(reloaded(**batch).logits, logits)
    with pytest.raises(ValueError, match="ensemble_fusions"):
        MmsaConfig(fusion="ensemble", ensemble_fusions=["ensemble"])
    with pytest.raises(ValueError, match="ensemble_fusions"):
        MmsaConfig(fusion="ensemble", ensemble_fusions=["no_such_fusion"])


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_a_partly_trained_text_tower_runs_from_its_hidden_states(model_type):
    """`text_trainable_layers`: the hidden states entering the first trained layer stand in for the text, with the
    tower's own masks and position biases (MPNet's relative ones); the fixed part stays in eval mode in training."""
    from mmsa.modeling_mmsa import text_layers

    config = tiny_config("mm_transformer", text_trainable_layers=2)
    config.text_config = AutoConfig.for_model(
        model_type, vocab_size=40, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MmsaForSequenceClassification(config)
    base = model.mmsa
    assert base.first_trained_text_layer == 1 and len(base.fixed_text_modules()) == 2
    input_ids = torch.randint(5, 40, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    pixel_values = torch.randn(3, 3, 64, 64)
    hidden = base.text_hidden_states(input_ids, attention_mask)
    assert hidden.shape == (3, 9, 32) and not hidden.requires_grad
    model.train()
    assert all(not module.training for module in base.fixed_text_modules())
    assert all(layer.training for layer in list(text_layers(base.text_model))[1:])
    model.eval()  # the trained layers' dropout aside, the two routes compute the same
    losses = []
    for inputs in ({"input_ids": input_ids}, {"text_hidden_states": hidden}):
        model.zero_grad()
        output = model(
            **inputs, attention_mask=attention_mask, pixel_values=pixel_values, labels=torch.tensor([0, 1, 2])
        )
        output.loss.backward()
        top = list(text_layers(base.text_model))[-1]
        losses.append((output.logits.detach(), [p.grad.clone() for p in top.parameters()]))
    torch.testing.assert_close(losses[0][0], losses[1][0], atol=1e-6, rtol=1e-5)
    for grad, other in zip(losses[0][1], losses[1][1]):
        torch.testing.assert_close(grad, other, atol=1e-6, rtol=1e-4)
    assert len(list(text_layers(base.text_model))) == 3  # the tower is whole again


@pytest.mark.parametrize("architecture", ["resnet10t", "efficientnet_lite0"])
def test_a_partly_trained_image_tower_runs_from_its_feature_maps(architecture):
    """`vision_trainable_blocks`: the feature map entering the first trained stage (timm's `feature_info` stages)
    stands in for the image; the fixed part has no gradients and stays in eval mode in training, and the logits and
    the trained stages' gradients are those of running the whole tower (BatchNorm of the trained stages in training
    mode included)."""
    config = tiny_config("mm_transformer", freeze_vision_backbone=False, vision_trainable_blocks=1)
    config.vision_config.architecture = architecture
    torch.manual_seed(0)
    model = MmsaForSequenceClassification(config)
    base = model.mmsa
    stages = base.vision_model.timm_model.feature_info
    assert base.first_trained_vision_stage == len(stages) - 1
    fixed = base.fixed_vision_modules()
    assert fixed and all(not p.requires_grad for module in fixed for p in module.parameters())
    trained = [p for p in base.vision_model.parameters() if p.requires_grad]
    assert trained and len(trained) < len(list(base.vision_model.parameters()))
    input_ids = torch.randint(5, len(TINY_VOCAB), (4, 7))
    pixel_values = torch.randn(4, 3, 64, 64)
    maps = base.vision_hidden_states(pixel_values)
    assert maps.ndim == 4 and maps.shape[1] == stages[-2]["num_chs"] and not maps.requires_grad
    model.train()
    assert all(not module.training for module in fixed)
    results = []
    for inputs in ({"pixel_values": pixel_values}, {"vision_hidden_states": maps}):
        torch.manual_seed(1)  # the same dropout masks in both routes
        model.zero_grad()
        output = model(input_ids=input_ids, **inputs, labels=torch.tensor([0, 1, 2, 1]))
        output.loss.backward()
        results.append((output.logits.detach(), [p.grad.clone() for p in trained]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-4)
    for grad, other in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(grad, other, atol=1e-5, rtol=1e-4)
    assert base.fixed_vision_modules() == fixed  # the tower is whole again
    assert [type(module) for module in base.vision_model.timm_model.children()] != [torch.nn.Identity]


def test_vision_trainable_blocks_are_checked():
    """Too many stages, none left to train, or an architecture whose forward cannot be cut: a clear error."""
    with pytest.raises(ValueError, match="has 5 stages"):
        MmsaForSequenceClassification(
            tiny_config("naive_cat", freeze_vision_backbone=False, vision_trainable_blocks=5)
        )
    with pytest.raises(ValueError, match="leaves nothing of the image tower to train"):
        MmsaForSequenceClassification(
            tiny_config("naive_cat", freeze_vision_backbone=False, vision_trainable_blocks=0)
        )
    config = tiny_config("naive_cat", freeze_vision_backbone=False, vision_trainable_blocks=1)
    config.vision_config.architecture = "vit_tiny_patch16_224"
    config.vision_config.pretrained_cfg = {"input_size": (3, 32, 32), "crop_pct": 1.0}
    config.vision_config.model_args = {"img_size": 32, "depth": 2, "embed_dim": 24, "num_heads": 2}
    model = MmsaForSequenceClassification(config)
    with pytest.raises(ValueError, match="cannot be cut before its last stages"):
        model.mmsa.vision_hidden_states(torch.randn(1, 3, 32, 32))
    frozen = MmsaForSequenceClassification(
        tiny_config("naive_cat", freeze_vision_backbone=True, vision_trainable_blocks=1)
    )
    assert frozen.mmsa.first_trained_vision_stage is None  # a frozen tower has no trained stages


def test_label_smoothing_smooths_the_post_and_modality_losses():
    torch.manual_seed(0)
    model = MmsaForSequenceClassification(tiny_config("naive_cat", modality_heads=True, initializer_range=1.0)).eval()
    inputs = {
        "input_ids": torch.randint(5, len(TINY_VOCAB), (3, 6)),
        "pixel_values": torch.randn(3, 3, 64, 64),
        "labels": torch.tensor([0, 1, 2]),
        "text_labels": torch.tensor([0, 1, 1]),
        "image_labels": torch.tensor([2, 1, 0]),
    }
    with torch.no_grad():
        output = model(**inputs)
        model.config.label_smoothing = 0.1
        smoothed = model(**inputs).loss
    f = torch.nn.functional.cross_entropy
    expected = f(output.logits, inputs["labels"], label_smoothing=0.1) + model.config.modality_loss_weight * (
        f(output.text_logits, inputs["text_labels"], label_smoothing=0.1)
        + f(output.image_logits, inputs["image_labels"], label_smoothing=0.1)
    )
    torch.testing.assert_close(smoothed, expected)
    assert not torch.isclose(smoothed, output.loss)


def mixup_inputs():
    return {
        "input_ids": torch.randint(5, len(TINY_VOCAB), (4, 6)),
        "pixel_values": torch.randn(4, 3, 64, 64),
        "labels": torch.tensor([0, 1, 2, -100]),  # the last post's modalities conflict: no post label
        "text_labels": torch.tensor([0, 1, 1, 2]),
        "image_labels": torch.tensor([2, 1, 0, 0]),
    }


@pytest.mark.parametrize("fusion", ["mm_transformer", "naive_combine"])
def test_mixup_trains_on_mixed_head_inputs_against_both_posts_labels(fusion, monkeypatch):
    """Manifold mixup: in training the heads read `λ x + (1 - λ) x[order]` and the loss is `λ` times that of the
    posts' labels plus `1 - λ` times that of the labels of the posts they were mixed with, for the post head(s) and
    both modality heads; posts without a label (-100) count in neither term."""
    torch.manual_seed(0)
    config = tiny_config(
        fusion,
        modality_heads=True,
        mixup_alpha=0.4,
        freeze_text_backbone=True,
        freeze_vision_backbone=True,
        projection_dropout=0.0,
        attention_dropout=0.0,
        classifier_dropout=0.0,
        initializer_range=1.0,
    )
    model = MmsaForSequenceClassification(config)
    inputs = mixup_inputs()
    weight, order = 0.7, torch.tensor([2, 0, 3, 1])
    monkeypatch.setattr("mmsa.modeling_mmsa.mixup_draw", lambda size, alpha, device: (weight, order))
    mixed = model.train()(**inputs).loss

    model.eval()
    with torch.no_grad():
        plain = model(**inputs)
        features = model.mmsa(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])

    def mix(x):
        return weight * x + (1 - weight) * x[order]

    def both(logits, labels):
        f = torch.nn.functional.cross_entropy
        return weight * f(logits, labels) + (1 - weight) * f(logits, labels[order])

    with torch.no_grad():
        heads = [head(mix(b)) for head, b in zip(model.classifiers, features.branch_embeds)]
        post = heads[0] if len(heads) == 1 else torch.stack([h.log_softmax(-1) for h in heads]).mean(0)
        expected = both(post, inputs["labels"]) + config.modality_loss_weight * (
            both(model.text_head(mix(features.text_embeds)), inputs["text_labels"])
            + both(model.image_head(mix(features.image_embeds)), inputs["image_labels"])
        )
    torch.testing.assert_close(mixed, expected)
    assert not torch.isclose(mixed, plain.loss)

    # λ = 1 with the posts in their own order is no mixing at all: the plain loss.
    monkeypatch.setattr("mmsa.modeling_mmsa.mixup_draw", lambda size, alpha, device: (1.0, torch.arange(size)))
    torch.testing.assert_close(model.train()(**inputs).loss, plain.loss)


def test_mixup_leaves_evaluation_and_inference_unchanged():
    torch.manual_seed(0)
    model = MmsaForSequenceClassification(tiny_config("mm_transformer", modality_heads=True)).eval()
    inputs = mixup_inputs()
    with torch.no_grad():
        before = model(**inputs)
        model.config.mixup_alpha = 0.4
        after = model(**inputs)
    for name in ("loss", "logits", "text_logits", "image_logits"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name))


def test_mixup_draws_a_weight_and_an_order_from_the_seed():
    from mmsa.modeling_mmsa import mixup_draw

    torch.manual_seed(3)
    weight, order = mixup_draw(16, 0.4, "cpu")
    torch.manual_seed(3)
    again = mixup_draw(16, 0.4, "cpu")
    assert 0.0 < weight < 1.0 and sorted(order.tolist()) == list(range(16))
    assert weight == again[0] and torch.equal(order, again[1])
    draws = [mixup_draw(4, 0.4, "cpu")[0] for _ in range(400)]
    # Beta(0.4, 0.4) is U-shaped with mean 0.5: most draws lie near 0 or 1.
    assert abs(sum(draws) / len(draws) - 0.5) < 0.06
    assert sum(w < 0.2 or w > 0.8 for w in draws) > 0.5 * len(draws)
    with pytest.raises(ValueError, match="mixup_alpha"):
        tiny_config("naive_cat", mixup_alpha=-0.1)


def test_a_partly_trained_image_tower_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    config = tiny_config("naive_cat", freeze_vision_backbone=False, vision_trainable_blocks=2)
    model = MmsaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.vision_trainable_blocks == 2
    assert len(loaded.mmsa.fixed_vision_modules()) == len(model.mmsa.fixed_vision_modules())
    pixel_values = torch.randn(2, 3, 64, 64)
    inputs = {"input_ids": torch.randint(5, len(TINY_VOCAB), (2, 5)), "pixel_values": pixel_values}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
        maps = loaded.mmsa.vision_hidden_states(pixel_values)
        cached = loaded(input_ids=inputs["input_ids"], vision_hidden_states=maps).logits
    torch.testing.assert_close(cached, model(**inputs).logits, atol=1e-5, rtol=1e-4)
