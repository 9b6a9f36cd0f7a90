"""mmft.models: one LightningModule per model family, on a shared adapter-aware base."""

from .base import AdapterModule, CheckpointMismatchError
from .llava import LlavaModule
from .llava_backbones import HFLlava, LlavaBackbone, LlavaFromConfig, TimmLlava, VisionLanguageModel
from .llava_collate import LlavaCollate
from .optim import ParamGroup, WarmupCosine, WarmupLinear
from .visual_features import FeatureStore, VisualConfig, VisualEncoder
from .vlbart import VisualEmbedding, VLBart, VLBartModule
from .vlbart_collate import VLBartCollate
from .vlm import VisionLanguageModule
from .vlm_backbones import HFVisionLanguage, VisionLanguageBackbone, VisionLanguageFromConfig
from .chat_collate import ChatCollate
from .prefix_collate import PrefixCollate

__all__ = [
    "AdapterModule",
    "ChatCollate",
    "HFVisionLanguage",
    "FeatureStore",
    "CheckpointMismatchError",
    "HFLlava",
    "LlavaBackbone",
    "LlavaCollate",
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
