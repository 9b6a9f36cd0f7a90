"""What every chat collate shares: padding token rows into a batch, and the error a sample that cannot be turned
into model inputs raises."""

from __future__ import annotations

import torch
from torch import Tensor

from mmft.errors import InputError


class CollateError(InputError, ValueError):
    """A sample cannot be turned into model inputs; the message names the record and the setting to change."""


def pad_rows(rows: list[list[int]], value: int, left: bool, multiple: int = 1) -> tuple[Tensor, Tensor]:
    """Token rows as one tensor, padded with ``value`` on the left (generation) or the right (training) to the
    longest row's length rounded up to ``multiple``, and the attention mask."""
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        out[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return out, mask
