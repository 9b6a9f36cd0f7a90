"""mmft.models: one LightningModule per model family, on a shared adapter-aware base."""

from .base import AdapterModule, CheckpointMismatchError
from .chat_collate import ChatCollate
from .llava_shim import HFLlava, LlavaFromConfig, LlavaModule
from .optim import ParamGroup, WarmupCosine, WarmupLinear
from .prefix_collate import PrefixCollate
from .timm_llava import TimmLlava, VisionLanguageModel
from .visual_features import FeatureStore, VisualConfig, VisualEncoder
from .vlbart import VisualEmbedding, VLBart, VLBartModule
from .vlbart_collate import VLBartCollate
from .vlm import VisionLanguageModule
from .vlm_backbones import HFVisionLanguage, VisionLanguageBackbone, VisionLanguageFromConfig

__all__ = [
    "AdapterModule",
    "ChatCollate",
    "CheckpointMismatchError",
    "FeatureStore",
    "HFLlava",
    "HFVisionLanguage",
    "LlavaFromConfig",
    "LlavaModule",
    "ParamGroup",
    "PrefixCollate",
    "TimmLlava",
    "VLBart",
    "VLBartCollate",
    "VLBartModule",
    "VisionLanguageBackbone",
    "VisionLanguageFromConfig",
    "VisionLanguageModel",
    "VisionLanguageModule",
    "VisualConfig",
    "VisualEmbedding",
    "VisualEncoder",
    "WarmupCosine",
    "WarmupLinear",
]
