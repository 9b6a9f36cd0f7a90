"""Where an image-text-to-text network comes from: any family ``AutoModelForImageTextToText`` knows.

- :class:`HFVisionLanguage`: a local checkpoint folder (model, processor, chat template), loaded offline with
  ``AutoModelForImageTextToText`` and ``AutoProcessor``; remote code is never run.
- :class:`VisionLanguageFromConfig`: a family's config class with YAML sizes and random weights from a seed, and
  its processor built from parts (a tokenizer folder plus the family's special tokens, the family's image / video
  processor with tiny sizes, the family's chat template, see :mod:`mmft.models.vlm_families`).
"""

from __future__ import annotations

import difflib
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mmft.adapters import QuantizationConfig

from .llava_backbones import BACKBONE_KEY, BackboneConfigError, _dtype, _local_folder, quantize_language_model
from .vlm_families import FAMILIES, Family, family_template, get_family


@dataclass
class BuiltVisionLanguage:
    """What a backbone hands :class:`~mmft.models.vlm.VisionLanguageModule`."""

    model: nn.Module
    processor: Any
    family: Family
    end_of_turn_id: int
    name_or_path: str | None = None


class VisionLanguageBackbone(ABC):
    """Where the network and its processor come from."""

    @abstractmethod
    def build(self) -> BuiltVisionLanguage: ...


def _transformers_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def _family_of(model: nn.Module, folder: str) -> Family:
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise BackboneConfigError(
            f"{folder}: model_type {model_type!r} is not one of the supported families ({', '.join(FAMILIES)})"
        )
    return FAMILIES[model_type]


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
    """

    def __init__(
        self,
        path: str | None = None,
        dtype: str | None = None,
        quantization: QuantizationConfig | None = None,
        image_processor: dict[str, Any] | None = None,
        video_processor: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.dtype = dtype
        self.quantization = quantization
        self.image_processor = dict(image_processor or {})
        self.video_processor = dict(video_processor or {})

    def build(self) -> BuiltVisionLanguage:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = _local_folder(self.path, f"{BACKBONE_KEY}.path", "a local image-text-to-text checkpoint folder")
        model = AutoModelForImageTextToText.from_pretrained(
            folder, dtype=_dtype(self.dtype, f"{BACKBONE_KEY}.dtype"), local_files_only=True, trust_remote_code=False
        )
        parts = {
            name: _media_processor(auto_class, folder, settings, f"{BACKBONE_KEY}.{name}")
            for name, auto_class, settings in (
                ("image_processor", "AutoImageProcessor", self.image_processor),
                ("video_processor", "AutoVideoProcessor", self.video_processor),
            )
            if settings
        }
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False, **parts)
        if not getattr(processor, "chat_template", None):
            raise BackboneConfigError(f"{folder}: the processor has no chat template (chat_template.jinja)")
        family = _family_of(model, str(folder))
        eos = model.generation_config.eos_token_id
        end_of_turn = processor.tokenizer.convert_tokens_to_ids(family.end_of_turn)
        if end_of_turn is None or end_of_turn == processor.tokenizer.unk_token_id:
            end_of_turn = eos[0] if isinstance(eos, list) else eos
        quantize_language_model(model, self.quantization)
        return BuiltVisionLanguage(model, processor, family, int(end_of_turn), str(self.path))


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
        folder = _local_folder(self.tokenizer, f"{BACKBONE_KEY}.tokenizer", "a tokenizer folder")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.special_tokens)},
                                     replace_extra_special_tokens=False)
        end_of_turn = tokenizer.convert_tokens_to_ids(family.end_of_turn)
        text = {
            "model_type": family.text_model_type,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": end_of_turn,
            **self.text_config,
        }
        token_ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in family.token_ids.items()}
        config = _transformers_class(family.config_class)(
            vision_config={"model_type": family.vision_model_type, **self.vision_config},
            text_config=text,
            **token_ids,
            **{**family.config_defaults, **self.config},
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = _transformers_class(family.model_class)(config)
        model.generation_config.eos_token_id = end_of_turn
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        quantize_language_model(model, self.quantization)
        parts = {"image_processor": _transformers_class(family.image_processor_class)(**self.image_processor)}
        if family.video_processor_class is not None:
            parts["video_processor"] = _transformers_class(family.video_processor_class)(**self.video_processor)
        processor = _transformers_class(family.processor_class)(
            tokenizer=tokenizer, chat_template=family_template(family), **parts, **self.processor
        )
        return BuiltVisionLanguage(model, processor, family, end_of_turn, None)
