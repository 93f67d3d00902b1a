"""mmsa: Hugging Face-native multimodal (image + text) sentiment analysis.

With torch installed, importing the package registers the `mmsa` model type with `AutoConfig`, `AutoModel`,
`AutoModelForSequenceClassification`, `AutoImageProcessor` and `AutoProcessor`, and marks the classes so that
`save_pretrained` writes `auto_map` and copies the code files for `trust_remote_code=True` loading.
"""

from .configuration_mmsa import FUSION_NEEDS, FusionNeeds, MmsaConfig
from .image_io import load_rgb_image


__version__ = "0.1.0"

try:
    import torch  # noqa: F401
except ImportError:  # the ONNX runtime (mmsa.onnx_runtime, load_classifier(..., backend="onnx")) needs no torch
    TORCH_AVAILABLE = False
else:
    TORCH_AVAILABLE = True

if TORCH_AVAILABLE:
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoProcessor,
    )
    from transformers.pipelines import PIPELINE_REGISTRY

    from .modeling_mmsa import (
        FUSION_STRATEGIES,
        MMSA_FUSIONS,
        MmsaForSequenceClassification,
        MmsaFusion,
        MmsaFusionInputs,
        MmsaModel,
        MmsaModelOutput,
        MmsaPreTrainedModel,
        list_fusions,
        register_fusion,
        unregister_fusion,
    )
    from .pipeline_mmsa import MultimodalSentimentPipeline
    from .processing_mmsa import MmsaImageProcessor, MmsaProcessor

    AutoConfig.register(MmsaConfig.model_type, MmsaConfig, exist_ok=True)
    AutoModel.register(MmsaConfig, MmsaModel, exist_ok=True)
    AutoModelForSequenceClassification.register(MmsaConfig, MmsaForSequenceClassification, exist_ok=True)
    AutoImageProcessor.register(
        MmsaConfig,
        image_processor_classes={"pil": MmsaImageProcessor, "torchvision": MmsaImageProcessor},
        exist_ok=True,
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
    "list_fusions",
    "register_fusion",
    "unregister_fusion",
    "MmsaConfig",
    "MmsaForSequenceClassification",
    "MmsaImageProcessor",
    "MmsaModel",
    "MmsaModelOutput",
    "MmsaPreTrainedModel",
    "MmsaProcessor",
    "MultimodalSentimentPipeline",
    "TORCH_AVAILABLE",
    "load_classifier",
    "load_rgb_image",
]
if not TORCH_AVAILABLE:
    __all__ = [
        "FUSION_NEEDS",
        "FusionNeeds",
        "MmsaConfig",
        "TORCH_AVAILABLE",
        "load_classifier",
        "load_rgb_image",
    ]


def __getattr__(name):
    if name == "load_classifier":  # imported on use, so that `python -m mmsa.cli` finds mmsa.cli not yet imported
        from .cli import load_classifier

        return load_classifier
    raise AttributeError(f"module 'mmsa' has no attribute {name!r}")
