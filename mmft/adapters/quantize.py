"""A 4-bit frozen base (QLoRA, QDoRA): swap a model's ``nn.Linear`` layers for bitsandbytes ``Linear4bit`` ones.

bitsandbytes is the format transformers' ``BitsAndBytesConfig`` loads and PEFT adapts, so an mmft 4-bit base takes
PEFT's QLoRA / QDoRA adapter folders as they are; its 4-bit layers also run on CPU. It is imported only here, when a
model is quantized.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mmft.errors import InputError

from .config import AdapterConfigError

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class QuantizationConfig:
    """How the frozen base is quantized, named after transformers' ``BitsAndBytesConfig`` fields.

    Args:
        bits: 4 (``load_in_4bit``); the only width mmft adapts.
        quant_type: ``nf4`` (QLoRA's NormalFloat4) or ``fp4`` (``bnb_4bit_quant_type``).
        double_quant: quantize the per-block scales too, about 0.4 bit per weight less (``bnb_4bit_use_double_quant``).
        compute_dtype: dtype ``Linear4bit`` runs its matmul in (``bnb_4bit_compute_dtype``).
        blocksize: weights per quantization block (bitsandbytes' default 64).
        skip_modules: linear layers left unquantized besides the output head, by name or name suffix
            (``llm_int8_skip_modules``).
    """

    bits: int = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    blocksize: int = 64
    skip_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.bits != 4:
            raise AdapterConfigError(f"QuantizationConfig.bits={self.bits}: only 4-bit bases are supported")
        if self.quant_type not in ("nf4", "fp4"):
            raise AdapterConfigError(f"QuantizationConfig.quant_type={self.quant_type!r}: choose nf4 or fp4")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise AdapterConfigError(
                f"QuantizationConfig.compute_dtype={self.compute_dtype!r}: choose one of {', '.join(COMPUTE_DTYPES)}"
            )
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise AdapterConfigError(f"QuantizationConfig.blocksize={self.blocksize}: a power of two from 32 to 4096")


def quantization_device(module: nn.Module) -> torch.device:
    """Where quantizing is fast: this process's GPU when there is one (``LOCAL_RANK``), else the weights' device."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return next(module.parameters()).device


class QuantizationError(InputError, ValueError):
    """bitsandbytes quantized a layer wrongly on this machine (its weights are not within the 4-bit format's error
    bound); the message names the layer and what to do."""


# slack over the format's own bound, for float rounding
BOUND_SLACK = 1.01


def quantization_bound(code: torch.Tensor) -> float:
    """The largest error of a correct 4-bit quantization, as a fraction of its block's scale: half the widest gap
    between neighbouring values of the format's code (NF4 about 0.152, FP4 about 0.167)."""
    values = code.float().sort().values
    return float((values[1:] - values[:-1]).max()) / 2


def check_quantized(name: str, original: torch.Tensor, quantized: torch.Tensor, config: QuantizationConfig) -> None:
    """Dequantize the 4-bit ``quantized`` weight and compare it block by block with ``original``: a weight further
    from its value than the format allows is a :class:`QuantizationError` naming the layer, never a silently wrong
    base (bitsandbytes' CPU kernels have been seen to do this for some shapes). A weight is coded against its
    block's absmax ``m`` and restored with the stored scale ``s`` (``m`` itself, or ``m`` stored in 8 bits under
    double quantization), so a block's bound is ``half_gap * m + |m - s|``."""
    from .base_weight import _block_scales, dense_weight

    restored = dense_weight(quantized, torch.float32).flatten()
    weights = original.detach().float().flatten().to(restored.device)
    pad = (-weights.numel()) % config.blocksize
    error = torch.nn.functional.pad((restored - weights).abs(), (0, pad)).view(-1, config.blocksize).amax(1)
    absmax = torch.nn.functional.pad(weights.abs(), (0, pad)).view(-1, config.blocksize).amax(1)
    scale = _block_scales(quantized.quant_state).to(restored.device).flatten()
    half_gap = quantization_bound(quantized.quant_state.code)
    bound = (half_gap * absmax + (absmax - scale).abs()) * BOUND_SLACK + 1e-7
    if bool((error <= bound).all()):
        return
    worst = int((error / bound).argmax())
    import bitsandbytes

    short = original.shape[1] < config.blocksize
    hint = (f" (its rows, {original.shape[1]} weights, are shorter than a {config.blocksize}-weight block, which "
            "bitsandbytes' CPU kernels get wrong on some CPUs)") if short else ""
    raise QuantizationError(
        f"4-bit quantization of {name} is wrong on this machine: in block {worst} a weight is off by "
        f"{float(error[worst] / absmax[worst]):.3f} of the block's absmax, the {config.quant_type} format allows "
        f"{float(bound[worst] / absmax[worst]):.3f}{hint} (bitsandbytes {bitsandbytes.__version__}, quantized on "
        f"{restored.device.type}). Quantize on a GPU, or leave the layer unquantized: "
        f"quantization.skip_modules: [{name.rsplit('.', 1)[-1]}]"
    )


def quantize_linear(layer: nn.Linear, config: QuantizationConfig, device: torch.device | None = None,
                    name: str = "layer") -> nn.Module:
    """A bitsandbytes ``Linear4bit`` holding ``layer``'s weight quantized (on ``device``, then moved back to the
    weight's device) and its bias as it was; checked against the weight (:func:`check_quantized`)."""
    import bitsandbytes as bnb

    weight = layer.weight.detach()
    quantized = bnb.nn.Linear4bit(
        layer.in_features, layer.out_features, bias=layer.bias is not None,
        compute_dtype=COMPUTE_DTYPES[config.compute_dtype], compress_statistics=config.double_quant,
        quant_type=config.quant_type, device="meta",
    )
    # bitsandbytes repacks a weight in place at its first CPU inference on AVX512-BF16 machines, changing the
    # numbers slightly and the layout mmft reads: one layout everywhere keeps train, eval and resume consistent
    quantized.support_avx512bf16_for_cpu = False
    param = bnb.nn.Params4bit(weight.to(device or weight.device), requires_grad=False, blocksize=config.blocksize,
                              compress_statistics=config.double_quant, quant_type=config.quant_type, module=quantized)
    packed = param.to(device or weight.device)
    check_quantized(name, weight, packed, config)  # where it was quantized: fast on a GPU
    quantized.weight = packed.to(weight.device)
    if layer.bias is not None:
        quantized.bias = nn.Parameter(layer.bias.detach(), requires_grad=False)
    return quantized


def quantize_linear_layers(module: nn.Module, config: QuantizationConfig, skip: Iterable[str] = (),
                           device: torch.device | None = None) -> list[str]:
    """Replace every ``nn.Linear`` inside ``module`` (in place) by its 4-bit ``Linear4bit``, except those whose
    name is or ends with ``"." +`` a name in ``skip`` or ``config.skip_modules``. Returns the names replaced.
    ``device``: where to quantize (default: where each weight is)."""
    skip = (*skip, *(config.skip_modules or ()))
    names = [
        name for name, child in module.named_modules()
        if type(child) is nn.Linear and not any(name == s or name.endswith("." + s) for s in skip)
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, quantize_linear(getattr(parent, child), config, device, name))
    return names
