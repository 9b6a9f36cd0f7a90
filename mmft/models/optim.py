"""Optimizer parameter groups and the warmup + cosine schedule of the LLaVA-1.5 and VL-Adapter recipes."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from mmft.errors import InputError

# Called as ``scheduler(optimizer, total_steps)``: the module knows the step count only once the Trainer is set up.
SchedulerCallable = Callable[[Optimizer, int], LRScheduler]


class ParamGroupError(InputError, ValueError):
    """A parameter group setting does not fit the model; the message names the config key."""


@dataclass
class ParamGroup:
    """Trainable parameters whose name matches ``pattern`` (``re.search``) get their own lr / weight decay.

    LLaVA-1.5 LoRA trains the projector at 2e-5 and the adapters at 2e-4: ``{name: projector,
    pattern: multi_modal_projector, lr: 2.0e-5}``. Parameters matched by no group use the optimizer's own settings.
    """

    pattern: str
    lr: float | None = None
    weight_decay: float | None = None
    name: str | None = None


def build_param_groups(module: nn.Module, groups: Iterable[ParamGroup], key: str = "param_groups") -> list[dict]:
    """Optimizer param groups over the trainable parameters of ``module`` (first matching group wins).

    The groups carry a ``name`` (for LearningRateMonitor). A group that matches nothing is a config mistake and
    raises, naming ``key``.
    """
    groups = list(groups)
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ParamGroupError("the model has no trainable parameters: check the adapter config")
    buckets: list[list] = [[] for _ in groups]
    rest = []
    for name, param in trainable:
        index = next((i for i, g in enumerate(groups) if re.search(g.pattern, name)), None)
        (rest if index is None else buckets[index]).append(param)
    out = []
    if rest:
        out.append({"name": "default", "params": rest})
    for i, (group, params) in enumerate(zip(groups, buckets)):
        if not params:
            raise ParamGroupError(
                f"{key}[{i}].pattern={group.pattern!r} matches no trainable parameter; trainable names look like "
                f"{', '.join(n for n, _ in trainable[:4])}"
            )
        entry: dict = {"name": group.name or group.pattern, "params": params}
        if group.lr is not None:
            entry["lr"] = group.lr
        if group.weight_decay is not None:
            entry["weight_decay"] = group.weight_decay
        out.append(entry)
    return out


class WarmupCosine(LRScheduler):
    """Linear warmup from 0 over ``ceil(warmup_ratio * total_steps)`` steps, then cosine decay to
    ``min_lr_ratio * lr`` at ``total_steps`` (the Hugging Face Trainer's ``cosine`` with ``warmup_ratio``, which
    LLaVA-1.5 uses with 0.03). Every param group keeps its own peak lr. Step it once per optimizer step."""

    def __init__(
        self, optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"{type(self).__name__} total_steps={total_steps}: must be at least 1")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"{type(self).__name__} warmup_ratio={warmup_ratio}: must be in [0, 1)")
        self.total_steps = total_steps
        self.warmup_steps = math.ceil(warmup_ratio * total_steps)
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer)

    def factor(self, step: int) -> float:
        """The multiplier of the peak lr at ``step``."""
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


class WarmupLinear(WarmupCosine):
    """Linear warmup from 0 over ``ceil(warmup_ratio * total_steps)`` steps, then linear decay to
    ``min_lr_ratio * lr`` at ``total_steps``: transformers' ``get_linear_schedule_with_warmup``, which VL-T5 and
    VL-Adapter use (warmup ratio 0.1)."""

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * (1.0 - progress)
