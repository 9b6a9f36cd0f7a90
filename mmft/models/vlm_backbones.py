"""Where an image-text-to-text network comes from: any family ``AutoModelForImageTextToText`` knows.

- :class:`HFVisionLanguage`: a local checkpoint folder (model, processor, chat template), loaded offline with
  ``AutoModelForImageTextToText`` and ``AutoProcessor``; remote code is never run.
- :class:`VisionLanguageFromConfig`: a family's config class with YAML sizes and random weights from a seed, and
  its processor built from parts (a tokenizer folder plus the family's special tokens, the family's image / video
  processor with tiny sizes, the family's chat template, see :mod:`mmft.models.vlm_families`).

LLaVA's own layout (a timm tower + projector + causal LM) is :class:`~mmft.models.timm_llava.TimmLlava`.
"""

from __future__ import annotations

import difflib
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmft.adapters import QuantizationConfig, quantize_linear_layers
from mmft.adapters.quantize import quantization_device
from mmft.errors import InputError

from .prefix_collate import takes_suffix
from .vlm_families import FAMILIES, family_classes, family_template, get_family, template_text
from .vlm_parts import find_parts

BACKBONE_KEY = "model.init_args.backbone.init_args"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneConfigError(InputError, ValueError):
    """A backbone setting is missing or points nowhere; the message names the config key."""


@dataclass
class BuiltVisionLanguage:
    """What a backbone hands :class:`~mmft.models.vlm.VisionLanguageModule`."""

    model: nn.Module
    processor: Any
    video_as_images: bool
    name_or_path: str | None = None


class VisionLanguageBackbone(ABC):
    """Where the network and its processor come from."""

    @abstractmethod
    def build(self) -> BuiltVisionLanguage: ...


def local_folder(path: str | None, key: str, what: str) -> Path:
    """``path`` as an existing folder; unset or missing is an error naming ``key`` (no model hub is contacted)."""
    if path is None:
        raise BackboneConfigError(f"{key} is not set: set it to {what}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise BackboneConfigError(f"{key}={path!r}: no such folder; set it to {what} (no model hub is contacted)")
    return folder


def dtype_named(name: str | None, key: str) -> torch.dtype | None:
    """The torch dtype called ``name`` (float32, bfloat16, float16); None keeps the checkpoint's."""
    if name is None:
        return None
    if name not in DTYPES:
        raise BackboneConfigError(f"{key}={name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def find_language_model(model: nn.Module) -> nn.Module:
    """The module called ``language_model`` inside a vision-language network (every family names it so)."""
    return next(m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == "language_model")


def quantize_language_model(model: nn.Module, quantization: QuantizationConfig | None) -> None:
    """QLoRA's base: every linear layer of the language model in 4 bits (quantized on the GPU when there is one);
    the vision tower, the projector and the output head stay as they are."""
    if quantization is not None:
        language_model = find_language_model(model)
        quantize_linear_layers(language_model, quantization, skip=["lm_head"],
                               device=quantization_device(language_model))


def _transformers_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def _load_model(folder: Any, dtype: Any, attn_implementation: str | None = None) -> nn.Module:
    """``AutoModelForImageTextToText`` on ``folder``, offline; a model type it does not know is a named error."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise BackboneConfigError(
            f"{folder}: model_type {config.model_type!r} is not an image-text-to-text model of this transformers "
            f"(AutoModelForImageTextToText takes {len(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)} types, e.g. "
            "qwen3_vl, internvl, gemma3, llava)"
        )
    return AutoModelForImageTextToText.from_pretrained(
        folder, config=config, dtype=dtype, local_files_only=True, trust_remote_code=False,
        attn_implementation=attn_implementation,
    )


def _chat_template(processor: Any, model_type: str, template: str | None, folder: Any) -> None:
    """Give ``processor`` the chat template to train with: ``template`` if given, else the checkpoint's own, else
    the family's (for checkpoints that ship none); none at all is a named error. ``template`` is a Jinja text or a
    name of :data:`~mmft.models.vlm_families.NAMED_TEMPLATES` (``vicuna_v1``)."""
    template = template_text(template) if template is not None else None
    if template is None and not getattr(processor, "chat_template", None) and model_type in FAMILIES:
        template = family_template(FAMILIES[model_type])
    if template is not None:
        processor.chat_template = template
    if not getattr(processor, "chat_template", None):
        raise BackboneConfigError(
            f"{folder}: the processor has no chat template (chat_template.jinja) and mmft knows none for "
            f"{model_type!r}: set {BACKBONE_KEY}.chat_template to the template the model was trained with"
        )


def _media_processor(auto_class: str, folder: Any, settings: dict[str, Any], key: str) -> Any:
    """The checkpoint's image or video processor with ``settings`` in place of its saved values.

    transformers drops a setting its processor does not know without a word, so an unknown name is refused here.
    """
    processor = _transformers_class(auto_class).from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    known = set(typing.get_type_hints(processor.valid_kwargs))
    unknown = sorted(set(settings) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=3)
        raise BackboneConfigError(
            f"{key}.{unknown[0]}: {type(processor).__name__} has no such setting"
            + (f"; did you mean {', '.join(close)}?" if close else f"; it takes {', '.join(sorted(known))}")
        )
    return _transformers_class(auto_class).from_pretrained(
        folder, local_files_only=True, trust_remote_code=False, **settings
    )


def _unzero_projector(model: nn.Module, std: float) -> None:
    """Draw the projector's zero-initialised matrices (Gemma 3's ``mm_input_projection_weight``) from N(0, std), as
    a trained checkpoint's are non-zero: a zero projector passes no gradient to the vision tower."""
    for name in find_parts(model).projectors:
        for param in model.get_submodule(name).parameters():
            if param.dim() == 2 and not param.any():
                nn.init.normal_(param, std=std)


class HFVisionLanguage(VisionLanguageBackbone):
    """A local transformers image-text-to-text checkpoint (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct`` downloaded
    beforehand): ``AutoModelForImageTextToText`` and ``AutoProcessor`` with its chat template, offline.

    Args:
        path: the checkpoint folder.
        dtype: load the frozen weights in this dtype (``bfloat16``; adapters train in fp32 under ``bf16-mixed``).
        quantization: a 4-bit language model (QLoRA / QDoRA), quantized from the loaded weights.
        image_processor: settings of the checkpoint's image processor to replace, as a recipe sets its resolution
            (Qwen2.5-VL's ``min_pixels`` / ``max_pixels``); names the processor does not take are refused.
        video_processor: the same for its video processor (Qwen2.5-VL's per-frame ``min_pixels`` / ``max_pixels``).
        chat_template: a Jinja chat template to train with, for a checkpoint that ships none (or to replace its own),
            or ``vicuna_v1``: LLaVA-1.5's training format (a Llava checkpoint's own template is another one).
        attn_implementation: transformers' attention implementation (``flash_attention_2`` on a GPU with
            flash-attn installed: packed rows then run its variable-length kernel); default SDPA, per example on
            packed rows (:mod:`mmft.models.varlen_attention`).

    A video goes in as the processor's video input when it has a video processor, else as its frames, each an
    image (Gemma 3, Mistral 3).
    """

    def __init__(
        self,
        path: str | None = None,
        dtype: str | None = None,
        quantization: QuantizationConfig | None = None,
        image_processor: dict[str, Any] | None = None,
        video_processor: dict[str, Any] | None = None,
        chat_template: str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        self.path = path
        self.attn_implementation = attn_implementation
        self.chat_template = chat_template
        self.dtype = dtype
        self.quantization = quantization
        self.image_processor = dict(image_processor or {})
        self.video_processor = dict(video_processor or {})

    def build(self) -> BuiltVisionLanguage:
        from transformers import AutoProcessor

        folder = local_folder(self.path, f"{BACKBONE_KEY}.path", "a local image-text-to-text checkpoint folder")
        model = _load_model(folder, dtype_named(self.dtype, f"{BACKBONE_KEY}.dtype"), self.attn_implementation)
        parts = {
            name: _media_processor(auto_class, folder, settings, f"{BACKBONE_KEY}.{name}")
            for name, auto_class, settings in (
                ("image_processor", "AutoImageProcessor", self.image_processor),
                ("video_processor", "AutoVideoProcessor", self.video_processor),
            )
            if settings
        }
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False, **parts)
        model_type = model.config.model_type
        if getattr(processor, "image_processor", None) is None:
            raise BackboneConfigError(
                f"{folder}: AutoProcessor loads no image processor here ({type(processor).__name__}): the folder needs "
                "the processor's files (preprocessor_config.json)"
            )
        if not takes_suffix(processor):  # a prefix-LM (PaliGemma) writes its format without a template
            _chat_template(processor, model_type, self.chat_template, folder)
        known = FAMILIES.get(model_type)
        video_as_images = known.video_as_images if known else getattr(processor, "video_processor", None) is None
        quantize_language_model(model, self.quantization)
        return BuiltVisionLanguage(model, processor, video_as_images, str(self.path))


class VisionLanguageFromConfig(VisionLanguageBackbone):
    """A family's model with random weights drawn from ``seed``, sized by YAML, and its processor built from parts.

    Args:
        family: one of :data:`mmft.models.vlm_families.FAMILIES` (``qwen2_5_vl``, ``llava_onevision``, ...).
        tokenizer: a tokenizer folder; the family's special tokens are added and the vocabulary sized to fit.
        vision_config: fields of the family's vision config.
        text_config: fields of the family's text config.
        config: other fields of the family's config (``image_grid_pinpoints``, ``scale_factor``, ...).
        image_processor: arguments of the family's image processor (tiny sizes).
        video_processor: arguments of the family's video processor.
        processor: other arguments of the family's processor (``image_seq_len``, ``num_image_tokens``, ...).
        seed: the seed of the random weights.
        quantization: a 4-bit language model (QLoRA / QDoRA).
    """

    def __init__(
        self,
        family: str,
        tokenizer: str,
        vision_config: dict[str, Any],
        text_config: dict[str, Any],
        config: dict[str, Any] | None = None,
        image_processor: dict[str, Any] | None = None,
        video_processor: dict[str, Any] | None = None,
        processor: dict[str, Any] | None = None,
        seed: int = 0,
        quantization: QuantizationConfig | None = None,
    ) -> None:
        self.family = family
        self.tokenizer = tokenizer
        self.vision_config = dict(vision_config)
        self.text_config = dict(text_config)
        self.config = dict(config or {})
        self.image_processor = dict(image_processor or {})
        self.video_processor = dict(video_processor or {})
        self.processor = dict(processor or {})
        self.seed = seed
        self.quantization = quantization

    def build(self) -> BuiltVisionLanguage:
        from transformers import AutoTokenizer

        family = get_family(self.family, f"{BACKBONE_KEY}.family")
        classes = family_classes(self.family)
        folder = local_folder(self.tokenizer, f"{BACKBONE_KEY}.tokenizer", "a tokenizer folder")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                  extra_special_tokens=dict(family.named_tokens))
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.special_tokens)},
                                     replace_extra_special_tokens=False)
        parts = {"image_processor": classes.image_processor(**self.image_processor)}
        if classes.video_processor is not None:
            parts["video_processor"] = classes.video_processor(**self.video_processor)
        # before the config: a processor may add tokens to the vocabulary (PaliGemma's location and segment tokens)
        processor = classes.processor(tokenizer=tokenizer, chat_template=family_template(family), **parts,
                                      **self.processor)
        end_of_turn = tokenizer.convert_tokens_to_ids(family.end_of_turn)
        text = {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": end_of_turn,
            **self.text_config,
        }
        token_ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in family.token_ids.items()}
        config = classes.config(vision_config=self.vision_config, text_config=text, **token_ids,
                                **{**family.config_defaults, **self.config})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = classes.model(config)
            _unzero_projector(model, getattr(config, "initializer_range", 0.02))
        model.generation_config.eos_token_id = end_of_turn
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        quantize_language_model(model, self.quantization)
        return BuiltVisionLanguage(model, processor, family.video_as_images, None)
