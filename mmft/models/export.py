"""Merged exports: a fine-tuned model with its adapters folded into its weights, in a folder other tools load.

- Image-text-to-text families (``VisionLanguageModule``: LLaVA-1.5, Qwen-VL, InternVL, Gemma 3, ...): the model in
  the transformers layout (``config.json``, ``generation_config.json`` stopping at the family's end of turn,
  ``model.safetensors`` in the base's dtype) and its processor as mmft trained with it (tokenizer, image / video
  processor, chat template; for LLaVA-1.5 images padded to square and the vicuna_v1 template), which
  ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` load offline (and so
  lmms-eval, VLMEvalKit and vLLM). The timm layout (``TimmLlava``) is no transformers class: it exports its PEFT
  adapter instead.
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

from .base import AdapterModule, ExportError
from .vlm_backbones import DTYPES

__all__ = ["MERGED_CONFIG", "ExportError", "base_dtype", "dtype_name", "export_merged", "merged_copy",
           "write_merged_config"]

MERGED_CONFIG = "mmft_merged.yaml"


def export_merged(module: AdapterModule, folder: str | Path) -> Path:
    """Write ``module``'s network with its adapters merged to ``folder`` (see the module docstring); returns it.

    Load the trained weights into ``module`` first: mmft checkpoints hold the trainable parameters only, so
    ``module.on_load_checkpoint(ckpt)`` (the checks of ``--ckpt_path``) then
    ``module.load_state_dict(ckpt["state_dict"], strict=False)``.
    """
    if module.adapter_config is None:
        raise ExportError("the module has no adapters (adapter: null): it is merged already")
    return _write_folder(Path(folder), module.write_merged)


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


def write_merged_config(folder: Path, init_args: dict[str, Any]) -> None:
    """``mmft_merged.yaml``: the overlay that, after the training recipe, evaluates the merged folder."""
    text = (
        "# Compose after the recipe the model was trained with, then evaluate without a checkpoint:\n"
        f"#   mmft test --config <recipe>.yaml --config {MERGED_CONFIG}\n"
        + yaml.safe_dump({"model": {"init_args": {**init_args, "adapter": None}}}, sort_keys=False)
    )
    (folder / MERGED_CONFIG).write_text(text, encoding="utf-8")


def dtype_name(dtype: torch.dtype) -> str:
    """The config name of ``dtype`` (``bfloat16``), as backbones take it."""
    return next(name for name, value in DTYPES.items() if value == dtype)
