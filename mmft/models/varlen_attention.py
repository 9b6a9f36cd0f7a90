"""Attention over packed rows at the cost of the examples alone: SDPA per example, as flash attention's varlen does.

A packed row's block-diagonal mask lets dense SDPA compute every query against every key of the row and then
discard most of them: on a row of ``max_length`` tokens that is ``max_length ** 2`` per head, against the sum of
each example's square. ``mmft_sdpa_varlen`` takes the examples' boundaries (``cu_seq_lens_q``, which the module
passes for a packed batch, the same argument transformers' flash attention reads) and runs transformers' own SDPA
attention on each example, causal and unmasked, so the efficient causal kernels run and nothing is discarded.
Anything else (padded batches, generation with a cache, a sliding window, soft-capping) goes to SDPA unchanged,
masks included: the implementation registers SDPA's mask builder under its name.

It replaces ``sdpa`` in a language model whose attention is causal within each example (:func:`use_varlen_sdpa`);
models whose masks also attend both ways (PaliGemma's prefix, Gemma 3's images) keep SDPA and the block mask.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

VARLEN_SDPA = "mmft_sdpa_varlen"
# language models whose attention within an example is not only causal
BIDIRECTIONAL = {"paligemma", "gemma3", "gemma3_text"}


def varlen_sdpa_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                        cu_seq_lens_q: Tensor | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """transformers' attention-function signature (``query`` ``[rows, heads, width, dim]``); with
    ``cu_seq_lens_q`` (the boundaries of the examples over the rows laid end to end) SDPA runs on each example."""
    if (cu_seq_lens_q is None or query.shape[2] != key.shape[2] or kwargs.get("sliding_window") is not None
            or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows, heads, width, dim = query.shape

    def end_to_end(t: Tensor) -> Tensor:  # [rows, heads, width, dim] -> [1, heads, rows * width, dim]
        return t.transpose(0, 1).reshape(1, t.shape[1], rows * width, t.shape[3])

    q, k, v = end_to_end(query), end_to_end(key), end_to_end(value)
    bounds = cu_seq_lens_q.tolist()
    outputs = [sdpa_attention_forward(module, q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, **kwargs)[0]
               for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outputs, dim=1).reshape(rows, width, heads, dim), None


AttentionInterface.register(VARLEN_SDPA, varlen_sdpa_forward)
AttentionMaskInterface.register(VARLEN_SDPA, sdpa_mask)


def use_varlen_sdpa(model: nn.Module) -> bool:
    """Switch ``model``'s language model from ``sdpa`` to ``mmft_sdpa_varlen`` when its attention is causal within
    an example; returns whether it did (other attention implementations are left as chosen)."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is None or getattr(text, "_attn_implementation", None) != "sdpa":
        return False
    if {getattr(config, "model_type", None), getattr(text, "model_type", None)} & BIDIRECTIONAL:
        return False
    text._attn_implementation = VARLEN_SDPA
    return True


def varlen_arguments(segments: Tensor) -> dict[str, Any]:
    """The keyword arguments that tell variable-length attention (this module's, or flash attention's) where each
    example of a packed batch starts: ``segments`` are the lengths of the examples and paddings, rows end to end."""
    bounds = torch.cat([segments.new_zeros(1), segments.cumsum(0)]).to(torch.int32)
    longest = int(segments.max())
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}
