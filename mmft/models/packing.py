"""Padding-free training batches: a batch's examples laid end to end in rows, padded only at each row's end.

:func:`pack_training_view` turns a collate's right-padded training view into rows of at most a token budget: the
ids, labels and per-token types of the examples in order, ``position_ids`` restarting at 0 with each example, no
attention mask, and the length of each segment (the examples and each row's padding) under ``packed_lengths``.
transformers reads such rows as packed sequences (a new sequence wherever the position does not follow on): its
mask builder confines attention to each example (a block-diagonal mask for SDPA and eager attention,
FlexAttention's block mask), and variable-length attention (:mod:`mmft.models.varlen_attention`, flash
attention) runs each example alone. The media stay as they are, in example order, so each example's visual
features land on its own placeholder tokens.

A model with multimodal rotary positions (Qwen2/2.5/3-VL, GLM-4.1V: temporal, height and width per token) gets
them from its own ``get_rope_index`` over the examples laid out as the padded batch (so each restarts at 0), with
the plain restarting positions in front for the mask (the ``[4, rows, width]`` layout transformers reads), by
:func:`packed_position_ids`.

The loss is unchanged: it is the mean over the supervised tokens of the batch, and no example's first token is
supervised (it would be predicted from the example before it). Two kinds of model cannot be packed this way, and
:func:`packing_problem` names them: layers that carry a state along the row (linear attention, state-space
layers: MiniCPM-V 4.6's Qwen3.5 text model), which would run from one example into the next; and Gemma 3, whose
sliding-window layers' mask transformers builds from the packed positions while looking up its image blocks by
token index, so a packed row's later examples would see the wrong image tokens.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from mmft.errors import InputError

from .lm_loss import IGNORE_INDEX

PACKED_LENGTHS = "packed_lengths"
PACKED_TOKENS = "packed_tokens"  # the examples' tokens of a packed batch (its rows' padding left out)
# attention layers whose mask the packed positions confine to each example
_MASKED_LAYERS = {"full_attention", "sliding_attention", "chunked_attention"}
# inputs of the models' rope index functions that a packed batch carries (the rest stay at their defaults)
_ROPE_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")


class PackingError(InputError, ValueError):
    """A model or batch that cannot be packed."""


def packing_problem(model: nn.Module) -> str | None:
    """Why ``model``'s packed rows would not equal its padded batches (see the module docstring); None if they do."""
    config = getattr(model, "config", None)
    for part in (config, getattr(config, "text_config", None)):
        stateful = sorted(set(getattr(part, "layer_types", None) or ()) - _MASKED_LAYERS)
        if stateful:
            return (f"{type(model).__name__} has {', '.join(stateful)} layers, which carry a state along the row "
                    "from one packed example into the next")
    if getattr(config, "model_type", None) == "gemma3":
        return ("Gemma 3's sliding-window layers get a mask that transformers builds from the packed positions but "
                "whose image blocks it looks up by token index, so later examples in a row would attend to the wrong "
                "image tokens")
    return None


def pack_training_view(batch: dict[str, Any], token_keys: tuple[str, ...] = (), pad_id: int = 0,
                       multiple: int = 1, row_tokens: int | None = None) -> dict[str, Any]:
    """The training view of ``batch`` (right-padded ``input_ids``, ``attention_mask``, ``labels`` and the
    ``token_keys`` per-token types) packed into rows of at most ``row_tokens`` tokens (one row when None): the
    examples in their order, a new row when the next one does not fit (an example longer than that gets a row to
    itself), so the media keep their order. Rows are padded to the longest, rounded up to a multiple of
    ``multiple``, by a last segment of ``pad_id`` (unsupervised, attending only to itself). Images laid out per row
    (Idefics3 / SmolVLM: ``pixel_values`` ``[rows, images, C, H, W]`` with a ``pixel_attention_mask``; the model
    drops the all-zero padding images) become one row of every image. The prompt view is left out."""
    if "labels" not in batch:
        raise PackingError(f"examples {batch.get('ids', [])[:3]}: only training batches (with replies) are packed")
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    labels = batch["labels"].clone()
    labels[:, 0] = IGNORE_INDEX  # an example's first token would be predicted from the one before it
    packed = {key: value for key, value in batch.items()
              if key not in ("input_ids", "attention_mask", "labels", "media") and not key.startswith("prompt_")
              and key not in token_keys}
    rows = next_fit_rows(lengths, row_tokens)
    used = [sum(lengths[i] for i in row) for row in rows]
    width = -(-max(used) // multiple) * multiple
    segments = []
    for row, row_used in zip(rows, used):
        segments += [lengths[i] for i in row] + ([width - row_used] if row_used < width else [])
    values = {"input_ids": (batch["input_ids"], pad_id), "labels": (labels, IGNORE_INDEX),
              **{key: (batch[key], 0) for key in token_keys if key in batch}}
    for key, (padded, fill) in values.items():
        packed[key] = torch.stack([torch.cat([*(padded[i, :lengths[i]] for i in row),
                                              padded.new_full((width - row_used,), fill)])
                                   for row, row_used in zip(rows, used)])
    packed["position_ids"] = torch.cat([torch.arange(length) for length in segments]).reshape(len(rows), width)
    media = dict(batch["media"])
    if "pixel_attention_mask" in media and media["pixel_values"].dim() == 5:
        for key in ("pixel_values", "pixel_attention_mask"):
            media[key] = media[key].reshape(1, -1, *media[key].shape[2:])
    packed["media"] = media
    packed[PACKED_LENGTHS] = torch.tensor(segments)
    packed[PACKED_TOKENS] = sum(lengths)
    return packed


def next_fit_rows(lengths: list[int], row_tokens: int | None) -> list[list[int]]:
    """The examples (by index, in order) of each row: a new row when the next example does not fit."""
    rows: list[list[int]] = [[]]
    used = 0
    for index, length in enumerate(lengths):
        if rows[-1] and row_tokens is not None and used + length > row_tokens:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += length
    return rows


def packed_position_ids(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """The position ids of a packed batch for ``model``: the restarting positions, or for a model with a rope
    index (multimodal rotary positions) ``[4, rows, width]``: those positions, then the model's own temporal,
    height and width positions of each example as if it were alone."""
    positions = batch["position_ids"]
    rope_index = getattr(getattr(model, "model", None), "get_rope_index", None)
    media = batch["media"]
    if rope_index is None or not any(key in media for key in ("image_grid_thw", "video_grid_thw")):
        return positions  # text-only batches of those models take plain positions, as unpacked
    segments = batch[PACKED_LENGTHS]
    alone = torch.arange(int(segments.max()), device=segments.device)[None] < segments[:, None]
    inputs = {**media, **{key: batch[key] for key in ("mm_token_type_ids",) if key in batch}}
    accepted = inspect.signature(rope_index).parameters
    kwargs = {key: _unpacked(inputs[key], alone) if key == "mm_token_type_ids" else inputs[key]
              for key in _ROPE_INPUTS if key in inputs and key in accepted}
    rope, _ = rope_index(_unpacked(batch["input_ids"], alone), attention_mask=alone.long(), **kwargs)
    return torch.cat([positions[None], rope[:, alone].reshape(3, *positions.shape)], dim=0)


def _unpacked(packed: Tensor, alone: Tensor) -> Tensor:
    """A packed ``[rows, width]`` tensor laid out one segment a row as ``alone`` marks (zeros as padding)."""
    padded = packed.new_zeros(alone.shape)
    padded[alone] = packed.reshape(-1)
    return padded
