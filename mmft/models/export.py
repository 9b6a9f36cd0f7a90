"""Merged exports: a fine-tuned model with its adapters folded into its weights, in a folder other tools load.

- LLaVA (a transformers ``LlavaForConditionalGeneration`` base): the transformers layout, which
  ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` load offline (and so
  lmms-eval, VLMEvalKit and vLLM): ``config.json``, ``generation_config.json``, ``model.safetensors`` in the base's
  dtype, the tokenizer, and a ``LlavaProcessor`` that prepares inputs as mmft does (images padded to square with
  LLaVA's colour, ``<image>`` expanded to the model's visual tokens, the training template as chat template).
- Image-text-to-text families (``VisionLanguageModule``: Qwen2-VL / Qwen2.5-VL, LLaVA-OneVision, LLaVA-NeXT(-Video),
  SmolVLM, Idefics3): the model in the transformers layout (base dtype, generation stopping at the family's end of
  turn) and its own processor (tokenizer, image / video processor, chat template), which
  ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` load offline.
- VL-BART (not a transformers class): ``bart/``, the merged BART in the transformers layout with its tokenizer, and
  ``visual_embedding.safetensors``.

Every folder holds ``mmft_merged.yaml``: composed after the training recipe, ``mmft test`` evaluates the merged model
(no adapters, no checkpoint). The module passed in is left unchanged (a copy of its network is merged), and the
folder is written under a temporary name beside the target, then renamed into place.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mmft.adapters import has_adapters, merge_adapters
from mmft.adapters.merge import dequantize_4bit_layers

from .base import AdapterModule
from .llava import LlavaModule
from .llava_backbones import DTYPES
from .templates import VICUNA_V1_CHAT_TEMPLATE
from .vlbart import VLBartModule
from .vlm import VisionLanguageModule

MERGED_CONFIG = "mmft_merged.yaml"
VISUAL_EMBEDDING_FILE = "visual_embedding.safetensors"


class ExportError(ValueError):
    """The module cannot be exported as a merged model; the message says why and what to do instead."""


def export_merged(module: AdapterModule, folder: str | Path) -> Path:
    """Write ``module``'s network with its adapters merged to ``folder`` (see the module docstring); returns it.

    Load the trained weights into ``module`` first: mmft checkpoints hold the trainable parameters only, so
    ``module.on_load_checkpoint(ckpt)`` (the checks of ``--ckpt_path``) then
    ``module.load_state_dict(ckpt["state_dict"], strict=False)``.
    """
    if module.adapter_config is None:
        raise ExportError("the module has no adapters (adapter: null): it is merged already")
    if isinstance(module, LlavaModule):
        return _write_folder(Path(folder), lambda tmp, final: _write_llava(module, tmp, final))
    if isinstance(module, VisionLanguageModule):
        return _write_folder(Path(folder), lambda tmp, final: _write_vision_language(module, tmp, final))
    if isinstance(module, VLBartModule):
        return _write_folder(Path(folder), lambda tmp, final: _write_vlbart(module, tmp, final))
    raise ExportError(
        f"merged export knows LlavaModule, VisionLanguageModule and VLBartModule, not {type(module).__name__}"
    )


def base_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the frozen weights (adapters and fully trained modules are kept in fp32 over any base)."""
    frozen = [p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    return frozen[0] if frozen else torch.float32


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapter merged (plain ``nn.Linear`` layers again, the 4-bit layers of a QLoRA
    base dequantized, with or without an adapter), cast to the base dtype."""
    dtype = base_dtype(model)
    merged = copy.deepcopy(model)
    if has_adapters(merged):  # method full has nothing to merge
        merge_adapters(merged)
    dequantize_4bit_layers(merged)
    return merged.to(dtype)


def _write_folder(folder: Path, write: Callable[[Path, Path], None]) -> Path:
    """Write through ``.<name>.tmp-<pid>`` beside ``folder``, then swap it in (an existing folder is replaced)."""
    folder = folder.expanduser().resolve()
    temporary = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir(parents=True)
        write(temporary, folder)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(temporary, folder)
            shutil.rmtree(old)
        else:
            os.replace(temporary, folder)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def _write_merged_config(folder: Path, init_args: dict[str, Any]) -> None:
    text = (
        "# Compose after the recipe the model was trained with, then evaluate without a checkpoint:\n"
        f"#   mmft test --config <recipe>.yaml --config {MERGED_CONFIG}\n"
        + yaml.safe_dump({"model": {"init_args": {**init_args, "adapter": None}}}, sort_keys=False)
    )
    (folder / MERGED_CONFIG).write_text(text, encoding="utf-8")


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


# ---------------------------------------------------------------------------------------------------------- LLaVA


def _write_llava(module: LlavaModule, folder: Path, final: Path) -> None:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    if not isinstance(module.model, LlavaForConditionalGeneration):
        raise ExportError(
            f"{type(module.model).__name__} (a timm tower + causal LM, TimmLlava) is not a transformers class: "
            "export its PEFT adapter instead (mmft.adapters.save_adapters)"
        )
    merged = merged_copy(module.model)
    collate = module.collate
    merged.generation_config.pad_token_id = collate.pad_token_id
    merged.generation_config.eos_token_id = module.tokenizer.eos_token_id
    merged.save_pretrained(folder)

    tokenizer = copy.deepcopy(module.tokenizer)
    if collate.template == "vicuna_v1":
        _add_bos(tokenizer)  # mmft starts vicuna_v1 prompts with <s>, as LLaVA's tokenizer_image_token
        tokenizer.chat_template = VICUNA_V1_CHAT_TEMPLATE
    config = merged.config
    grid = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    default = config.vision_feature_select_strategy == "default"
    processor = LlavaProcessor(
        image_processor=_llava_image_processor(collate.image_transform.processor, collate.pad_images_to_square),
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=tokenizer.chat_template,
        # the processor counts grid + extra tokens, less the CLS under "default": make it count mmft's
        num_additional_image_tokens=collate.num_image_tokens - grid + int(default),
    )
    processor.save_pretrained(folder)
    backbone = {"class_path": "mmft.models.HFLlava", "init_args": {"path": str(final), "dtype": _dtype_name(merged.dtype)}}
    _write_merged_config(folder, {"backbone": backbone})


def _llava_image_processor(processor: Any, pad_to_square: bool) -> Any:
    """A ``LlavaImageProcessor`` with ``processor``'s resizing and normalisation that pads to square first when mmft
    does (with ``int(255 * mean)``, LLaVA-1.5's ``expand2square`` colour): the same pixels as mmft's collate."""
    from transformers import LlavaImageProcessor

    keys = ("size", "crop_size", "resample", "do_resize", "do_center_crop", "do_rescale", "rescale_factor",
            "do_normalize", "image_mean", "image_std", "do_convert_rgb")
    settings = {key: getattr(processor, key) for key in keys if getattr(processor, key, None) is not None}
    return LlavaImageProcessor(**settings, do_pad=pad_to_square)


def _add_bos(tokenizer: Any) -> None:
    """Make ``tokenizer(text)`` start with the BOS token when it does not already (a tokenizers post-processor)."""
    from tokenizers import processors

    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if bos is None or tokenizer("a")["input_ids"][:1] == [bos_id]:
        return
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )


# ------------------------------------------------------------------------------------- image-text-to-text families


def _write_vision_language(module: VisionLanguageModule, folder: Path, final: Path) -> None:
    merged = merged_copy(module.model)
    merged.generation_config.pad_token_id = module.collate.pad_token_id
    merged.generation_config.eos_token_id = module.end_of_turn_id  # stop where mmft's generation stops
    merged.save_pretrained(folder)
    module.processor.save_pretrained(folder)
    backbone = {"class_path": "mmft.models.HFVisionLanguage",
                "init_args": {"path": str(final), "dtype": _dtype_name(merged.dtype)}}
    _write_merged_config(folder, {"backbone": backbone})


# --------------------------------------------------------------------------------------------------------- VL-BART


def _write_vlbart(module: VLBartModule, folder: Path, final: Path) -> None:
    from safetensors.torch import save_file

    merged = merged_copy(module.model)
    merged.bart.save_pretrained(folder / "bart")
    module.tokenizer.save_pretrained(folder / "bart")
    state = {name: tensor.contiguous() for name, tensor in merged.visual_embedding.state_dict().items()}
    save_file(state, folder / VISUAL_EMBEDDING_FILE, metadata={"format": "pt"})
    _write_merged_config(
        folder,
        {
            "bart": str(final / "bart"),
            "tokenizer": str(final / "bart"),
            "visual_embedding": str(final / VISUAL_EMBEDDING_FILE),
        },
    )
