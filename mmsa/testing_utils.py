"""Tiny random models, tokenizers and processors for tests and examples (no downloads)."""

from transformers import BertTokenizer

from .configuration_mmsa import MmsaConfig
from .modeling_mmsa import MmsaForSequenceClassification
from .processing_mmsa import MmsaProcessor


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "i love this so much hate sad happy day the a # @ http : / . ! , good bad photo great awful"
).split()


def tiny_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={word: i for i, word in enumerate(TINY_VOCAB)})


def tiny_config(fusion: str = "ote", **kwargs) -> MmsaConfig:
    """A BERT with one 32-wide layer and a ResNet-10 image tower, small enough for fast CPU tests."""
    text_config = dict(
        model_type="bert",
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    vision_config = dict(architecture="resnet10t", pretrained_cfg={"input_size": (3, 64, 64), "crop_pct": 1.0})
    defaults = dict(fusion_hidden_size=16, fusion_num_heads=4, classifier_hidden_size=8)
    defaults.update(kwargs)
    return MmsaConfig(text_config=text_config, vision_config=vision_config, fusion=fusion, **defaults)


def tiny_model_and_processor(fusion: str = "ote", seed: int = 0, **kwargs):
    import torch

    torch.manual_seed(seed)
    config = tiny_config(fusion, **kwargs)
    model = MmsaForSequenceClassification(config)
    processor = MmsaProcessor.from_model_config(config, tiny_tokenizer(), max_length=32)
    return model, processor
