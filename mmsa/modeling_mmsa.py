"""MMSA: a text tower and a timm image tower joined by a fusion head, for multimodal sentiment analysis.

The fusion strategies follow "Multimodal Sentiment Analysis Based on BERT and ResNet" (arXiv 2412.03625) and the code
published with it, with these differences from that code:

- attention over text tokens uses a padding mask (`key_padding_mask`); the original attended to padding;
- means over text tokens skip padding; the original averaged padding in;
- two-head strategies (`naive_combine`, `cmac`, `hstec`) combine their heads as the mean of log-probabilities, and
  the loss is cross-entropy on those logits; the original applied cross-entropy to already-softmaxed probabilities;
- image tokens are projected per position (a 1x1 convolution, written as a `Linear` over channels), so any input
  size works; the original baked the 7x7 feature-map size of 224 px inputs into its layer shapes;
- the text tower's pooled output falls back to a masked mean of its token states when the tower has no pooler.
"""

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, TimmWrapperModel
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutput
from transformers.utils import can_return_tuple, logging

from .configuration_mmsa import FUSION_NEEDS, FusionNeeds, MmsaConfig


logger = logging.get_logger(__name__)

AUTO_MAP = {
    "AutoConfig": "configuration_mmsa.MmsaConfig",
    "AutoModel": "modeling_mmsa.MmsaModel",
    "AutoModelForSequenceClassification": "modeling_mmsa.MmsaForSequenceClassification",
}


@dataclass
class MmsaModelOutput(ModelOutput):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(batch_size, embed_dim)`):
        The fused multimodal embedding: the concatenation of `branch_embeds`.
    branch_embeds (`tuple(torch.FloatTensor)`):
        The inputs of the classification heads, one per head (two for `naive_combine`, `cmac` and `hstec`).
    text_embeds (`torch.FloatTensor` of shape `(batch_size, fusion_hidden_size)`, *optional*):
        The projected pooled text feature (`None` for `image_only`).
    image_embeds (`torch.FloatTensor` of shape `(batch_size, fusion_hidden_size)`, *optional*):
        The projected pooled image feature (`None` for `text_only`).
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        Attention weights of the fusion attention layers, averaged over heads, each `(batch, queries, keys)`.
    """

    pooler_output: torch.FloatTensor | None = None
    branch_embeds: tuple[torch.FloatTensor, ...] | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of `tokens` (B, L, D), counting only positions where `mask` (B, L) is nonzero."""
    if mask is None:
        return tokens.mean(dim=1)
    mask = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MmsaProjection(nn.Module):
    """Dropout -> Linear -> ReLU: maps tower features (pooled or per token) to the fusion width."""

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(in_features, out_features)
        self.activation = nn.ReLU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(self.dropout(features)))


class MmsaClassificationHead(nn.Module):
    """The paper's head C(in): Dropout -> Linear(in, hidden) -> ReLU -> Dropout -> Linear(hidden, num_labels)."""

    def __init__(self, in_features: int, config: MmsaConfig):
        super().__init__()
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.dense = nn.Linear(in_features, config.classifier_hidden_size)
        self.activation = nn.ReLU()
        self.out_proj = nn.Linear(config.classifier_hidden_size, config.num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.activation(self.dense(self.dropout(features)))
        return self.out_proj(self.dropout(hidden))


class MmsaEncoderLayer(nn.TransformerEncoderLayer):
    """torch's batch-first transformer encoder layer, sized by the config (its attention weights are recorded by
    `recorded_attention`)."""

    def __init__(self, d_model: int, config: MmsaConfig, norm_first: bool = False, activation: str = "relu"):
        super().__init__(
            d_model=d_model,
            nhead=config.fusion_num_heads,
            dim_feedforward=d_model * config.fusion_intermediate_ratio,
            dropout=config.attention_dropout,
            activation=activation,
            batch_first=True,
            norm_first=norm_first,
        )


@contextmanager
def recorded_attention(layers):
    """While the block runs, each layer's self-attention also returns its head-averaged weights (its own
    `need_weights`, asked for by a forward pre-hook), collected in call order by a forward hook. The layers run
    torch's own code either way; with hooks attached torch takes its general path rather than the fused one."""
    weights, handles = [], []

    def ask(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": True}

    def keep(module, args, output):
        weights.append(output[1])

    for layer in layers:
        handles.append(layer.self_attn.register_forward_pre_hook(ask, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(keep))
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()


def run_encoder_layers(layers, hidden, padding_mask, output_attentions):
    """Runs `MmsaEncoderLayer`s (`padding_mask` is True at positions to ignore); with `output_attentions`, also
    returns each layer's attention weights (`recorded_attention`)."""
    if not output_attentions:
        for layer in layers:
            hidden = layer(hidden, src_key_padding_mask=padding_mask)
        return hidden, ()
    with recorded_attention(layers) as weights:
        for layer in layers:
            hidden = layer(hidden, src_key_padding_mask=padding_mask)
    return hidden, tuple(weights)


@dataclass
class MmsaFusionInputs:
    """What a fusion strategy receives: tower features projected to the fusion width d. Pooled features are `None`
    for a tower the strategy does not use, token sequences `None` unless it declares `needs.tokens`."""

    text: torch.Tensor | None = None
    """`(B, d)` pooled text feature."""
    image: torch.Tensor | None = None
    """`(B, d)` pooled image feature."""
    text_tokens: torch.Tensor | None = None
    """`(B, L, d)` text token states."""
    text_mask: torch.Tensor | None = None
    """`(B, L)` bool, True at real (not padding) text tokens."""
    image_tokens: torch.Tensor | None = None
    """`(B, N, d)` image feature-map tokens, one per position."""


MMSA_FUSIONS: dict[str, type["MmsaFusion"]] = {}
"""Fusion strategies by name: `MmsaModel` builds `MMSA_FUSIONS[config.fusion](config)`."""


class MmsaFusion(nn.Module):
    """Base class of fusion strategies. A subclass declares `needs` (`FusionNeeds`: which towers, and whether token
    sequences), sets `branch_sizes` (the widths of the vectors it returns, one classification head each), and
    implements `forward(inputs, output_attentions) -> (branches, attentions)`. Its docstring's first paragraph
    describes it in model cards. Register it with `@register_fusion("name")`."""

    needs: FusionNeeds = FusionNeeds(text=True, image=True, tokens=False)
    head_modalities: tuple[str, ...] | None = None
    """For strategies whose heads each read one modality (`("text", "image")`): explanations take the modality
    shares from them."""

    def __init__(self, config: MmsaConfig):
        super().__init__()
        self.branch_sizes: tuple[int, ...] = ()

    def forward(self, inputs: MmsaFusionInputs, output_attentions: bool = False):
        raise NotImplementedError

    def init_weights(self, std: float):
        """Initialises the strategy's own raw parameters (its submodules are initialised by their type)."""

    @classmethod
    def description(cls) -> str:
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def register_fusion(name: str):
    """Class decorator: registers a `MmsaFusion` subclass as fusion strategy `name` (for `MmsaConfig.fusion`), in the
    model's registry (`MMSA_FUSIONS`) and in the table of what each strategy needs (`configuration_mmsa.FUSION_NEEDS`,
    read by the config): the only writer of both. Refuses a name that is already registered."""

    def register(fusion_class: type[MmsaFusion]) -> type[MmsaFusion]:
        if not (isinstance(fusion_class, type) and issubclass(fusion_class, MmsaFusion)):
            raise TypeError(f"register_fusion({name!r}) takes a MmsaFusion subclass, got {fusion_class!r}.")
        if name in MMSA_FUSIONS:
            raise ValueError(f"fusion {name!r} is already registered ({MMSA_FUSIONS[name].__qualname__}).")
        FUSION_NEEDS[name] = fusion_class.needs
        MMSA_FUSIONS[name] = fusion_class
        return fusion_class

    return register


def unregister_fusion(name: str) -> type[MmsaFusion]:
    """Removes fusion strategy `name` from the registry and the needs table (for tests and notebooks); returns its
    class. Refuses an unknown name."""
    if name not in MMSA_FUSIONS:
        raise KeyError(f"fusion {name!r} is not registered; registered: {', '.join(list_fusions())}")
    FUSION_NEEDS.pop(name, None)
    return MMSA_FUSIONS.pop(name)


def list_fusions() -> list[str]:
    """The registered fusion strategies, sorted (the built-in ones and any registered since)."""
    return sorted(MMSA_FUSIONS)


class SingleTowerFusion(MmsaFusion):
    """One tower's pooled feature -> C(d); the other tower is not built. Subclasses set `modality`."""

    modality: str = "text"

    def __init__(self, config):
        super().__init__(config)
        self.branch_sizes = (config.fusion_hidden_size,)

    def forward(self, inputs, output_attentions=False):
        return (getattr(inputs, self.modality),), ()


@register_fusion("text_only")
class TextOnlyFusion(SingleTowerFusion):
    """Text only: the pooled text feature -> C(d); the image tower is not built."""

    needs = FusionNeeds(text=True, image=False, tokens=False)
    modality = "text"


@register_fusion("image_only")
class ImageOnlyFusion(SingleTowerFusion):
    """Image only: the pooled image feature -> C(d); the text tower is not built."""

    needs = FusionNeeds(text=False, image=True, tokens=False)
    modality = "image"


@register_fusion("naive_cat")
class NaiveCatFusion(MmsaFusion):
    """Concatenation: C(2d) on [text; image]."""

    def __init__(self, config):
        super().__init__(config)
        self.branch_sizes = (2 * config.fusion_hidden_size,)

    def forward(self, inputs, output_attentions=False):
        return (torch.cat([inputs.text, inputs.image], dim=-1),), ()


@register_fusion("naive_combine")
class NaiveCombineFusion(MmsaFusion):
    """Two heads: a text head C(d) and an image head C(d), combined as the mean of their log-probabilities."""

    head_modalities = ("text", "image")

    def __init__(self, config):
        super().__init__(config)
        self.branch_sizes = (config.fusion_hidden_size, config.fusion_hidden_size)

    def forward(self, inputs, output_attentions=False):
        return (inputs.text, inputs.image), ()


@register_fusion("cmac")
class CmacFusion(MmsaFusion):
    """Cross-modal attention: text tokens attend to image tokens and image tokens to (unpadded) text tokens; text
    head on [text; mean of attended text tokens], image head on [image; mean of attended image tokens], combined."""

    head_modalities = ("text", "image")

    needs = FusionNeeds(text=True, image=True, tokens=True)

    def __init__(self, config):
        super().__init__(config)
        d = config.fusion_hidden_size
        self.cross_attention_text = nn.MultiheadAttention(
            d, config.fusion_num_heads, dropout=config.attention_dropout, batch_first=True
        )
        self.cross_attention_image = nn.MultiheadAttention(
            d, config.fusion_num_heads, dropout=config.attention_dropout, batch_first=True
        )
        self.branch_sizes = (2 * d, 2 * d)

    def forward(self, inputs, output_attentions=False):
        text_tokens, image_tokens, text_mask = inputs.text_tokens, inputs.image_tokens, inputs.text_mask
        text_attended, text_weights = self.cross_attention_text(
            text_tokens, image_tokens, image_tokens, need_weights=output_attentions
        )
        image_attended, image_weights = self.cross_attention_image(
            image_tokens, text_tokens, text_tokens, key_padding_mask=~text_mask, need_weights=output_attentions
        )
        branches = (
            torch.cat([inputs.text, masked_mean(text_attended, text_mask)], dim=-1),
            torch.cat([inputs.image, image_attended.mean(dim=1)], dim=-1),
        )
        return branches, (text_weights, image_weights) if output_attentions else ()


@register_fusion("hstec")
class HstecFusion(MmsaFusion):
    """Joint token encoder: transformer encoder layer(s) over the joined text + image token sequence (padding
    masked); text head on [text; mean of encoded text tokens], image head on [image; mean of encoded image tokens],
    combined."""

    head_modalities = ("text", "image")

    needs = FusionNeeds(text=True, image=True, tokens=True)

    def __init__(self, config):
        super().__init__(config)
        d = config.fusion_hidden_size
        self.fusion_layers = nn.ModuleList(MmsaEncoderLayer(d, config) for _ in range(config.fusion_num_layers))
        self.branch_sizes = (2 * d, 2 * d)

    def forward(self, inputs, output_attentions=False):
        text_tokens, image_tokens, text_mask = inputs.text_tokens, inputs.image_tokens, inputs.text_mask
        sequence = torch.cat([text_tokens, image_tokens], dim=1)
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool, device=image_tokens.device)
        mask = torch.cat([text_mask, image_mask], dim=1)
        hidden, attentions = run_encoder_layers(self.fusion_layers, sequence, ~mask, output_attentions)
        length = text_tokens.shape[1]
        branches = (
            torch.cat([inputs.text, masked_mean(hidden[:, :length], text_mask)], dim=-1),
            torch.cat([inputs.image, hidden[:, length:].mean(dim=1)], dim=-1),
        )
        return branches, attentions


@register_fusion("ote")
class OteFusion(MmsaFusion):
    """Transformer encoder over the pooled features, as in the paper: [text; image] as a sequence of one through
    encoder layer(s) of width 2d -> C(2d) (the paper's best fusion)."""

    def __init__(self, config):
        super().__init__(config)
        width = 2 * config.fusion_hidden_size
        self.fusion_layers = nn.ModuleList(MmsaEncoderLayer(width, config) for _ in range(config.fusion_num_layers))
        self.branch_sizes = (width,)

    def forward(self, inputs, output_attentions=False):
        sequence = torch.cat([inputs.text, inputs.image], dim=-1).unsqueeze(1)
        hidden, attentions = run_encoder_layers(self.fusion_layers, sequence, None, output_attentions)
        return (hidden[:, 0],), attentions


@register_fusion("mm_transformer")
class MmTransformerFusion(MmsaFusion):
    """Multimodal transformer (ours): a learned fusion token, the pooled text and image vectors and all text and
    image tokens, with modality-type embeddings and a padding mask, through pre-norm transformer layers; C(3d) on
    [fusion token; text; image]."""

    needs = FusionNeeds(text=True, image=True, tokens=True)

    def __init__(self, config):
        super().__init__(config)
        d = config.fusion_hidden_size
        self.fusion_token = nn.Parameter(torch.zeros(1, 1, d))
        # 0: fusion token, 1: text (pooled and tokens), 2: image (pooled and tokens)
        self.modality_embeddings = nn.Embedding(3, d)
        self.fusion_layers = nn.ModuleList(
            MmsaEncoderLayer(d, config, norm_first=True, activation="gelu") for _ in range(config.fusion_num_layers)
        )
        self.fusion_norm = nn.LayerNorm(d)
        self.branch_sizes = (3 * d,)

    def init_weights(self, std):
        nn.init.normal_(self.fusion_token, std=std)

    def forward(self, inputs, output_attentions=False):
        text, image = inputs.text, inputs.image
        batch = text.shape[0]
        type_ids = torch.tensor([0, 1, 2], device=text.device)
        fusion_type, text_type, image_type = self.modality_embeddings(type_ids).unbind(0)
        sequence = torch.cat(
            [
                self.fusion_token.expand(batch, -1, -1) + fusion_type,
                text.unsqueeze(1) + text_type,
                image.unsqueeze(1) + image_type,
                inputs.text_tokens + text_type,
                inputs.image_tokens + image_type,
            ],
            dim=1,
        )
        keep = torch.ones(batch, 3, dtype=torch.bool, device=text.device)
        image_mask = torch.ones(inputs.image_tokens.shape[:2], dtype=torch.bool, device=text.device)
        mask = torch.cat([keep, inputs.text_mask, image_mask], dim=1)
        hidden, attentions = run_encoder_layers(self.fusion_layers, sequence, ~mask, output_attentions)
        # The head sees the fusion token beside the pooled unimodal features it was built from.
        return (torch.cat([self.fusion_norm(hidden[:, 0]), text, image], dim=-1),), attentions


FUSION_STRATEGIES = tuple(MMSA_FUSIONS)
"""The single fusion strategies this module defines (others can be added with `register_fusion`); `ensemble`
combines them."""


def member_inputs(inputs: MmsaFusionInputs, needs: FusionNeeds) -> MmsaFusionInputs:
    """What a member strategy receives: token tensors only if it declared `tokens=True`."""
    if needs.tokens:
        return inputs
    return MmsaFusionInputs(text=inputs.text, image=inputs.image)


@register_fusion("ensemble")
class EnsembleFusion(MmsaFusion):
    """Ensemble: several fusion strategies (`config.ensemble_fusions`) over the same towers, each with its own
    head(s); the model averages the log-probabilities of every head, so the members vote as a product of experts."""

    needs = FusionNeeds(text=True, image=True, tokens=True)

    def __init__(self, config):
        super().__init__(config)
        names = list(config.ensemble_fusions)
        self.members = nn.ModuleList(MMSA_FUSIONS[name](config) for name in names)
        self.branch_sizes = tuple(size for member in self.members for size in member.branch_sizes)

    def forward(self, inputs, output_attentions=False):
        branches, attentions = [], []
        for member in self.members:
            member_branches, member_attentions = member(member_inputs(inputs, member.needs), output_attentions)
            branches.extend(member_branches)
            attentions.extend(member_attentions)
        return tuple(branches), tuple(attentions)


PRE_REGISTRY_KEY_MAPPING = {
    r"^(mmsa\.|)(?=(?:cross_attention_text|cross_attention_image|fusion_layers|fusion_token|modality_embeddings|"
    r"fusion_norm)(?:\.|$))": r"\1fusion."
}
"""Checkpoints saved before fusion strategies became modules (`mmsa.cross_attention_text.*`, `mmsa.fusion_layers.*`,
`mmsa.fusion_token`, ...) hold today's tensors under older names (`mmsa.fusion.<same name>`): `from_pretrained`
renames them with this `key_mapping`, so such a folder loads as it is."""


def convert_pre_registry_state_dict(state_dict: dict) -> dict:
    """A pre-registry state dict with today's keys (`PRE_REGISTRY_KEY_MAPPING`), for `load_state_dict`."""
    import re as regex

    ((pattern, replacement),) = PRE_REGISTRY_KEY_MAPPING.items()
    return {regex.sub(pattern, replacement, key): value for key, value in state_dict.items()}


PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")


def check_weight_files(folder) -> None:
    """Refuses a local model folder whose weights exist only as pickle files: unpickling a file someone hands us can
    run their code, so MMSA models load `model.safetensors` alone."""
    from pathlib import Path

    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return
    pickles = [name for name in PICKLE_WEIGHT_FILES if (folder / name).is_file()]
    if pickles:
        raise ValueError(
            f"{folder} holds its weights only as {', '.join(pickles)}, a pickle file, which is refused: unpickling "
            "can run any code the file's author put in it. Convert it to model.safetensors where you trust its "
            "source (load it there and call save_pretrained)."
        )


class MmsaImageTower(TimmWrapperModel):
    """`TimmWrapperModel` (the headless timm model) that loads classification checkpoints without reporting their
    classifier as unexpected: the tower never has one. timm's `pretrained_cfg["classifier"]` names it."""

    def post_init(self):
        super().post_init()
        classifier = (self.timm_model.pretrained_cfg or {}).get("classifier") or "classifier"
        names = {classifier, "classifier", "fc", "head.fc"}
        self._keys_to_ignore_on_load_unexpected |= {rf"^(timm_model\.)?{re.escape(name)}\." for name in names}


class MmsaPreTrainedModel(PreTrainedModel):
    config: MmsaConfig
    config_class = MmsaConfig
    base_model_prefix = "mmsa"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["MmsaEncoderLayer"]

    def frozen_towers(self) -> list[nn.Module]:
        """The towers the config freezes: no gradient, always in eval mode."""
        base = getattr(self, self.base_model_prefix, self)
        towers = (
            (base.text_model, self.config.freeze_text_backbone),
            (base.vision_model, self.config.freeze_vision_backbone),
        )
        return [tower for tower, frozen in towers if tower is not None and frozen]

    def zero_grad(self, set_to_none: bool = True):
        """`Module.zero_grad` that does not walk the frozen towers, whose parameters never get a gradient (`Trainer`
        calls it at every step, and on cached features walking the towers cost a large part of a step)."""
        frozen = {id(tower) for tower in self.frozen_towers()}
        modules = [self]
        while modules:
            module = modules.pop()
            for parameter in module.parameters(recurse=False):
                if parameter.grad is None:
                    continue
                if set_to_none:
                    parameter.grad = None
                else:
                    if parameter.grad.grad_fn is not None:
                        parameter.grad.detach_()
                    else:
                        parameter.grad.requires_grad_(False)
                    parameter.grad.zero_()
            modules.extend(child for child in module.children() if id(child) not in frozen)

    def save_pretrained(self, save_directory, *args, **kwargs):
        # Saved folders load with every Auto class, whichever head class was saved. (`save_for_pipeline` also makes
        # them load with the `multimodal-sentiment` pipeline.)
        if self._auto_class is not None:
            self.config.auto_map = {**AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, allow_incomplete_weights: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a checkpoint whose weights do not cover the model its config
        describes (missing or mismatched tensors would otherwise be initialised at random, silently but for a
        warning). `allow_incomplete_weights=True` accepts it, e.g. heads added to a saved `MmsaModel`."""
        want_info = kwargs.pop("output_loading_info", False)
        check_weight_files(pretrained_model_name_or_path)
        kwargs.setdefault("use_safetensors", True)  # never a pickle (pytorch_model.bin) from a Hub repository either
        kwargs.setdefault("key_mapping", PRE_REGISTRY_KEY_MAPPING)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            if type(error).__module__.startswith("safetensors"):  # a truncated or damaged weights file
                raise ValueError(
                    f"{pretrained_model_name_or_path}: the weights file cannot be read ({error}): it is truncated "
                    "or damaged; copy or download it again"
                ) from None
            raise
        problems = []
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            problems.append(
                f"{len(missing)} missing tensor(s): {', '.join(missing[:4])}" + (", ..." if len(missing) > 4 else "")
            )
        if info.get("mismatched_keys"):
            problems.append(
                "tensors of other shapes "
                + ", ".join(
                    f"{key} {tuple(saved)} (model {tuple(expected)})"
                    for key, saved, expected in info["mismatched_keys"]
                )
            )
        if problems and not allow_incomplete_weights:
            raise ValueError(
                f"{pretrained_model_name_or_path}: the weights do not match the config "
                f"({model.config.fusion}, {model.config.fusion_num_layers} fusion layer(s)): "
                + "; ".join(problems)
                + ". Pass allow_incomplete_weights=True to load it anyway."
            )
        return (model, info) if want_info else model

    @classmethod
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str | None = None,
        vision_model_name_or_path: str | None = None,
        **config_kwargs,
    ):
        """Builds a model (`MmsaModel` or `MmsaForSequenceClassification`) whose towers are loaded from two
        checkpoints (Hub ids or local folders) and whose fusion layers and heads are new. `config_kwargs` go to
        `MmsaConfig` (e.g. `fusion="cmac"`).

        The vision checkpoint is a timm model in `TimmWrapper` format (e.g. `timm/resnet50.a1_in1k`); a tower the
        chosen fusion does not use is not loaded and its path may be `None`.
        """
        probe = MmsaConfig(fusion=config_kwargs.get("fusion", MmsaConfig.fusion))
        text_model = vision_model = None
        if probe.uses_text:
            if text_model_name_or_path is None:
                raise ValueError(f"fusion={probe.fusion!r} needs `text_model_name_or_path`.")
            text_model = AutoModel.from_pretrained(text_model_name_or_path)
            config_kwargs["text_config"] = text_model.config.to_dict()
        if probe.uses_vision:
            if vision_model_name_or_path is None:
                raise ValueError(f"fusion={probe.fusion!r} needs `vision_model_name_or_path`.")
            vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
            if vision_config.model_type != "timm_wrapper":
                raise ValueError(
                    f"{vision_model_name_or_path} is a {vision_config.model_type!r} checkpoint; the image tower must be a "
                    "timm model in TimmWrapper format (config.json with `architecture`), e.g. `timm/resnet50.a1_in1k`."
                )
            vision_model = MmsaImageTower.from_pretrained(vision_model_name_or_path)
            config_kwargs["vision_config"] = vision_model.config.to_dict()
        config = MmsaConfig(**config_kwargs)
        model = cls(config, text_model=text_model, vision_model=vision_model)
        logger.info(
            "Towers loaded from %s and %s; the fusion layers are newly initialised.",
            text_model_name_or_path,
            vision_model_name_or_path,
        )
        return model

    def optimize_for_inference(self, channels_last: bool = True, compile_vision: bool = False):
        """Readies the model for fast inference, in place, and returns it (in eval mode).

        - `channels_last`: the image tower's convolution weights in channels-last memory format, the layout oneDNN
          (CPU) and cuDNN run convolutions fastest in. The outputs are those of the default layout.
        - `compile_vision`: `torch.compile` the image tower (static shapes, inductor freezing), the larger of the
          two towers' costs on CPU. The first batch of each new batch size pays a compilation (seconds to tens of
          seconds), so it is for long-running or batch jobs; the weights are frozen into the compiled code, so it is
          for inference only. The text tower stays eager: its sequence length changes from batch to batch.

        For lower precision load the model with `dtype=torch.bfloat16` (CPUs with AVX512-BF16/AMX, recent GPUs);
        the processor's float32 `pixel_values` are cast to the tower's dtype. State-dict keys are unchanged, so the
        model still saves and loads as before.
        """
        self.eval()
        vision_model = self.base_model.vision_model
        if vision_model is None:
            return self
        if channels_last:
            vision_model.to(memory_format=torch.channels_last)
        if compile_vision and not getattr(vision_model, "_mmsa_compiled", False):
            import torch._inductor.config as inductor_config

            compiled = torch.compile(vision_model.forward, dynamic=False)

            def forward(*args, **kwargs):
                # Freezing (weights folded in as constants, BatchNorm fused into the convolutions) for this tower
                # only, without touching the process-wide inductor config.
                with inductor_config.patch(freezing=True):
                    return compiled(*args, **kwargs)

            vision_model.forward = forward
            vision_model._mmsa_compiled = True
        return self

    def _init_weights(self, module):
        """Initialises the fusion layers only: the towers are `PreTrainedModel`s that initialise themselves (and are
        skipped entirely when their weights were loaded)."""
        std = self.config.initializer_range
        if isinstance(module, MmsaFusion):
            module.init_weights(std)
        if isinstance(module, nn.MultiheadAttention):
            # torch's own initialisation of attention projections, written with public functions.
            nn.init.xavier_uniform_(module.in_proj_weight)
            nn.init.zeros_(module.in_proj_bias)
            nn.init.zeros_(module.out_proj.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def text_layers(text_model) -> torch.nn.ModuleList:
    """The stack of transformer layers of a text tower (`encoder.layer` in BERT, MPNet, RoBERTa and most others)."""
    count = text_model.config.num_hidden_layers
    for module in text_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"Cannot find the {count} transformer layers of {type(text_model).__name__}.")


def vision_stages(timm_model) -> list[str]:
    """The stages of a timm model, as the names of the modules that end them (timm's `feature_info`: `layer1` ..
    `layer4` of a ResNet after its stem, `blocks.0` .. `blocks.6` groups of an EfficientNet)."""
    return [info["module"] for info in getattr(timm_model, "feature_info", None) or []]


def vision_fixed_modules(timm_model, trainable: int) -> list[tuple[nn.Module, str]]:
    """The modules of a timm model that run before its last `trainable` stages, as `(parent, name)` in forward order:
    at each level of the path to the last fixed stage, the children registered before the one on the path, and that
    stage itself. (Registration order is forward order in timm's convolutional networks; `MmsaModel` checks the cut
    reproduces the whole tower before it caches anything.)"""
    stages = vision_stages(timm_model)
    if not 0 <= trainable < len(stages):
        raise ValueError(
            f"vision_trainable_blocks={trainable}, but the image tower {type(timm_model).__name__} has {len(stages)} "
            "stages (timm's feature_info): train fewer than all of them, or leave it unset to train the whole tower."
        )
    parts = stages[len(stages) - 1 - trainable].split(".")
    fixed, parent = [], timm_model
    for depth, part in enumerate(parts):
        for name, _ in parent.named_children():
            if name == part:
                break
            fixed.append((parent, name))
        if depth == len(parts) - 1:
            fixed.append((parent, part))
        parent = getattr(parent, part)
    return fixed


class _FixedPartDone(Exception):
    """Raised by a hook on the last fixed module of a partly trained image tower: its output is all that is needed."""


class MmsaModel(MmsaPreTrainedModel):
    """Text tower + image tower + fusion layers; returns the fused multimodal embedding (no classification head)."""

    def __init__(
        self,
        config: MmsaConfig,
        text_model: PreTrainedModel | None = None,
        vision_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        d = config.fusion_hidden_size
        self.text_model = self.text_projection = None
        self.vision_model = self.image_projection = self.image_token_projection = None
        if config.uses_text:
            self.text_model = text_model if text_model is not None else AutoModel.from_config(config.text_config)
            # One config object for tower and model (as in VisionTextDualEncoder), keeping the tower's attention
            # implementation, which a fresh sub-config does not carry.
            config.text_config._attn_implementation = self.text_model.config._attn_implementation
            self.text_model.config = config.text_config
            self.text_projection = MmsaProjection(config.text_config.hidden_size, d, config.projection_dropout)
        if config.uses_vision:
            self.vision_model = (
                vision_model if vision_model is not None else AutoModel.from_config(config.vision_config)
            )
            config.vision_config._attn_implementation = self.vision_model.config._attn_implementation
            self.vision_model.config = config.vision_config
            num_features = self.vision_model.timm_model.num_features
            self.image_projection = MmsaProjection(num_features, d, config.projection_dropout)
            if config.uses_tokens:
                # A 1x1 convolution over the feature map, applied per position: any input size works.
                self.image_token_projection = MmsaProjection(num_features, d, config.projection_dropout)

        if config.fusion not in MMSA_FUSIONS:
            raise ValueError(
                f"fusion {config.fusion!r} is declared but not implemented: register a MmsaFusion for it "
                "with @register_fusion before building the model."
            )
        self.fusion = MMSA_FUSIONS[config.fusion](config)
        self.post_init()
        self._apply_freezing()

    # --- towers -----------------------------------------------------------------------------------------------

    def _apply_freezing(self):
        """Freezes what the config freezes, and resolves once the fixed parts of partly trained towers (plain tuples,
        not submodules): `Trainer` calls `train()` at every step, which must not search the towers' modules."""
        for tower, frozen in (
            (self.text_model, self.config.freeze_text_backbone),
            (self.vision_model, self.config.freeze_vision_backbone),
        ):
            if tower is not None and frozen:
                tower.requires_grad_(False)
                tower.eval()
        self._text_stack = self._first_trained_text_layer = None
        self._vision_cut, self._vision_cut_checked = (), False
        fixed = []
        top = self.config.text_trainable_layers
        if self.text_model is not None and not self.config.freeze_text_backbone and top is not None:
            layers = text_layers(self.text_model)
            if not 0 <= top <= len(layers):
                raise ValueError(f"text_trainable_layers={top}, but the text tower has {len(layers)} layers.")
            parent = next(m for m in self.text_model.modules() if any(c is layers for c in m.children()))
            name = next(n for n, c in parent.named_children() if c is layers)
            self._text_stack, self._first_trained_text_layer = (parent, name, layers), len(layers) - top
            self.text_model.requires_grad_(False)
            for layer in layers[len(layers) - top :]:
                layer.requires_grad_(True)
            if top and getattr(self.text_model, "pooler", None) is not None:
                self.text_model.pooler.requires_grad_(True)
            fixed += self.fixed_text_modules()
        blocks = self.config.vision_trainable_blocks
        if self.vision_model is not None and not self.config.freeze_vision_backbone and blocks is not None:
            self._vision_cut = tuple(vision_fixed_modules(self.vision_model.timm_model, blocks))
            for parent, name in self._vision_cut:
                getattr(parent, name).requires_grad_(False)
            if not any(parameter.requires_grad for parameter in self.vision_model.parameters()):
                raise ValueError(
                    f"vision_trainable_blocks={blocks} leaves nothing of the image tower to train "
                    f"({type(self.vision_model.timm_model).__name__} has no weights after its last stage)."
                )
            fixed += self.fixed_vision_modules()
        self._fixed_modules = tuple(fixed)
        for module in self._fixed_modules:  # fixed: no dropout, BatchNorm statistics kept, in any mode
            module.eval()

    def train(self, mode: bool = True):
        # Frozen towers stay in eval mode: no dropout, and BatchNorm keeps its pretrained statistics. They are left
        # out rather than switched to training and back: `Trainer` calls `train()` at every step, and walking a
        # tower's hundreds of modules twice a step was a third of a step on cached features.
        frozen = self.frozen_towers()
        self.training = mode
        for child in self.children():
            if any(child is tower for tower in frozen):
                if child.training:
                    child.eval()
            else:
                child.train(mode)
        for module in self._fixed_modules:  # the fixed parts of partly trained towers: as frozen
            module.eval()
        return self

    @property
    def first_trained_text_layer(self) -> int | None:
        """With `text_trainable_layers` N (and the text tower not frozen): the index of the lowest trained layer,
        L - N; the embeddings and the layers below it are fixed. `None` when the whole tower trains or none of it."""
        return self._first_trained_text_layer

    def fixed_text_modules(self) -> list[nn.Module]:
        """The embeddings and lower layers of a partly trained text tower (no gradients, eval mode: no dropout), so
        their outputs are a fixed function of the text and can be cached (`text_hidden_states`)."""
        if self._text_stack is None:
            return []
        return [self.text_model.embeddings, *list(self._text_stack[2])[: self._first_trained_text_layer]]

    def text_hidden_states(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """The hidden states entering the first trained layer of a partly trained text tower `(B, L, H)`: what the
        fixed part computes, cached per post by the feature cache."""
        start = self.first_trained_text_layer
        if start is None:
            raise ValueError("text_hidden_states needs text_trainable_layers (and a text tower that is not frozen).")
        with torch.no_grad(), self._text_layers(slice(0, start)):  # the fixed layers only
            outputs = self.text_model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
            )
        return outputs.last_hidden_state

    @contextmanager
    def _text_layers(self, kept: slice, hidden_states: torch.Tensor | None = None):
        """Runs the text tower's own forward (its attention masks, position biases and pooler) with only the layers
        `kept` of its stack; given `hidden_states`, the embeddings return them instead of embedding the text."""
        parent, name, layers = self._text_stack
        embeddings = self.text_model.embeddings
        setattr(parent, name, nn.ModuleList(list(layers)[kept]))
        if hidden_states is not None:
            embeddings.forward = lambda *args, **kwargs: hidden_states
        try:
            yield
        finally:
            setattr(parent, name, layers)
            if hidden_states is not None:
                del embeddings.forward

    def encode_text_from_hidden_states(self, hidden_states, attention_mask):
        """`encode_text` from the cached `text_hidden_states` of a partly trained tower: only its trained layers (and
        pooler) run. Returns `(pooled (B, H), token states (B, L, H))`."""
        with self._text_layers(slice(self.first_trained_text_layer, None), hidden_states):
            outputs = self.text_model(inputs_embeds=hidden_states, attention_mask=attention_mask, return_dict=True)
        return self.pool_text(outputs, attention_mask)

    def encode_text(self, input_ids, attention_mask=None, token_type_ids=None):
        """Returns the text tower's `(pooled (B, H), token states (B, L, H))`."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_backbone):
            outputs = self.text_model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, return_dict=True
            )
        return self.pool_text(outputs, attention_mask)

    def pool_text(self, outputs, attention_mask):
        """The sentence vector (`config.text_pooling`) and token states of the text tower's outputs."""
        tokens = outputs.last_hidden_state
        pooled = getattr(outputs, "pooler_output", None)
        if self.config.text_pooling == "cls":
            pooled = tokens[:, 0]
        elif self.config.text_pooling == "mean" or pooled is None:
            pooled = masked_mean(tokens, attention_mask)
        return pooled, tokens

    def encode_image(self, pixel_values):
        """Returns the image tower's `(pooled (B, C), tokens (B, h*w, C))`: its pooled feature and last feature map
        flattened to one token per position."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_vision_backbone):
            # Processors give float32; a tower loaded in another dtype (`dtype=torch.bfloat16`) takes its own.
            outputs = self.vision_model(pixel_values=pixel_values.to(self.vision_model.dtype), return_dict=True)
        feature_map = outputs.last_hidden_state
        tokens = feature_map.flatten(2).transpose(1, 2) if feature_map.ndim == 4 else feature_map
        return outputs.pooler_output, tokens

    @property
    def first_trained_vision_stage(self) -> int | None:
        """With `vision_trainable_blocks` N (and the image tower not frozen): the index of the first trained stage of
        the tower's S stages, S - N; the stem and the stages before it are fixed. `None` otherwise."""
        if not self._vision_cut:
            return None
        return len(vision_stages(self.vision_model.timm_model)) - self.config.vision_trainable_blocks

    def fixed_vision_modules(self) -> list[nn.Module]:
        """The stem and earlier stages of a partly trained image tower (no gradients, eval mode), in forward order."""
        return [getattr(parent, name) for parent, name in self._vision_cut]

    @contextmanager
    def _vision_from_hidden_states(self):
        """Runs the image tower's own forward (its last stages, head convolution and pooling) with its fixed modules
        replaced by identities, so that it takes the feature map they would have computed."""
        originals = self.fixed_vision_modules()
        for parent, name in self._vision_cut:
            setattr(parent, name, nn.Identity())
        try:
            yield
        finally:
            for (parent, name), module in zip(self._vision_cut, originals):
                setattr(parent, name, module)

    def _fixed_vision_output(self, pixel_values):
        parent, name = self._vision_cut[-1]
        captured = {}

        def stop(module, args, output):
            captured["map"] = output
            raise _FixedPartDone

        handle = getattr(parent, name).register_forward_hook(stop)
        try:
            self.vision_model.timm_model.forward_features(pixel_values.to(self.vision_model.dtype))
        except _FixedPartDone:
            pass
        finally:
            handle.remove()
        return captured["map"]

    def vision_hidden_states(self, pixel_values) -> torch.Tensor:
        """The feature map entering the first trained stage of a partly trained image tower `(B, C, h, w)`: what its
        fixed part computes, cached per post by the feature cache. The first call checks on the first image it is given
        that the trained stages run from its map reproduce the whole tower (or says the architecture cannot be cut
        so)."""
        if not self._vision_cut:
            raise ValueError(
                "vision_hidden_states needs vision_trainable_blocks (and an image tower that is not frozen)."
            )
        with torch.no_grad():
            if not self._vision_cut_checked:
                self._check_vision_cut(pixel_values[:1])
            return self._fixed_vision_output(pixel_values)

    def _check_vision_cut(self, example):
        timm_model = self.vision_model.timm_model
        modes = {module: module.training for module in timm_model.modules()}
        timm_model.eval()
        problem = None
        try:
            whole = timm_model.forward_features(example.to(self.vision_model.dtype))
            hidden = self._fixed_vision_output(example)
            with self._vision_from_hidden_states():
                cut = timm_model.forward_features(hidden)
            if whole.shape != cut.shape or not torch.allclose(whole, cut, rtol=1e-4, atol=1e-5):
                problem = "its last stages run from the cut do not reproduce the whole tower"
        except RuntimeError as error:  # e.g. a position embedding added between modules, outside any of them
            problem = f"running its last stages from the cut fails ({error})"
        finally:
            for module, training in modes.items():
                module.training = training
        if problem is not None:
            raise ValueError(
                f"vision_trainable_blocks={self.config.vision_trainable_blocks}: {type(timm_model).__name__} cannot be "
                f"cut before its last stages: {problem}. Its forward does more than run its modules in order; train "
                "the whole image tower instead."
            )
        self._vision_cut_checked = True

    def encode_image_from_hidden_states(self, hidden_states):
        """`encode_image` from the cached `vision_hidden_states` of a partly trained tower: only its trained stages
        (and what follows them) run. Returns `(pooled (B, C), tokens (B, h*w, C))`."""
        with self._vision_from_hidden_states():
            return self.encode_image(hidden_states)

    def tower_text_features(
        self, input_ids, attention_mask, token_type_ids, text_features, text_tokens, text_hidden_states=None
    ):
        """The text tower's outputs, `(pooled, token states, attention mask)`: computed from `input_ids` (the raw
        route), from the cached `text_hidden_states` of a partly trained tower (its trained layers run), or the
        precomputed `text_features` (and `text_tokens`) of a frozen tower (the cached route)."""
        config = self.config
        if text_hidden_states is None and text_features is None and input_ids is None:
            raise ValueError(f"fusion={config.fusion!r} needs `input_ids` (or precomputed text features).")
        if attention_mask is None and (text_hidden_states is not None or text_features is None):
            # Every position is a real token: one row of ones per post, as long as its inputs.
            reference = text_hidden_states if text_hidden_states is not None else input_ids
            attention_mask = torch.ones(reference.shape[:2], dtype=torch.long, device=reference.device)
        if text_hidden_states is not None:
            text_features, text_tokens = self.encode_text_from_hidden_states(text_hidden_states, attention_mask)
        elif text_features is None:
            text_features, text_tokens = self.encode_text(input_ids, attention_mask, token_type_ids)
        return text_features, text_tokens, attention_mask

    def text_inputs(
        self, input_ids, attention_mask, token_type_ids, text_features, text_tokens, text_hidden_states=None
    ):
        """The fusion's text inputs, `(pooled (B, d), token states (B, L, d), mask (B, L))`, projected to the fusion
        width; the tokens and mask are `None` for a fusion that declared `tokens=False`."""
        config = self.config
        text_features, text_tokens, attention_mask = self.tower_text_features(
            input_ids, attention_mask, token_type_ids, text_features, text_tokens, text_hidden_states
        )
        text = self.text_projection(text_features)
        if not config.uses_tokens:
            return text, None, None
        if text_tokens is None:
            raise ValueError(f"fusion={config.fusion!r} needs `text_tokens` along with `text_features`.")
        if attention_mask is None:
            attention_mask = torch.ones(text_tokens.shape[:2], dtype=torch.long, device=text_tokens.device)
        return text, self.text_projection(text_tokens), attention_mask.bool()

    def image_inputs(self, pixel_values, image_features, image_tokens, vision_hidden_states=None):
        """The fusion's image inputs, `(pooled (B, d), feature-map tokens (B, N, d))`, projected to the fusion width
        from `pixel_values` (the raw route), from the cached `vision_hidden_states` of a partly trained tower (its
        trained stages run) or a frozen tower's precomputed features (the cached route); the tokens are `None` for a
        fusion that declared `tokens=False`."""
        config = self.config
        if vision_hidden_states is not None:
            image_features, image_tokens = self.encode_image_from_hidden_states(vision_hidden_states)
        elif image_features is None:
            if pixel_values is None:
                raise ValueError(f"fusion={config.fusion!r} needs `pixel_values` (or precomputed image features).")
            image_features, image_tokens = self.encode_image(pixel_values)
        image = self.image_projection(image_features)
        if not config.uses_tokens:
            return image, None
        if image_tokens is None:
            raise ValueError(f"fusion={config.fusion!r} needs `image_tokens` along with `image_features`.")
        return image, self.image_token_projection(image_tokens)

    # --- fusion -----------------------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        image_tokens: torch.FloatTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        text_tokens: torch.FloatTensor | None = None,
        text_hidden_states: torch.FloatTensor | None = None,
        vision_hidden_states: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> MmsaModelOutput:
        r"""
        input_ids / attention_mask / token_type_ids: the tokenizer's outputs (required unless `fusion="image_only"`).
        pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            The processor's images, any size (required unless `fusion="text_only"` or image features are given).
        image_features / image_tokens (*optional*):
            Precomputed outputs of `encode_image` (pooled `(B, C)` and tokens `(B, N, C)`), used instead of
            `pixel_values`: a frozen image tower's features can be computed once and cached.
        text_features / text_tokens (*optional*):
            Precomputed outputs of `encode_text` (pooled `(B, H)` and token states `(B, L, H)`, with
            `attention_mask` marking the real tokens), used instead of `input_ids` for a frozen text tower.
        text_hidden_states (`torch.FloatTensor` of shape `(batch_size, length, hidden)`, *optional*):
            With `text_trainable_layers`: the hidden states entering the first trained layer (`text_hidden_states()`),
            with `attention_mask`, used instead of `input_ids`; only the trained layers run.
        vision_hidden_states (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`, *optional*):
            With `vision_trainable_blocks`: the feature map entering the first trained stage
            (`vision_hidden_states()`), used instead of `pixel_values`; only the trained stages run.
        output_attentions (`bool`, *optional*): return the fusion layers' attention weights.
        """
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        text = text_mask = image = image_token_states = None
        if config.uses_text:
            text, text_tokens, text_mask = self.text_inputs(
                input_ids, attention_mask, token_type_ids, text_features, text_tokens, text_hidden_states
            )
        if config.uses_vision:
            image, image_token_states = self.image_inputs(
                pixel_values, image_features, image_tokens, vision_hidden_states
            )
        branches, attentions = self.fusion(
            MmsaFusionInputs(
                text=text,
                image=image,
                text_tokens=text_tokens,
                text_mask=text_mask,
                image_tokens=image_token_states,
            ),
            output_attentions=bool(output_attentions),
        )
        output = MmsaModelOutput(
            pooler_output=torch.cat(branches, dim=-1),
            branch_embeds=branches,
            text_embeds=text,
            image_embeds=image,
            attentions=attentions if output_attentions else None,
        )
        return output

    @property
    def branch_sizes(self) -> tuple[int, ...]:
        """Widths of `branch_embeds`, one per classification head."""
        return self.fusion.branch_sizes


@dataclass
class MmsaSequenceClassifierOutput(SequenceClassifierOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
        The cross-entropy of the post labels on the raw logits, plus `modality_loss_weight` times each modality
        head's cross-entropy when `text_labels` / `image_labels` are given.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        The post's scores: the fused head's logits divided by `config.temperature` (softmax gives calibrated
        probabilities), mixed with the labelling rule's distribution when `config.rule_weight` > 0.
    text_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
        The text head's logits divided by `config.text_temperature` (with `config.modality_heads`).
    image_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*):
        The image head's logits divided by `config.image_temperature` (with `config.modality_heads`).
    """

    text_logits: torch.FloatTensor | None = None
    image_logits: torch.FloatTensor | None = None


def rule_distribution(text_probabilities, image_probabilities, label2id: dict) -> torch.Tensor:
    """The post distribution that two modality distributions imply under MVSA's labelling rule (the MultiSentiNet
    rule): agreeing labels give that label, a neutral one gives the other, positive against negative is dropped, so
    the mass of those pairs is excluded and the rest renormalised. "neutral" is then "both neutral"."""
    negative, neutral, positive = (label2id[name] for name in ("negative", "neutral", "positive"))
    t, i = text_probabilities, image_probabilities
    columns = {
        positive: t[:, positive] * (i[:, positive] + i[:, neutral]) + t[:, neutral] * i[:, positive],
        negative: t[:, negative] * (i[:, negative] + i[:, neutral]) + t[:, neutral] * i[:, negative],
        neutral: t[:, neutral] * i[:, neutral],
    }
    implied = torch.stack([columns[index] for index in range(t.shape[-1])], dim=-1)
    return implied / implied.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def cross_entropy(logits, labels, weight=None, label_smoothing: float = 0.0) -> torch.Tensor:
    """The mean cross-entropy over the labelled posts (label -100 is ignored), with `label_smoothing`; 0 for a batch
    with none."""
    labels = labels.to(logits.device)
    if bool((labels == -100).all()):
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)


def mixup_draw(batch_size: int, alpha: float, device) -> tuple[float, torch.Tensor]:
    """One manifold-mixup draw for a batch: the weight λ ~ Beta(α, α) and the random order of the posts each post is
    mixed with (from torch's global generator, so a seeded run repeats)."""
    weight = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha))).sample()
    return float(weight), torch.randperm(batch_size).to(device)


def mix(features: torch.Tensor | None, mixing: tuple[float, torch.Tensor]) -> torch.Tensor | None:
    """`λ * features + (1 - λ) * features[order]` (`None` stays `None`)."""
    if features is None:
        return None
    weight, order = mixing
    return weight * features + (1 - weight) * features[order]


def mixed_cross_entropy(logits, labels, mixing, weight=None, label_smoothing: float = 0.0) -> torch.Tensor:
    """`cross_entropy(logits, labels)`, or under mixup (`mixing` = `(λ, order)`) `λ` times it plus `1 - λ` times that
    of `labels[order]`: the loss of mixed inputs against the labels of both posts of each pair."""
    if mixing is None:
        return cross_entropy(logits, labels, weight, label_smoothing)
    mixed_weight, order = mixing
    return mixed_weight * cross_entropy(logits, labels, weight, label_smoothing) + (1 - mixed_weight) * cross_entropy(
        logits, labels.to(order.device)[order], weight, label_smoothing
    )


class MmsaForSequenceClassification(MmsaPreTrainedModel):
    """`MmsaModel` with the fusion strategy's classification head(s) on top, and with `config.modality_heads` a text
    head and an image head that predict each modality's own sentiment."""

    accepts_loss_kwargs = False
    """The loss is a mean over the batch and takes no `num_items_in_batch`, so the `Trainer` divides it by the
    gradient-accumulation steps itself (accumulating k batches of b posts gives the update of one batch of k*b)."""

    def __init__(self, config: MmsaConfig, **towers):
        """`towers`: `text_model` / `vision_model`, towers already built (see `MmsaModel`)."""
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mmsa = MmsaModel(config, **towers)
        self.classifiers = nn.ModuleList(MmsaClassificationHead(size, config) for size in self.mmsa.branch_sizes)
        if config.modality_heads:
            self.text_head = MmsaClassificationHead(config.fusion_hidden_size, config)
            self.image_head = MmsaClassificationHead(config.fusion_hidden_size, config)
        self.post_init()

    @can_return_tuple
    def forward(self, labels=None, text_labels=None, image_labels=None, output_attentions=None, **inputs):
        r"""
        Returns an `MmsaSequenceClassifierOutput`.

        inputs: what `MmsaModel.forward` takes (`input_ids`, `attention_mask`, `token_type_ids`, `pixel_values`, or
            the cached `text_features` / `text_tokens` / `image_features` / `image_tokens`).
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)` (-100: no post label, e.g. a post whose modalities conflict); when
            given, the (optionally class-weighted) cross-entropy is returned.
        text_labels / image_labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Each modality's own label, for the modality heads (-100: none).
        """
        config = self.config
        outputs = self.mmsa(**inputs, output_attentions=output_attentions)
        branches, text_embeds, image_embeds = outputs.branch_embeds, outputs.text_embeds, outputs.image_embeds
        mixing = None
        if (
            self.training
            and config.mixup_alpha > 0
            and any(x is not None for x in (labels, text_labels, image_labels))
        ):
            mixing = mixup_draw(branches[0].shape[0], config.mixup_alpha, branches[0].device)
            branches = tuple(mix(branch, mixing) for branch in branches)
            text_embeds, image_embeds = mix(text_embeds, mixing), mix(image_embeds, mixing)
        head_logits = [head(branch) for head, branch in zip(self.classifiers, branches)]
        if len(head_logits) == 1:
            logits = head_logits[0]
        else:
            # Combine heads as the mean of their log-probabilities (a product of experts, renormalised by softmax).
            logits = torch.stack([torch.log_softmax(h, dim=-1) for h in head_logits]).mean(dim=0)

        loss = None
        if labels is not None:
            weight = None
            if config.class_weights is not None:
                weight = torch.tensor(config.class_weights, dtype=logits.dtype, device=logits.device)
            loss = mixed_cross_entropy(logits, labels, mixing, weight, config.label_smoothing)

        text_logits = image_logits = None
        if config.modality_heads:
            text_logits, image_logits = self.text_head(text_embeds), self.image_head(image_embeds)
            for modality_logits, modality_labels in ((text_logits, text_labels), (image_logits, image_labels)):
                if modality_labels is not None:
                    term = config.modality_loss_weight * mixed_cross_entropy(
                        modality_logits, modality_labels, mixing, label_smoothing=config.label_smoothing
                    )
                    loss = term if loss is None else loss + term
            text_logits, image_logits = text_logits / config.text_temperature, image_logits / config.image_temperature

        if config.temperature != 1.0:
            logits = logits / config.temperature
        if config.modality_heads and config.rule_weight > 0:
            implied = rule_distribution(text_logits.softmax(-1), image_logits.softmax(-1), config.label2id)
            mixed = (1 - config.rule_weight) * logits.softmax(-1) + config.rule_weight * implied
            logits = mixed.clamp_min(1e-12).log()

        return MmsaSequenceClassifierOutput(
            loss=loss, logits=logits, text_logits=text_logits, image_logits=image_logits, attentions=outputs.attentions
        )


__all__ = [
    "FUSION_STRATEGIES",
    "MMSA_FUSIONS",
    "MmsaFusion",
    "MmsaFusionInputs",
    "MmsaForSequenceClassification",
    "MmsaModel",
    "MmsaModelOutput",
    "MmsaPreTrainedModel",
    "MmsaSequenceClassifierOutput",
    "list_fusions",
    "register_fusion",
    "rule_distribution",
    "unregister_fusion",
]
