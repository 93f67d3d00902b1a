"""mmsa: Hugging Face-native multimodal (image + text) sentiment analysis.

Importing the package registers the `mmsa` model type with `AutoConfig`, `AutoModel`,
`AutoModelForSequenceClassification`, `AutoImageProcessor` and `AutoProcessor`, and marks the classes so that
`save_pretrained` writes `auto_map` and copies the code files for `trust_remote_code=True` loading.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_mmsa import FUSION_NEEDS, FUSION_STRATEGIES, FusionNeeds, MmsaConfig
from .modeling_mmsa import (
    MMSA_FUSIONS,
    MmsaForSequenceClassification,
    MmsaFusion,
    MmsaFusionInputs,
    MmsaModel,
    MmsaModelOutput,
    MmsaPreTrainedModel,
    register_fusion,
)
from .pipeline_mmsa import MultimodalSentimentPipeline
from .processing_mmsa import MmsaImageProcessor, MmsaProcessor, load_rgb_image


__version__ = "0.1.0"

AutoConfig.register(MmsaConfig.model_type, MmsaConfig, exist_ok=True)
AutoModel.register(MmsaConfig, MmsaModel, exist_ok=True)
AutoModelForSequenceClassification.register(MmsaConfig, MmsaForSequenceClassification, exist_ok=True)
AutoImageProcessor.register(
    MmsaConfig, image_processor_classes={"pil": MmsaImageProcessor, "torchvision": MmsaImageProcessor}, exist_ok=True
)
AutoProcessor.register(MmsaConfig, MmsaProcessor, exist_ok=True)

PIPELINE_REGISTRY.register_pipeline(
    "multimodal-sentiment",
    pipeline_class=MultimodalSentimentPipeline,
    pt_model=AutoModelForSequenceClassification,
    type="multimodal",
)

MmsaConfig.register_for_auto_class()
MmsaModel.register_for_auto_class("AutoModel")
MmsaForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
MmsaImageProcessor.register_for_auto_class("AutoImageProcessor")
MmsaProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "FUSION_NEEDS",
    "FUSION_STRATEGIES",
    "FusionNeeds",
    "MMSA_FUSIONS",
    "MmsaFusion",
    "MmsaFusionInputs",
    "register_fusion",
    "MmsaConfig",
    "MmsaForSequenceClassification",
    "MmsaImageProcessor",
    "MmsaModel",
    "MmsaModelOutput",
    "MmsaPreTrainedModel",
    "MmsaProcessor",
    "MultimodalSentimentPipeline",
    "load_rgb_image",
]
