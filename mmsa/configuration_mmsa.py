"""Configuration for MMSA: multimodal (image + text) sentiment analysis models."""

from typing import NamedTuple

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, TimmWrapperConfig
from transformers.configuration_utils import SubConfigSpec


class FusionNeeds(NamedTuple):
    """What a fusion strategy consumes: the text tower, the image tower, and token sequences (text token states and
    image feature-map tokens) besides the pooled features."""

    text: bool
    image: bool
    tokens: bool


FUSION_NEEDS: dict[str, FusionNeeds] = {}
"""What each registered fusion strategy needs, by name. Written only by `modeling_mmsa.register_fusion`, from the
`needs` each strategy class declares; read by the config (`uses_text`, `uses_vision`, `uses_tokens`)."""


def fusion_needs(name: str) -> FusionNeeds | None:
    """The needs of fusion strategy `name`, or None if no such strategy is registered. The built-in strategies are
    registered when `modeling_mmsa` is imported, which this does on first use."""
    if name not in FUSION_NEEDS:
        from .modeling_mmsa import MMSA_FUSIONS  # noqa: F401  (importing it registers the built-in strategies)
    return FUSION_NEEDS.get(name)


TEXT_POOLINGS = ("pooler", "mean", "cls")
DEFAULT_ENSEMBLE = ("naive_cat", "ote", "mm_transformer")

SENTIMENT_LABELS = ("negative", "neutral", "positive")
"""The MVSA classes, in the order of their ids (also the dataset's `ClassLabel` names)."""


@strict
class MmsaConfig(PreTrainedConfig):
    r"""
    Configuration of an MMSA model: a text tower (any `AutoModel`, BERT-family by default), a timm image tower
    (through `TimmWrapperModel`, ResNet-50 by default) and a fusion head.

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the text tower. A dict needs a `model_type`; defaults to a `BertConfig` shaped like
            `bert-base-uncased`.
        vision_config (`dict` or `TimmWrapperConfig`, *optional*):
            Configuration of the image tower; defaults to `TimmWrapperConfig(architecture="resnet50")`. Its
            `pretrained_cfg` (input size, mean, std, crop, interpolation) drives the processor's image transforms.
        fusion (`str`, *optional*, defaults to `"ote"`):
            How text and image features are fused, one of `modeling_mmsa.list_fusions()`: the paper's `naive_cat`,
            `naive_combine`, `cmac`, `hstec`, `ote`, its unimodal baselines `text_only` and `image_only`,
            `mm_transformer`, and any strategy registered with `modeling_mmsa.register_fusion`. See
            `modeling_mmsa` for what each one computes.
        text_pooling (`str`, *optional*, defaults to `"pooler"`):
            How the text tower's sentence vector is taken: `"pooler"` (its pooled output, as BERT's `[CLS]` pooler in
            the paper; a masked mean when the tower has no pooler), `"mean"` (masked mean of the token states, how
            sentence-transformers models such as all-MiniLM-L6-v2 are trained) or `"cls"` (the first token state).
        fusion_hidden_size (`int`, *optional*, defaults to 64):
            Width `d` that text and image features are projected to before fusion.
        fusion_num_heads (`int`, *optional*, defaults to 8):
            Attention heads in every fusion attention / transformer layer.
        fusion_num_layers (`int`, *optional*, defaults to 1):
            Transformer layers in `hstec`, `ote` and `mm_transformer`.
        fusion_intermediate_ratio (`int`, *optional*, defaults to 4):
            Feed-forward width of the fusion transformer layers, as a multiple of their model width.
        projection_dropout (`float`, *optional*, defaults to 0.2):
            Dropout applied to the tower features before the projections to `fusion_hidden_size`.
        attention_dropout (`float`, *optional*, defaults to 0.4):
            Dropout inside the fusion attention / transformer layers.
        classifier_dropout (`float`, *optional*, defaults to 0.5):
            Dropout before each linear layer of the classification heads.
        classifier_hidden_size (`int`, *optional*, defaults to 128):
            Hidden width of the two-layer classification heads.
        class_weights (`list[float]`, *optional*):
            Per-class weights of the cross-entropy loss, one per label; `None` weighs classes equally.
        freeze_text_backbone (`bool`, *optional*, defaults to `False`):
            Keep the text tower's weights fixed (no gradients, dropout off).
        freeze_vision_backbone (`bool`, *optional*, defaults to `False`):
            Keep the image tower's weights fixed (no gradients, BatchNorm statistics frozen in eval mode).
        text_trainable_layers (`int`, *optional*):
            Train only the top N transformer layers of the text tower (and its pooler); its embeddings and lower
            layers stay fixed (no gradients, eval mode), so `train_hf.py` caches per post the hidden states entering
            the first trained layer and runs only the top N. `None` trains every layer. Ignored when
            `freeze_text_backbone` is set.
        vision_trainable_blocks (`int`, *optional*):
            Train only the last N stages of the image tower (timm's `feature_info` stages, e.g. `layer4` of a
            ResNet for N=1) and what follows them (a head convolution, the pooling); the stem and earlier stages stay
            fixed (no gradients, eval mode), so `train_hf.py` caches per post the feature map entering the first
            trained stage (computed with the eval transform: no augmentation) and runs only the last N. `None`
            trains the whole tower. Ignored when `freeze_vision_backbone` is set.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the post and modality cross-entropies (`train_hf.py --label_smoothing_factor` sets
            it).
        mixup_alpha (`float`, *optional*, defaults to 0.0):
            Manifold mixup in training (Verma et al., 2019): each training batch's head inputs (the fused vectors
            and the modality heads' pooled features) are mixed with those of the same batch in a random order,
            with one weight λ ~ Beta(α, α) per batch, and the loss is λ times the loss of the posts' own labels
            plus 1 - λ times that of the labels they were mixed with. It applies to every fusion, whose token
            sequences need not line up, and works on cached features; evaluation and inference are unchanged.
            0 turns it off.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialiser of the new fusion layers.
        ensemble_fusions (`list[str]`, *optional*):
            With `fusion="ensemble"`: the member strategies, each with its own head(s) over the same towers; defaults
            to `["naive_cat", "ote", "mm_transformer"]`.
        temperature (`float`, *optional*, defaults to 1.0):
            The post logits are divided by it in the forward pass (the loss uses the raw logits), so that every route
            (pipeline, CLI, ONNX, explanations, demo) gives calibrated probabilities; the argmax never changes. Fitted
            on the validation split by `train_hf.py --calibration temperature` or `mmsa calibrate` (1.0: as trained).
        modality_heads (`bool`, *optional*, defaults to `False`):
            Add a text head and an image head on the projected pooled features, trained on each post's `text_label`
            and `image_label` (any fusion that uses both towers); the model then also returns `text_logits` and
            `image_logits`.
        modality_loss_weight (`float`, *optional*, defaults to 0.5):
            Weight of each modality head's cross-entropy in the loss.
        text_temperature (`float`, *optional*, defaults to 1.0):
            Temperature of the text head's logits (as `temperature`).
        image_temperature (`float`, *optional*, defaults to 1.0):
            Temperature of the image head's logits (as `temperature`).
        rule_weight (`float`, *optional*, defaults to 0.0):
            With modality heads: the post distribution is `(1 - rule_weight) * fused + rule_weight * rule`, where
            `rule` is the post distribution the two calibrated modality distributions imply under MVSA's labelling
            rule (agreeing labels, or the non-neutral one; positive against negative excluded, renormalised).
            Chosen on validation by `train_hf.py` (`--rule_weight_grid`); 0 keeps the fused head's alone.
        num_labels / id2label / label2id:
            Standard classification fields; default to the three MVSA classes `negative`, `neutral`, `positive`.

    Example:

    ```python
    >>> from mmsa import MmsaConfig, MmsaForSequenceClassification
    >>> config = MmsaConfig(fusion="mm_transformer")
    >>> model = MmsaForSequenceClassification(config)  # random towers; see `from_text_vision_pretrained`
    ```
    """

    model_type = "mmsa"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": TimmWrapperConfig,
    }

    text_config: PreTrainedConfig | dict | None = None
    vision_config: PreTrainedConfig | dict | None = None
    fusion: str = "ote"
    text_pooling: str = "pooler"
    fusion_hidden_size: int = 64
    fusion_num_heads: int = 8
    fusion_num_layers: int = 1
    fusion_intermediate_ratio: int = 4
    projection_dropout: float = 0.2
    attention_dropout: float = 0.4
    classifier_dropout: float = 0.5
    classifier_hidden_size: int = 128
    class_weights: list[float] | None = None
    freeze_text_backbone: bool = False
    freeze_vision_backbone: bool = False
    text_trainable_layers: int | None = None
    vision_trainable_blocks: int | None = None
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    initializer_range: float = 0.02
    ensemble_fusions: list[str] | None = None
    temperature: float = 1.0
    modality_heads: bool = False
    modality_loss_weight: float = 0.5
    text_temperature: float = 1.0
    image_temperature: float = 1.0
    rule_weight: float = 0.0

    def __post_init__(self, **kwargs):
        if self.id2label is None and kwargs.get("num_labels") in (None, len(SENTIMENT_LABELS)):
            kwargs.pop("num_labels", None)
            self.id2label = dict(enumerate(SENTIMENT_LABELS))
            if self.label2id is None:
                self.label2id = {label: i for i, label in enumerate(SENTIMENT_LABELS)}
        super().__post_init__(**kwargs)
        if fusion_needs(self.fusion) is None:
            raise ValueError(f"`fusion` must be one of {tuple(FUSION_NEEDS)}, got {self.fusion!r}.")
        if self.text_pooling not in TEXT_POOLINGS:
            raise ValueError(f"`text_pooling` must be one of {TEXT_POOLINGS}, got {self.text_pooling!r}.")
        for name in ("fusion_hidden_size", "fusion_num_heads", "fusion_num_layers", "classifier_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.fusion_hidden_size % self.fusion_num_heads:
            raise ValueError(
                f"`fusion_hidden_size` ({self.fusion_hidden_size}) must be divisible by `fusion_num_heads` "
                f"({self.fusion_num_heads})."
            )
        if self.fusion == "ensemble":
            self.ensemble_fusions = list(self.ensemble_fusions or DEFAULT_ENSEMBLE)
            unknown = [name for name in self.ensemble_fusions if name == "ensemble" or fusion_needs(name) is None]
            if unknown or not self.ensemble_fusions:
                raise ValueError(
                    f"`ensemble_fusions` must name registered single strategies, got {self.ensemble_fusions}."
                )
        for name in ("temperature", "text_temperature", "image_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be a positive number, got {getattr(self, name)}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}.")
        if not self.mixup_alpha >= 0.0:
            raise ValueError(f"`mixup_alpha` must be 0 (off) or positive, got {self.mixup_alpha}.")
        if not 0.0 <= self.rule_weight <= 1.0:
            raise ValueError(f"`rule_weight` must be in [0, 1], got {self.rule_weight}.")
        if self.modality_heads and not (self.uses_text and self.uses_vision):
            raise ValueError(f"`modality_heads` needs a fusion that uses both towers, not {self.fusion!r}.")
        if self.class_weights is not None and len(self.class_weights) != self.num_labels:
            raise ValueError(
                f"`class_weights` has {len(self.class_weights)} entries but the model has {self.num_labels} labels."
            )

    @property
    def uses_text(self) -> bool:
        return fusion_needs(self.fusion).text

    @property
    def uses_vision(self) -> bool:
        return fusion_needs(self.fusion).image

    @property
    def uses_tokens(self) -> bool:
        return fusion_needs(self.fusion).tokens


__all__ = ["FUSION_NEEDS", "FusionNeeds", "MmsaConfig", "SENTIMENT_LABELS", "fusion_needs"]
