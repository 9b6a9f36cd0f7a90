"""A zero-weight vision forward for batches without images or videos.

Under several processes every rank's backward must reach the same parameters: DDP reduces the gradients of every
trainable parameter (the projector, adapters on the vision tower) and FSDP / ZeRO-3 gather the tower's weights, so a
rank whose batch is text-only would leave the others waiting. Such a rank runs the vision tower and projector on a
blank dummy image and adds its output times zero to the loss: the loss value is unchanged, the gradients it adds are
zero, and every rank runs the same collectives.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def tensor_sum(output: Any) -> Tensor | None:
    """The sum of every tensor in a model output (a tensor, tuple, list or ModelOutput); None when there is none."""
    if isinstance(output, Tensor):
        return output.float().sum()
    values = output.values() if hasattr(output, "values") else output
    total = None
    for value in values:
        if isinstance(value, (Tensor, tuple, list)) or hasattr(value, "values"):
            part = tensor_sum(value)
            if part is not None:
                total = part if total is None else total + part
    return total


def dummy_vision_loss(model: Any, dummy: dict[str, Tensor]) -> Tensor:
    """Zero times the vision tower's and projector's output on ``dummy``: a zero loss term whose backward reaches
    every vision parameter (adapters on the tower, the projector)."""
    weight = next(p for p in model.parameters() if p.is_floating_point())
    inputs = {k: v.to(weight.device, weight.dtype) if v.is_floating_point() else v.to(weight.device)
              for k, v in dummy.items()}
    return 0.0 * tensor_sum(model.get_image_features(**inputs))
