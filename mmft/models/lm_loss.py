"""The training loss of a vision-language model without its full logits.

The plain loss asks the model for logits over every position (tokens x vocabulary: several GB for one batch at a
152K vocabulary) and then reads the few supervised ones. Here the language model returns its last hidden states, only
the supervised positions are kept, and the output head and cross-entropy run over chunks of them, each chunk's logits
recomputed in backward rather than stored (``torch.utils.checkpoint``), so at most one chunk's logits exist at a time.
The result equals the plain loss (the mean next-token cross-entropy over the supervised tokens, in fp32) in value and
gradients. Models whose head does more than a linear layer (logit soft-capping or scaling), or that are sharded (FSDP
gathers the head only when the whole model runs), take the plain path.

On CUDA, with ``liger-kernel`` installed (``pip install mmft[fused]``), the head and cross-entropy run instead as
Liger's fused kernel (``LigerFusedLinearCrossEntropyLoss``: the logits of a chunk computed, reduced and turned into
gradients in place, never kept): ``kernel="auto"`` takes it when the hidden states are on a GPU, ``"liger"`` always
(on a CPU only under Triton's interpreter, which is how the tests compare it), ``"chunked"`` never.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmft.errors import InputError

IGNORE_INDEX = -100
LossKernel = Literal["auto", "chunked", "liger"]
# fp32 logits of one chunk at most this big (at a 152K vocabulary: 220 tokens a chunk; at 32K: 1,048)
CHUNK_LOGIT_BYTES = 128 * 2**20
# config fields that make a head more than a linear layer
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class LossKernelError(InputError, ValueError):
    """The loss kernel asked for is not installed or not known."""


def next_token_loss(model: nn.Module, inputs: dict[str, Any], labels: Tensor, sharded: bool = False,
                    chunk_tokens: int | None = None, kernel: LossKernel = "auto") -> Tensor:
    """Mean next-token cross-entropy of ``model`` on ``inputs`` over the positions ``labels`` supervises (labels
    are aligned with the inputs, -100 where not supervised); 0 when nothing is supervised. ``chunk_tokens``: tokens
    per chunk (default: as many as fit ``CHUNK_LOGIT_BYTES`` of fp32 logits); ``kernel``: see the module
    docstring."""
    labels = labels[:, 1:]
    count = (labels != IGNORE_INDEX).sum().clamp_min(1)  # a batch with every reply cut contributes 0, not NaN
    head = _linear_head(model)
    if sharded or head is None:
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                                reduction="sum")
        return total / count
    hidden = model.model(**inputs, use_cache=False).last_hidden_state[:, :-1]
    supervised = labels != IGNORE_INDEX
    hidden, targets = hidden[supervised], labels[supervised]
    fused = _liger_loss(kernel, hidden.is_cuda)
    if fused is not None:
        return fused(head.weight, hidden, targets, head.bias).float() / count
    chunk_tokens = chunk_tokens or max(16, CHUNK_LOGIT_BYTES // (4 * head.out_features))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.shape[0], chunk_tokens):
        stop = start + chunk_tokens
        total = total + checkpoint(_chunk_loss, hidden[start:stop], targets[start:stop], head.weight, head.bias,
                                   use_reentrant=False)
    return total / count


def check_loss_kernel(kernel: LossKernel) -> None:
    """Raise :class:`LossKernelError` now for a kernel that is unknown or not installed."""
    _liger_loss(kernel, on_gpu=True)


def _liger_loss(kernel: LossKernel, on_gpu: bool) -> nn.Module | None:
    """Liger's fused head + cross-entropy (summed) when ``kernel`` asks for it, else None."""
    if kernel not in ("auto", "chunked", "liger"):
        raise LossKernelError(f"loss_kernel must be auto, chunked or liger, not {kernel!r}")
    if kernel == "chunked" or (kernel == "auto" and not on_gpu):
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        if kernel == "auto":
            return None
        raise LossKernelError("loss_kernel: liger needs the liger-kernel package (pip install mmft[fused])") from None
    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")


def _chunk_loss(hidden: Tensor, targets: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def _linear_head(model: nn.Module) -> nn.Linear | None:
    """The model's output head when its logits are exactly ``head(model.model(...).last_hidden_state)``, else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear or not isinstance(getattr(model, "model", None), nn.Module):
        return None
    config = getattr(model, "config", None)
    configs = [config, getattr(config, "text_config", None)]
    if any(getattr(c, field, None) not in (None, 1, 1.0) for c in configs if c is not None for field in _HEAD_EXTRAS):
        return None
    return head
