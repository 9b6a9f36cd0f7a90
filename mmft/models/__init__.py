"""mmft.models: one LightningModule per model family, on a shared adapter-aware base."""

from .base import AdapterModule, CheckpointMismatchError
from .llava import HFLlava, LlavaBackbone, LlavaFromConfig, LlavaModule, TimmLlava, VisionLanguageModel
from .llava_collate import LlavaCollate
from .optim import ParamGroup, WarmupCosine

__all__ = [
    "AdapterModule",
    "CheckpointMismatchError",
    "HFLlava",
    "LlavaBackbone",
    "LlavaCollate",
    "LlavaFromConfig",
    "LlavaModule",
    "ParamGroup",
    "TimmLlava",
    "VisionLanguageModel",
    "WarmupCosine",
]
