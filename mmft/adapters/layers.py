"""The adapted Linear layer and its math (REFERENCE.md section 1).

One class, `AdaptedLinear`, wraps a frozen ``nn.Linear`` or bitsandbytes 4-bit ``Linear4bit`` (kept as
``base_layer``, as PEFT does; see `base_weight` for how a 4-bit ``W`` is read) and adds:

- a low-rank direction update ``s * B A``: trainable ``lora_A`` / ``lora_B`` (LoRA, DoRA), or the shared frozen VeRA
  projections scaled by trainable ``vera_lambda_d`` / ``vera_lambda_b`` (VeRA, DVoRA);
- for the DoRA family, a trainable ``lora_magnitude_vector`` ``m``: ``W' = m * (W + s B A) / ||W + s B A||_row``.

DoRA is computed without building ``W'`` or a dense ``B A``: ``y = g * (x W^T + s (x A^T) B^T) + b`` with
``g = m / ||W + s B A||``, the norm taken from its factored form in fp32 with ``||W||^2`` cached. A custom autograd
function saves one ``[tokens, out]`` tensor (or none, with ``dora_recompute``) where composing autograd ops saves two.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base_weight import dense_weight, is_4bit, linear_no_bias, row_sq_norms, times_weight_t, weight_dtype
from .kernels import FUSED_TAIL_MIN_ELEMENTS, fused_dora_backward_tail, fused_dora_norm, kernels_usable
from .methods import adapter_method

# Rows whose norm falls below this are treated as having norm NORM_EPS: all-zero weight rows exist in real models
# (Llama-3.1-8B o_proj has 511) and would otherwise give inf/NaN.
NORM_EPS = 1e-6


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 for fp64 weights: the dtype of adapter parameters and of the DoRA norm."""
    return torch.promote_types(dtype, torch.float32)


def _versions(*tensors: Tensor | None) -> tuple:
    """A key that changes whenever any tensor is modified in place or replaced."""
    return tuple((t._version, t.data_ptr()) if t is not None else None for t in tensors)


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` that skips the dispatcher when nothing changes: the DoRA step makes a dozen such calls per
    layer, and in the launch-bound regime their fixed cost is what DoRA pays over LoRA."""
    return t if t.dtype == dtype else t.to(dtype)


_NO_CONTEXT = contextlib.nullcontext()


def _autocast_off(x: Tensor) -> tuple[torch.dtype, contextlib.AbstractContextManager]:
    """The dtype matmuls run in (autocast's when it is on, as for any other op, else the input's) and a context
    that keeps autocast out of the hand-written ops. The context is entered only when autocast is on: entering it
    costs more than the small ops it wraps."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type), torch.autocast(device_type, enabled=False)
    return x.dtype, _NO_CONTEXT


def dora_weight_norm(
    weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, weight_sq_norm: Tensor
) -> Tensor:
    """Row-wise ``||W + s B A||`` in fp32 without building ``B A``.

    ``||W_i + s (BA)_i||^2 = ||W_i||^2 + 2 s B_i . (A W_i^T) + s^2 B_i (A A^T) B_i^T``. ``weight_sq_norm`` is the
    cached ``||W_i||^2`` (fp32). ``A W^T`` is taken in the weight's dtype (a half-precision weight is not copied to fp32)
    and accumulated into fp32 from there; a 4-bit weight is read in dequantized row chunks.
    """
    acc = accumulation_dtype(weight_dtype(weight))
    _, no_autocast = _autocast_off(weight)  # autocast would run the small GEMMs below in half precision
    with no_autocast:
        a = _cast(lora_A, acc)
        a_wt = times_weight_t(lora_A, weight)  # [r, out]
        if kernels_usable(weight) and not (torch.is_grad_enabled() and (lora_A.requires_grad or lora_B.requires_grad)):
            norm = fused_dora_norm(a_wt, a @ a.T, lora_B, scaling, weight_sq_norm, NORM_EPS)
            if norm is not None:
                return norm
        b = _cast(lora_B, acc)
        # the bracket of ||W_i||^2 + s B_i . (2 A W_i^T + s (A A^T) B_i^T) for every row i: one small GEMM
        bracket = torch.addmm(_cast(a_wt, acc), a @ a.T, b.T, beta=2.0, alpha=scaling)  # [r, out]
        # the per-row dot products and the sum with ||W_i||^2 as one batched GEMM: [out, 1, r] @ [out, r, 1]
        squared = torch.baddbmm(weight_sq_norm.view(-1, 1, 1), b.unsqueeze(1), bracket.T.unsqueeze(2), alpha=scaling)
        return squared.view(-1).clamp_min(NORM_EPS * NORM_EPS).sqrt()


def dora_linear_inference(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                          scale: Tensor, scaling: float) -> Tensor:
    """``g * (x W^T + s (x A^T) B^T) + b`` without autograd: one GEMM that accumulates the low-rank term and one
    in-place pass for the scale and bias, so unmerged DoRA inference costs what LoRA's does."""
    dtype, no_autocast = _autocast_off(x)
    with no_autocast:
        x2 = _cast(x.reshape(-1, x.shape[-1]), dtype)
        out = x2 @ dense_weight(weight, dtype).T
        out.addmm_(x2 @ _cast(lora_A, dtype).T, _cast(lora_B, dtype).T, alpha=scaling)
        out.mul_(_cast(scale, dtype))
        if bias is not None:
            out.add_(_cast(bias, dtype))
    return out.reshape(*x.shape[:-1], out.shape[-1])


class DoRAScaledLinear(torch.autograd.Function):
    """DoRA's output with ``g = m / norm`` and a hand-written backward. ``W`` is frozen: no gradient for it; ``norm``
    gets one only when it requires one (``detach_norm=False``).

    Without dropout (``x_base`` is None): ``g * (x W^T + s (x A^T) B^T) + b``. With dropout, ``x`` is the dropped
    adapter input and ``x_base`` the layer's input, and the output is PEFT's ``x_base W^T + b + (g - 1) x W^T +
    g s (x A^T) B^T``: two GEMMs with ``W`` each way, where composing the pieces takes three.

    Saved for backward: the inputs, ``x A^T`` and, for ``g``'s gradient ``sum_n gy * h`` with ``h = x W^T + s (x A^T)
    B^T``, the output itself when ``out = g * h`` (no bias, no dropout: the next op usually saves that same tensor, so
    the two share one storage), else ``h``. With ``recompute`` neither is kept: ``h`` is recomputed in backward.
    Taking ``m`` and ``norm`` rather than ``g`` keeps the division out of the autograd graph.
    """

    @staticmethod
    def forward(ctx, x: Tensor, x_base: Tensor | None, weight: Tensor, bias: Tensor | None, lora_A: Tensor,
                lora_B: Tensor, magnitude: Tensor, norm: Tensor, scaling: float, recompute: bool) -> Tensor:
        dtype, no_autocast = _autocast_off(x)
        with no_autocast:
            x2 = _cast(x.reshape(-1, x.shape[-1]), dtype)
            w, a, b = dense_weight(weight, dtype), _cast(lora_A, dtype), _cast(lora_B, dtype)
            g = _cast(magnitude / norm, dtype)
            xa = x2 @ a.T
            xw = x2 @ w.T
            if x_base is None:
                xb2 = None
                h = xw.addmm_(xa, b.T, alpha=scaling)
                out = torch.addcmul(_cast(bias, dtype), h, g) if bias is not None else h.mul_(g)
            else:
                xb2 = _cast(x_base.reshape(x2.shape), dtype)
                h = torch.addmm(xw, xa, b.T, alpha=scaling)
                out = xb2 @ w.T if bias is None else torch.addmm(_cast(bias, dtype), xb2, w.T)
                out.addcmul_(h, g).sub_(xw)
            out = out.reshape(*x.shape[:-1], out.shape[-1])
        ctx.scaling = scaling
        ctx.grad_dtypes = (x.dtype, None if x_base is None else x_base.dtype, None if bias is None else bias.dtype,
                           lora_A.dtype, lora_B.dtype)
        ctx.saved_output = x_base is None and bias is None and not recompute
        keep_h = not ctx.saved_output and not recompute
        # a 4-bit W is kept packed and dequantized again in backward, as bitsandbytes' matmul_4bit does; it is held
        # on ctx, out of reach of saved-tensor hooks, which would hand back a plain tensor without its quant state
        ctx.packed_weight = weight if is_4bit(weight) else None
        ctx.save_for_backward(x2, xb2, None if is_4bit(weight) else w, a, b, g, magnitude, norm, xa,
                              h if keep_h else None, out if ctx.saved_output else None)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x2, xb2, w, a, b, g, magnitude, norm, xa, h, out = ctx.saved_tensors
        if ctx.packed_weight is not None:
            w = dense_weight(ctx.packed_weight, x2.dtype)
        s = ctx.scaling
        x_dtype, x_base_dtype, bias_dtype, a_dtype, b_dtype = ctx.grad_dtypes
        need_x, need_x_base, _, need_bias, need_a, need_b, need_m, need_norm = ctx.needs_input_grad[:8]
        grad_x = grad_x_base = grad_bias = grad_a = grad_b = grad_m = grad_norm = None
        _, no_autocast = _autocast_off(grad_out)
        with no_autocast:
            gy = _cast(grad_out.reshape(-1, grad_out.shape[-1]), x2.dtype)
            acc = accumulation_dtype(gy.dtype)
            gh = None
            if need_m or need_norm:
                if ctx.saved_output:
                    y = out.view_as(gy)
                elif h is None:
                    y = (x2 @ w.T).addmm_(xa, b.T, alpha=s)
                else:
                    y = h
                # sum_n gy * y, and gy * g (needed below) in the same pass where the fused kernel can run
                if gy.numel() >= FUSED_TAIL_MIN_ELEMENTS and kernels_usable(gy):
                    gh, dot = fused_dora_backward_tail(gy, y, g)
                else:
                    dot = torch.sum(gy * y, dim=0, dtype=acc)
                if ctx.saved_output:
                    # d/dm = sum_n gy h / norm = (sum_n gy out) / m and d/dnorm = -(sum_n gy out) / norm. A row with
                    # m = 0 (an all-zero weight row at initialisation) outputs 0 and gives B no gradient, so its h
                    # stays 0: its gradient is 0.
                    if need_m:
                        grad_m = torch.where(magnitude == 0, 0.0, dot / magnitude)
                    if need_norm:
                        grad_norm = (dot / norm).neg_()
                else:
                    if need_m:
                        grad_m = dot / norm
                    if need_norm:
                        grad_norm = (dot * magnitude).div_(norm.square()).neg_()
            if need_bias:
                grad_bias = _cast(torch.sum(gy, dim=0, dtype=acc), bias_dtype)
            if need_x_base:
                grad_x_base = _cast(gy @ w, x_base_dtype).reshape(*grad_out.shape[:-1], x2.shape[-1])
            if gh is None:
                gh = gy * g
            # beta=0 ignores the (uninitialised) input: the GEMM applies the scaling, no separate pass
            unused = gh.new_empty(())
            if need_b:
                grad_b = _cast(torch.addmm(unused, gh.T, xa, beta=0, alpha=s), b_dtype)
            if need_a or need_x:
                gxa = torch.addmm(unused, gh, b, beta=0, alpha=s)
                if need_a:
                    grad_a = _cast(gxa.T @ x2, a_dtype)
                if need_x:
                    # with dropout, x's share of the W path is (g - 1) x W^T
                    gw = gh if xb2 is None else gh.sub_(gy)
                    grad_x = _cast((gw @ w).addmm_(gxa, a), x_dtype).reshape(*grad_out.shape[:-1], x2.shape[-1])
        return grad_x, grad_x_base, None, grad_bias, grad_a, grad_b, grad_m, grad_norm, None, None


class VeraProjections(nn.Module):
    """The frozen random matrices VeRA shares across all adapted layers, generated from a seed.

    Same recipe as PEFT (kaiming-uniform with fan_in and gain sqrt(2), A then B from one CPU generator) so a seed
    gives PEFT's projections.
    """

    def __init__(self, r: int, max_in: int, max_out: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator(device="cpu").manual_seed(seed)
        self.seed = seed
        self.register_buffer("vera_A", self._kaiming_uniform((r, max_in), generator))
        self.register_buffer("vera_B", self._kaiming_uniform((max_out, r), generator))

    @staticmethod
    def _kaiming_uniform(shape: tuple[int, int], generator: torch.Generator) -> Tensor:
        bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
        return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a LoRA / DoRA / VeRA / DVoRA update. Build it through `apply_adapters`."""

    def __init__(
        self,
        base_layer: nn.Linear,
        *,
        method: str,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        magnitude_only: bool = False,
        detach_norm: bool = True,
        dora_recompute: bool = False,
        vera: VeraProjections | None = None,
        vera_d_initial: float = 0.1,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.method, self.r, self.alpha = method, r, alpha
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.magnitude_only = magnitude_only
        self.detach_norm, self.dora_recompute = detach_norm, dora_recompute
        spec = adapter_method(method)  # what the method is made of (mmft.adapters.methods)
        self.use_dora = spec.magnitude
        self.use_vera = spec.shared_projections
        self.scaling = spec.scaling(alpha, r, use_rslora)
        self.has_dropout = dropout > 0
        self.dropout = nn.Dropout(dropout) if self.has_dropout else nn.Identity()
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": accumulation_dtype(weight_dtype(weight))}
        if magnitude_only:
            pass
        elif self.use_vera:
            if vera is None:
                raise ValueError("VeRA layers need the shared VeraProjections")
            # kept out of _modules so the shared buffers are stored once, on the model that owns them
            self.__dict__["_vera"] = vera
            self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, **factory))
            self.vera_lambda_d = nn.Parameter(torch.full((r,), float(vera_d_initial), **factory))
        else:
            self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)  # kaiming-uniform(a=sqrt(5))
            self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
            nn.init.zeros_(self.lora_B.weight)
        self._weight_sq_cache: tuple[tuple, Tensor] | None = None
        self._scale_cache: tuple[tuple, Tensor] | None = None
        self._norm_cache: tuple[tuple, Tensor] | None = None
        if self.use_dora:
            self.lora_magnitude_vector = nn.Parameter(self.weight_norm().detach().clone())

    # -- the pieces of the update ------------------------------------------------------------------------------
    def factors(self) -> tuple[Tensor, Tensor] | None:
        """``(A [r, in], B [out, r])`` of the direction update ``scaling * B @ A``; None for magnitude-only layers."""
        if self.magnitude_only:
            return None
        if self.use_vera:
            vera = self.__dict__["_vera"]
            a = vera.vera_A[: self.r, : self.in_features].to(self.vera_lambda_d.device)
            b = vera.vera_B[: self.out_features, : self.r].to(self.vera_lambda_b.device)
            return self.vera_lambda_d[:, None] * a, self.vera_lambda_b[:, None] * b
        return self.lora_A.weight, self.lora_B.weight

    def weight_sq_norm(self) -> Tensor:
        """Cached fp32 ``||W_i||^2`` (W is frozen; the cache follows in-place changes such as loading weights).

        Inside ``torch.compile`` it is recomputed instead (data pointers, part of the cache key, cannot be traced):
        one fused reduction over ``W``, and no graph break.
        """
        weight = self.base_layer.weight
        if torch.compiler.is_compiling():
            return row_sq_norms(weight, accumulation_dtype(weight.dtype))
        key = _versions(weight)
        if self._weight_sq_cache is None or self._weight_sq_cache[0] != key:
            self._weight_sq_cache = (key, row_sq_norms(weight, accumulation_dtype(weight_dtype(weight))))
        return self._weight_sq_cache[1]

    def weight_norm(self, factors: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Row-wise ``||W + s B A||`` in fp32 (``||W||`` for magnitude-only layers); ``factors`` when already at hand."""
        factors = factors or self.factors()
        if factors is None:
            return self.weight_sq_norm().clamp_min(NORM_EPS * NORM_EPS).sqrt()
        return dora_weight_norm(self.base_layer.weight, *factors, self.scaling, self.weight_sq_norm())

    def training_norm(self, factors: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The norm a training forward divides by: a constant for autograd with ``detach_norm`` (the paper's trick).
        Being a constant, it only changes when the optimizer steps: it is computed once and reused by every
        micro-batch of a gradient accumulation (and by a checkpointed layer's recomputation) until ``W``, ``A`` or
        ``B`` change; inside ``torch.compile`` it is recomputed (the cache key cannot be traced)."""
        if not self.detach_norm:
            return self.weight_norm(factors)
        if torch.compiler.is_compiling():
            with torch.no_grad():
                return self.weight_norm(factors)
        key = self._direction_key()
        if self._norm_cache is None or self._norm_cache[0] != key:
            with torch.no_grad():
                self._norm_cache = (key, self.weight_norm(factors))
        return self._norm_cache[1]

    def magnitude_scale(self) -> Tensor:
        """``g = m / ||W + s B A||`` in fp32. Without autograd (eval, generation) it is cached until a weight changes,
        except inside ``torch.compile``, whose fused kernels recompute it."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.lora_magnitude_vector / self.training_norm()
        key = self._state_key()
        if self._scale_cache is None or self._scale_cache[0] != key:
            self._scale_cache = (key, self.lora_magnitude_vector / self.weight_norm())
        return self._scale_cache[1]

    def _state_key(self) -> tuple:
        """Changes whenever a tensor the scale depends on is modified in place or replaced."""
        return (*self._direction_key(), *_versions(self.lora_magnitude_vector))

    def _direction_key(self) -> tuple:
        """Changes whenever a tensor the norm ``||W + s B A||`` depends on is modified in place or replaced."""
        tensors = [self.base_layer.weight]
        if self.use_vera:
            vera = self.__dict__["_vera"]
            tensors += [self.vera_lambda_b, self.vera_lambda_d, vera.vera_A, vera.vera_B]
        elif not self.magnitude_only:
            tensors += [self.lora_A.weight, self.lora_B.weight]
        return _versions(*tensors)

    def delta_weight(self) -> Tensor:
        """The dense direction update ``s * B @ A`` in fp32 (merging and tests only; training never builds it)."""
        weight = self.base_layer.weight
        acc = accumulation_dtype(weight_dtype(weight))
        factors = self.factors()
        if factors is None:
            return weight.new_zeros(self.out_features, self.in_features, dtype=acc)
        a, b = factors
        return self.scaling * (b.to(acc) @ a.to(acc))

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if not self.use_dora:
            a, b = self.factors()
            update = F.linear(F.linear(self.dropout(x), _cast(a, x.dtype)), _cast(b, x.dtype))
            return self.base_layer(x) + update * self.scaling
        factors = self.factors()
        if factors is None:
            out = linear_no_bias(x, weight) * _cast(self.magnitude_scale(), x.dtype)
            return out if bias is None else out + bias
        dropped = self.training and self.has_dropout
        if not dropped and not torch.is_grad_enabled():
            return dora_linear_inference(x, weight, bias, *factors, self.magnitude_scale(), self.scaling)
        # dropout only on the adapter path, as PEFT computes it: the function then also takes the undropped input
        x_d, x_base = (self.dropout(x), x) if dropped else (x, None)
        return DoRAScaledLinear.apply(x_d, x_base, weight, bias, *factors, self.lora_magnitude_vector,
                                      self.training_norm(factors), self.scaling, self.dora_recompute)

    def extra_repr(self) -> str:
        kind = "magnitude-only " if self.magnitude_only else ""
        return f"{kind}{self.method}, r={self.r}, scaling={self.scaling:g}"
