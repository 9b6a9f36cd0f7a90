"""The frozen base weight ``W`` of an adapted layer, whether a plain tensor or a bitsandbytes 4-bit one (QLoRA).

A 4-bit weight (``bitsandbytes.nn.Params4bit``) is dequantized with bitsandbytes' own functions only where ``W`` is
needed as numbers, and never kept: the DoRA norm reads it in row chunks, matmuls dequantize it for the one GEMM and
again in backward (as bitsandbytes' own ``matmul_4bit`` does). bitsandbytes is never imported here: a 4-bit weight
can only exist once it has been imported by whoever built the layer.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows of W dequantized at once by the chunked readers: 4M elements, 8 MiB in bf16 whatever the layer's size.
CHUNK_ELEMENTS = 1 << 22


def is_4bit(weight: Tensor) -> bool:
    """Whether ``weight`` is a bitsandbytes 4-bit weight (``Params4bit``)."""
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(weight, bnb.nn.Params4bit)


def _quant_state(weight: Tensor):
    state = weight.quant_state
    if state is None:
        raise ValueError("a bitsandbytes Params4bit weight that is not quantized yet: move its layer to a device "
                         "(bitsandbytes quantizes on .to(device)) before adapting it")
    if getattr(state, "packing_format_for_cpu", False):
        raise ValueError("this 4-bit weight was repacked by bitsandbytes for CPU inference (its AVX512-BF16 layout), "
                         "which mmft cannot read: set support_avx512bf16_for_cpu = False on the Linear4bit layer "
                         "before its first forward (mmft.adapters.quantize_linear_layers does)")
    return state


def weight_shape(weight: Tensor) -> tuple[int, int]:
    """``(out, in)`` of ``W``: a 4-bit weight's tensor holds packed bytes, its quant state the real shape."""
    return tuple(_quant_state(weight).shape) if is_4bit(weight) else tuple(weight.shape)


def weight_dtype(weight: Tensor) -> torch.dtype:
    """The dtype ``W`` has as numbers (a 4-bit weight's dequantized dtype)."""
    return _quant_state(weight).dtype if is_4bit(weight) else weight.dtype


def parameter_count(param: Tensor) -> int:
    """Number of weights a parameter stands for (a 4-bit weight packs two per byte)."""
    return math.prod(weight_shape(param)) if is_4bit(param) else param.numel()


def dense_weight(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``W`` in ``dtype``: the tensor itself (cast if needed), or a 4-bit weight's dequantized copy."""
    if is_4bit(weight):
        from bitsandbytes.functional import dequantize_4bit

        dense = dequantize_4bit(weight.data, _quant_state(weight))
        return dense if dense.dtype == dtype else dense.to(dtype)
    return weight if weight.dtype == dtype else weight.to(dtype)


def _block_scales(state) -> Tensor:
    """A 4-bit weight's per-block absmax in fp32 (double quantization stores them quantized in turn)."""
    if not state.nested:
        return state.absmax.float()
    from bitsandbytes.functional import dequantize_blockwise

    return (dequantize_blockwise(state.absmax, state.state2) + state.offset).float()


def row_chunks(weight: Tensor, dtype: torch.dtype) -> Iterator[tuple[int, Tensor]]:
    """``(first row, W[rows] in dtype)`` over ``W``: one chunk for a plain weight, chunks of about
    ``CHUNK_ELEMENTS`` for a 4-bit one, so that no dense copy of the whole layer exists at once."""
    if not is_4bit(weight):
        yield 0, dense_weight(weight, dtype)
        return
    from bitsandbytes.functional import QuantState, dequantize_4bit

    state = _quant_state(weight)
    out_features, in_features = state.shape
    block = state.blocksize
    # a chunk must start on a quantization block: its row count is a multiple of block / gcd(in, block)
    unit = block // math.gcd(in_features, block)
    rows = max(unit, CHUNK_ELEMENTS // in_features // unit * unit)
    scales = _block_scales(state)
    packed = weight.data.view(torch.uint8).reshape(-1)  # two 4-bit values per byte, row-major
    for start in range(0, out_features, rows):
        stop = min(out_features, start + rows)
        first, last = start * in_features, stop * in_features
        rows_state = QuantState(scales[first // block : -(-last // block)], shape=(stop - start, in_features),
                                dtype=state.dtype, blocksize=block, quant_type=state.quant_type)
        chunk = dequantize_4bit(packed[first // 2 : (last + 1) // 2].view(-1, 1), rows_state)
        yield start, chunk if dtype == state.dtype else chunk.to(dtype)


def row_sq_norms(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``||W_i||^2`` for every row, accumulated in ``dtype`` (no gradient: ``W`` is frozen)."""
    if not is_4bit(weight):
        return torch.linalg.vector_norm(weight.detach(), dim=1, dtype=dtype).square()
    with torch.no_grad():
        return torch.cat([torch.linalg.vector_norm(chunk, dim=1, dtype=dtype).square()
                          for _, chunk in row_chunks(weight, weight_dtype(weight))])


def times_weight_t(lhs: Tensor, weight: Tensor) -> Tensor:
    """``lhs @ W^T`` in ``W``'s dtype; for a 4-bit weight from dequantized row chunks, forward and backward."""
    if not is_4bit(weight):
        return (lhs if lhs.dtype == weight.dtype else lhs.to(weight.dtype)) @ weight.T
    return _TimesQuantizedWeightT.apply(lhs, weight)


class _TimesQuantizedWeightT(torch.autograd.Function):
    """``lhs @ W^T`` for a 4-bit ``W`` that keeps only the packed weight for backward, not a dequantized copy."""

    @staticmethod
    def forward(ctx, lhs: Tensor, weight: Tensor) -> Tensor:
        dtype = weight_dtype(weight)
        ctx.weight = weight  # not saved_tensors: saved-tensor hooks would hand back a plain tensor
        ctx.lhs_dtype = lhs.dtype
        cast = lhs.to(dtype)
        return torch.cat([cast @ chunk.T for _, chunk in row_chunks(weight, dtype)], dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_lhs = None
        for start, chunk in row_chunks(ctx.weight, grad.dtype):
            part = grad[..., start : start + chunk.shape[0]] @ chunk
            grad_lhs = part if grad_lhs is None else grad_lhs.add_(part)
        return grad_lhs.to(ctx.lhs_dtype), None


def linear_no_bias(x: Tensor, weight: Tensor) -> Tensor:
    """``x W^T``; bitsandbytes' ``matmul_4bit`` for a 4-bit weight (dequantized per call, again in backward)."""
    if not is_4bit(weight):
        return F.linear(x, weight)
    import bitsandbytes as bnb

    return bnb.matmul_4bit(x, weight.t(), quant_state=_quant_state(weight))
