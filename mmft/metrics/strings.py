"""Strings as tensor states, so torchmetrics can gather them across processes like any other state.

torchmetrics synchronises tensors only. A metric that needs every string of the corpus (CIDEr-D's document
frequency) keeps UTF-8 bytes in one uint8 tensor per update and the byte length of each string in another; both are
"cat" states, gathered rank by rank in the same order, so they stay aligned after synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.utilities.data import dim_zero_cat


def encode_strings(texts: Sequence[str], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(bytes, lengths)``: the concatenated UTF-8 bytes (uint8) and each string's byte length (int64)."""
    encoded = [text.encode("utf-8") for text in texts]
    joined = bytearray(b"".join(encoded))
    data = torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8)
    lengths = torch.tensor([len(b) for b in encoded], dtype=torch.int64)
    return data.to(device), lengths.to(device)


def decode_strings(data: torch.Tensor | list[torch.Tensor], lengths: torch.Tensor | list[torch.Tensor]) -> list[str]:
    """Inverse of :func:`encode_strings`, for a state that may be a list of tensors or one gathered tensor."""
    data = cat_state(data).to(torch.uint8).cpu().numpy().tobytes()
    lengths = cat_state(lengths).to(torch.int64).tolist()
    texts, start = [], 0
    for length in lengths:
        texts.append(data[start : start + length].decode("utf-8"))
        start += length
    if start != len(data):
        raise RuntimeError(f"string state is inconsistent: {len(data)} bytes, lengths sum to {start}")
    return texts


def cat_state(state: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A "cat" state as one tensor: a list of per-update tensors before synchronisation, one tensor after."""
    if isinstance(state, list) and not state:
        return torch.empty(0)
    return dim_zero_cat(state)
