"""Configs and checkpoints written for ``LlavaModule`` keep working for one more release.

LLaVA-1.5 is now one family of :class:`~mmft.models.vlm.VisionLanguageModule`: a Hugging Face Llava checkpoint is
``HFVisionLanguage`` (``chat_template: vicuna_v1``, ``image_processor: {do_pad: true}``), a tiny one is
``VisionLanguageFromConfig`` with ``family: llava``, and the timm layout is :class:`~mmft.models.timm_llava.TimmLlava`.
The classes here take the old arguments, build exactly those (the same network, weights and batches), and warn once.
A checkpoint written by ``LlavaModule`` loads into them unchanged: its stored config names them.

Deprecated: they leave mmft in the next release. Old setting -> new setting:

- ``mmft.models.LlavaModule`` -> ``mmft.models.VisionLanguageModule``;
- ``template: vicuna_v1`` -> the backbone's ``chat_template: vicuna_v1`` (the ``llava`` family's default);
  ``template: chat_template`` -> the checkpoint's own template (leave ``chat_template`` unset);
- ``pad_images_to_square`` -> ``image_processor: {do_pad: ...}`` (``TimmLlava``: ``pad_images_to_square``);
- ``video_frames`` -> nothing: the collate counts a video's decoded frames itself;
- ``HFLlava(path, dtype)`` -> ``HFVisionLanguage(path, dtype, chat_template: vicuna_v1,
  image_processor: {do_pad: true})``;
- ``LlavaFromConfig(tokenizer, vision_config, text_config, ...)`` -> ``VisionLanguageFromConfig(family: llava,
  ...)`` with the processor's ``patch_size`` and the image processor's sizes (see ``configs/tiny/llava.yaml``).
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import Metric

from mmft.adapters import AdapterConfig, QuantizationConfig

from .base import default_optimizer
from .optim import ParamGroup, SchedulerCallable
from .timm_llava import TimmLlava
from .vlm import VisionLanguageModule
from .vlm_backbones import BackboneConfigError, HFVisionLanguage, VisionLanguageBackbone, VisionLanguageFromConfig

VICUNA_V1 = "vicuna_v1"


class HFLlava(HFVisionLanguage):
    """Deprecated: ``HFVisionLanguage`` with ``chat_template: vicuna_v1`` and ``image_processor: {do_pad: true}``
    (what :class:`LlavaModule` sets from its ``template`` and ``pad_images_to_square``)."""

    def __init__(self, path: str | None = None, dtype: str | None = None,
                 quantization: QuantizationConfig | None = None) -> None:
        super().__init__(path=path, dtype=dtype, quantization=quantization, chat_template=VICUNA_V1,
                         image_processor={"do_pad": True})


class LlavaFromConfig(VisionLanguageFromConfig):
    """Deprecated: ``VisionLanguageFromConfig(family: llava)`` with the processor sized from ``vision_config``
    (a CLIP-style tower: ``image_size`` / ``patch_size`` pixels, one CLS token)."""

    def __init__(
        self,
        tokenizer: str,
        vision_config: dict[str, Any],
        text_config: dict[str, Any],
        projector_hidden_act: str = "gelu",
        vision_feature_layer: int = -2,
        vision_feature_select_strategy: str = "default",
        seed: int = 0,
        quantization: QuantizationConfig | None = None,
    ) -> None:
        from transformers import AutoConfig

        vision = AutoConfig.for_model(**{"model_type": "clip_vision_model", **vision_config})
        grid = vision.image_size // vision.patch_size
        super().__init__(
            family="llava",
            tokenizer=tokenizer,
            vision_config=vision_config,
            text_config=text_config,
            config={"projector_hidden_act": projector_hidden_act, "vision_feature_layer": vision_feature_layer,
                    "vision_feature_select_strategy": vision_feature_select_strategy,
                    "image_seq_length": grid * grid + (vision_feature_select_strategy == "full")},
            image_processor={"size": {"shortest_edge": vision.image_size}, "do_pad": True,
                             "crop_size": {"height": vision.image_size, "width": vision.image_size}},
            processor={"patch_size": vision.patch_size, "num_additional_image_tokens": 1,
                       "vision_feature_select_strategy": vision_feature_select_strategy},
            seed=seed,
            quantization=quantization,
        )


def _with_old_settings(backbone: VisionLanguageBackbone, template: str, pad_images_to_square: bool
                       ) -> VisionLanguageBackbone:
    """``backbone`` given the old module's template and padding settings."""
    if template not in (VICUNA_V1, "chat_template"):
        raise BackboneConfigError(f"model.init_args.template={template!r}: choose vicuna_v1 or chat_template")
    if isinstance(backbone, TimmLlava):
        backbone.chat_template = VICUNA_V1 if template == VICUNA_V1 else None
        backbone.pad_images_to_square = pad_images_to_square
    elif isinstance(backbone, HFVisionLanguage):
        backbone.chat_template = VICUNA_V1 if template == VICUNA_V1 else None
        backbone.image_processor["do_pad"] = pad_images_to_square
    elif isinstance(backbone, VisionLanguageFromConfig):
        if template != VICUNA_V1:
            raise BackboneConfigError(f"model.init_args.template={template!r}: a tiny Llava has no chat template of "
                                      "its own; use vicuna_v1")
        backbone.image_processor["do_pad"] = pad_images_to_square
    return backbone


class LlavaModule(VisionLanguageModule):
    """Deprecated: :class:`~mmft.models.vlm.VisionLanguageModule` under its old name and arguments (see the module
    docstring for the new settings). ``video_frames`` is accepted and unused: the collate counts decoded frames."""

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        adapter: AdapterConfig | None,
        template: Literal["vicuna_v1", "chat_template"] = VICUNA_V1,
        max_length: int = 2048,
        instructions: dict[str, str] | None = None,
        pad_images_to_square: bool = True,
        video_frames: int = 8,
        gradient_checkpointing: bool = False,
        max_new_tokens: int = 16,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerCallable | None = None,
        param_groups: list[ParamGroup] | None = None,
        metrics: dict[str, Metric] | None = None,
        allow_base_mismatch: bool = False,
    ) -> None:
        rank_zero_warn("mmft.models.LlavaModule is deprecated and leaves mmft in the next release: use "
                       "mmft.models.VisionLanguageModule (configs/tiny/llava.yaml shows the settings)",
                       category=FutureWarning)
        super().__init__(_with_old_settings(backbone, template, pad_images_to_square), adapter, max_length,
                         instructions, gradient_checkpointing=gradient_checkpointing, max_new_tokens=max_new_tokens,
                         optimizer=optimizer, scheduler=scheduler, param_groups=param_groups, metrics=metrics,
                         allow_base_mismatch=allow_base_mismatch)
