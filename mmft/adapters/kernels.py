"""Fused Triton kernels for DoRA's small per-layer work on CUDA, where eager steps are bound by kernel launches.

Two kernels, each replacing a chain of small PyTorch ops with one launch:

- :func:`fused_dora_norm`: the row norm ``||W_i + s (BA)_i||`` from its factored form, given ``A W^T`` and ``A A^T``
  (the clamp and square root included): one launch where the PyTorch chain takes five;
- :func:`fused_dora_backward_tail`: in backward, ``gy * g`` and the column sums ``sum_n gy * y`` that the magnitude's
  gradient needs, in one pass over ``gy`` and ``y`` (PyTorch: three ops and four passes over ``[tokens, out]``).

:func:`kernels_usable` says whether a tensor can take them (CUDA, Triton importable, not inside ``torch.compile``, whose
own fusion is better there). Everything here runs under ``TRITON_INTERPRET=1`` on the CPU too, which is how the tests
check it against the PyTorch path on a machine without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
from torch import Tensor

# the widest rank whose [r, r] fp32 tile the norm kernel holds on chip; wider ranks take the PyTorch path
MAX_FUSED_RANK = 128
# the backward tail kernel saves four passes over [tokens, out] but launches from Python at a higher fixed cost than
# the three PyTorch ops it replaces: it pays from about this many elements (on an H200 it made a step of four
# 7B-shaped layers, 4096 x 4096-11008 per layer, 6% faster, and a 1B step, mostly 4096 x 512-2048, 3% slower)
FUSED_TAIL_MIN_ELEMENTS = 1 << 24


@functools.cache
def _triton():
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    return triton, tl


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_enabled = os.environ.get("MMFT_FUSED_KERNELS", "1") != "0"


@contextlib.contextmanager
def fused_kernels(enabled: bool) -> Iterator[None]:
    """Turn the fused kernels on or off inside the block (``MMFT_FUSED_KERNELS=0`` turns them off for a run):
    benchmarks time both paths side by side with it."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def kernels_usable(t: Tensor) -> bool:
    """Whether the fused kernels can run on ``t``'s device: CUDA (or Triton's CPU interpreter) with Triton
    installed, outside ``torch.compile`` (which fuses these ops itself) and not in float64."""
    if not _enabled or t.dtype == torch.float64 or torch.compiler.is_compiling():
        return False
    if not (t.is_cuda or _interpreted()):
        return False
    return _kernels() is not None


@functools.cache
def _kernels():
    """The jitted kernels, built on first use so that importing mmft never needs Triton."""
    found = _triton()
    if found is None:
        return None
    triton, tl = found

    @triton.jit
    def norm_kernel(awt_ptr, aat_ptr, b_ptr, wsq_ptr, norm_ptr, out_features, rank, stride_awt_r, stride_awt_o,
                    stride_b_o, scaling, eps_sq, BLOCK_O: tl.constexpr, RANK: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
        ranks = tl.arange(0, RANK)
        row_ok = rows < out_features
        rank_ok = ranks < rank
        tile_ok = row_ok[:, None] & rank_ok[None, :]
        b = tl.load(b_ptr + rows[:, None] * stride_b_o + ranks[None, :], mask=tile_ok, other=0.0).to(tl.float32)
        aat = tl.load(aat_ptr + ranks[:, None] * rank + ranks[None, :],
                      mask=rank_ok[:, None] & rank_ok[None, :], other=0.0)
        # (A W^T)^T for these rows: [BLOCK_O, RANK]
        awt = tl.load(awt_ptr + ranks[None, :] * stride_awt_r + rows[:, None] * stride_awt_o, mask=tile_ok,
                      other=0.0).to(tl.float32)
        # ||W_i||^2 + s B_i . (2 A W_i^T + s (A A^T) B_i^T), in fp32 without TF32: the terms nearly cancel at times
        bracket = 2.0 * awt + scaling * tl.dot(b, aat, input_precision="ieee")
        squared = tl.load(wsq_ptr + rows, mask=row_ok, other=1.0) + scaling * tl.sum(b * bracket, axis=1)
        tl.store(norm_ptr + rows, tl.sqrt(tl.maximum(squared, eps_sq)), mask=row_ok)

    @triton.jit
    def tail_kernel(gy_ptr, y_ptr, g_ptr, gh_ptr, partial_ptr, n_rows, out_features, rows_per_program,
                    stride_gy_n, stride_y_n, stride_gh_n, BLOCK_N: tl.constexpr, BLOCK_O: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_O + tl.arange(0, BLOCK_O)
        chunk = tl.program_id(1)
        col_ok = cols < out_features
        g = tl.load(g_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        total = tl.zeros([BLOCK_O], dtype=tl.float32)
        start = chunk * rows_per_program
        for offset in range(0, rows_per_program, BLOCK_N):
            rows = start + offset + tl.arange(0, BLOCK_N)
            ok = (rows < n_rows)[:, None] & col_ok[None, :]
            gy = tl.load(gy_ptr + rows[:, None] * stride_gy_n + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + rows[:, None] * stride_y_n + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            total += tl.sum(gy * y, axis=0)
            tl.store(gh_ptr + rows[:, None] * stride_gh_n + cols[None, :],
                     (gy * g[None, :]).to(gh_ptr.dtype.element_ty), mask=ok)
        tl.store(partial_ptr + chunk * out_features + cols, total, mask=col_ok)

    return triton, norm_kernel, tail_kernel


def fused_dora_norm(a_wt: Tensor, a_at: Tensor, lora_B: Tensor, scaling: float, weight_sq_norm: Tensor,
                    eps: float) -> Tensor | None:
    """Row-wise ``sqrt(max(||W_i||^2 + s B_i . (2 (A W^T)_i + s (A A^T) B_i^T), eps^2))`` in fp32, one launch.

    ``a_wt`` is ``A W^T`` ``[r, out]`` in any float dtype, ``a_at`` the fp32 ``A A^T`` ``[r, r]``, ``lora_B``
    ``[out, r]``. Returns None when the rank is too wide for the kernel (the caller then takes the PyTorch path).
    """
    rank, out_features = a_wt.shape
    if rank > MAX_FUSED_RANK:
        return None
    triton, norm_kernel, _ = _kernels()
    lora_B = lora_B if lora_B.stride(1) == 1 else lora_B.contiguous()
    a_at = a_at.float().contiguous()
    norm = torch.empty(out_features, device=a_wt.device, dtype=torch.float32)
    padded = max(16, triton.next_power_of_2(rank))
    block = 64 if padded <= 64 else 32
    norm_kernel[(triton.cdiv(out_features, block),)](
        a_wt, a_at, lora_B, weight_sq_norm.float(), norm, out_features, rank, a_wt.stride(0), a_wt.stride(1),
        lora_B.stride(0), float(scaling), float(eps) ** 2, BLOCK_O=block, RANK=padded,
    )
    return norm


def fused_dora_backward_tail(gy: Tensor, y: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """``(gy * g, sum_n gy * y)`` for 2-D ``gy`` and ``y`` ``[tokens, out]`` and ``g`` ``[out]``: the first in
    ``gy``'s dtype, the column sums in fp32 (products taken in fp32), in one pass over both inputs.

    The sum is split over a fixed number of row chunks and the partial sums added in a fixed order, so the result does
    not depend on scheduling (no atomics).
    """
    triton, _, tail_kernel = _kernels()
    if gy.stride(1) != 1:
        gy = gy.contiguous()
    if y.stride(1) != 1:
        y = y.contiguous()
    n_rows, out_features = gy.shape
    block_n, block_o = 32, 128
    chunks = max(1, min(triton.cdiv(n_rows, 256), 64))
    rows_per_program = triton.cdiv(triton.cdiv(n_rows, chunks), block_n) * block_n
    chunks = triton.cdiv(n_rows, rows_per_program)
    gh = torch.empty((n_rows, out_features), device=gy.device, dtype=gy.dtype)
    partial = torch.empty((chunks, out_features), device=gy.device, dtype=torch.float32)
    tail_kernel[(triton.cdiv(out_features, block_o), chunks)](
        gy, y, g, gh, partial, n_rows, out_features, rows_per_program, gy.stride(0), y.stride(0), gh.stride(0),
        BLOCK_N=block_n, BLOCK_O=block_o,
    )
    return gh, partial.sum(dim=0)
