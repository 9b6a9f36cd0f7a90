"""Magnitude and direction of weight updates: the DoRA paper's section 3 analysis.

Every weight row ``W_n`` (one output feature of an ``nn.Linear``) is split into a magnitude ``||W_n||`` and a
direction ``W_n / ||W_n||``. For a fine-tuned weight ``W'`` against the pre-trained ``W0`` over the ``k`` rows:

    delta_M = 1/k sum_n | m'_n - ||W0_n|| |          delta_D = 1/k sum_n (1 - cos(W'_n, W0_n))

The paper plots delta_D against delta_M over checkpoints (and layers): LoRA's updates move both together (a positive
slope), full fine-tuning and DoRA change one with little of the other (a negative slope). For a DoRA layer ``m'`` is
the trained magnitude vector and the direction is ``W0 + s B A``; for LoRA and VeRA both come from ``W0 + s B A``.
Under full fine-tuning (``method: full``) ``W'`` is the Linear layer's trained weight itself, against a copy of its
weight taken before training (:func:`pretrained_weights`). Everything is computed in float64.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmft.adapters import AdaptedLinear, find_adapted_modules, fully_trained_modules
from mmft.adapters.base_weight import dense_weight
from mmft.adapters.inject import CONFIG_ATTRIBUTE, module_matches


@dataclass(frozen=True)
class WeightUpdate:
    """How far one layer's weight moved from the pre-trained one, in magnitude and in direction."""

    module: str
    delta_magnitude: float
    delta_direction: float


def magnitude_direction_change(pretrained: Tensor, direction: Tensor, magnitude: Tensor | None = None
                               ) -> tuple[float, float]:
    """``(delta_M, delta_D)`` of a weight against ``pretrained`` (both ``[out, in]``, one magnitude per row).

    ``direction`` need not be normalised (only its angle with ``pretrained`` counts). ``magnitude`` defaults to the
    row norms of ``direction``: pass a full fine-tuned weight alone, or a DoRA direction with its magnitude vector.
    """
    if pretrained.shape != direction.shape or pretrained.dim() != 2:
        raise ValueError(f"pretrained {tuple(pretrained.shape)} and direction {tuple(direction.shape)} must be the "
                         "same [out, in] shape")
    w0, v = pretrained.detach().double(), direction.detach().double()
    m = v.norm(dim=1) if magnitude is None else magnitude.detach().double()
    if m.shape != (w0.shape[0],):
        raise ValueError(f"magnitude {tuple(m.shape)} must hold one value per row ({w0.shape[0]})")
    delta_m = (m - w0.norm(dim=1)).abs().mean()
    delta_d = (1.0 - torch.nn.functional.cosine_similarity(v, w0, dim=1, eps=1e-12)).mean()
    return float(delta_m), float(delta_d)


def layer_update(name: str, layer: AdaptedLinear) -> WeightUpdate:
    """The update of one adapted layer: the effective weight ``W0 + s B A`` (with DoRA's magnitude) against ``W0``."""
    with torch.no_grad():
        pretrained = dense_weight(layer.base_layer.weight, torch.float64)
        direction = pretrained + layer.delta_weight().double()
        magnitude = layer.lora_magnitude_vector if layer.use_dora else None
        delta_m, delta_d = magnitude_direction_change(pretrained, direction, magnitude)
    return WeightUpdate(name, delta_m, delta_d)


def select_adapted(model: nn.Module, modules: str | list[str] | None = None) -> dict[str, AdaptedLinear]:
    """The adapted layers of ``model`` (unmerged), optionally only those matching ``modules`` (PEFT's target rules:
    a regex string matched in full, or names matched exactly or as a ``.name`` suffix); an empty choice raises."""
    layers = find_adapted_modules(model)
    if not layers:
        raise ValueError("weight_updates: the model has no unmerged mmft adapters")
    chosen = {n: layer for n, layer in layers.items() if modules is None or module_matches(n, modules)}
    if not chosen:
        raise ValueError(f"weight_updates: no adapted module matches {modules!r}; adapted modules are, e.g., "
                         f"{sorted(layers)[:5]}")
    return chosen


def weight_updates(model: nn.Module, modules: str | list[str] | None = None) -> list[WeightUpdate]:
    """One `WeightUpdate` per adapted layer chosen by :func:`select_adapted`."""
    return [layer_update(name, layer) for name, layer in select_adapted(model, modules).items()]


def fully_trained_linears(model: nn.Module, modules: str | list[str] | None = None) -> dict[str, nn.Linear]:
    """The Linear layers inside the modules ``method: full`` trains (``model``: the adapted network), optionally only
    those matching ``modules``; an empty choice raises."""
    trained = fully_trained_modules(model)
    if not trained:
        raise ValueError("weight_updates: the model is not fully fine-tuned (method: full)")
    layers = {f"{root}.{name}" if name else root: layer for root, module in trained.items()
              for name, layer in module.named_modules() if isinstance(layer, nn.Linear)}
    chosen = {n: layer for n, layer in layers.items() if modules is None or module_matches(n, modules)}
    if not chosen:
        raise ValueError(f"weight_updates: no fully trained Linear layer matches {modules!r}; they are, e.g., "
                         f"{sorted(layers)[:5]}")
    return chosen


def pretrained_weights(model: nn.Module, modules: str | list[str] | None = None) -> dict[str, Tensor]:
    """A CPU copy of the weight of every Linear layer :func:`fully_trained_linears` chooses: ``W0``, for measuring
    full fine-tuning's updates later. Take it before training (and before a checkpoint is restored)."""
    return {name: layer.weight.detach().to("cpu", copy=True)
            for name, layer in fully_trained_linears(model, modules).items()}


_SNAPSHOTS: weakref.WeakKeyDictionary[nn.Module, dict[str, Tensor]] = weakref.WeakKeyDictionary()


def pretrained_snapshot(pl_module: nn.Module, modules: str | list[str] | None = None) -> dict[str, Tensor]:
    """For a fully fine-tuned network (``pl_module.model``, or ``pl_module`` itself): ``W0`` of its Linear layers
    matching ``modules``, named as in ``pl_module``, copied once per network and shared by every callback that asks
    (call it before training and before a checkpoint is restored). Empty for adapters, after checking that
    ``modules`` chooses some adapted layer. A choice that matches nothing raises ``ValueError``."""
    # the network apply_adapters was given: ``pl_module`` itself, or the LightningModule's ``model``
    network = pl_module if hasattr(pl_module, CONFIG_ATTRIBUTE) else getattr(pl_module, "model", pl_module)
    if not fully_trained_modules(network):
        select_adapted(pl_module, modules)
        return {}
    prefix = "model." if network is not pl_module else ""
    if network not in _SNAPSHOTS:
        _SNAPSHOTS[network] = pretrained_weights(network)
    return {f"{prefix}{name}": _SNAPSHOTS[network][name] for name in fully_trained_linears(network, modules)}


def full_weight_updates(model: nn.Module, pretrained: dict[str, Tensor]) -> list[WeightUpdate]:
    """One `WeightUpdate` per layer of ``pretrained``: the trained weight against its copy from before training."""
    layers = dict(model.named_modules())
    updates = []
    with torch.no_grad():
        for name, weight in pretrained.items():
            delta_m, delta_d = magnitude_direction_change(weight.double(), layers[name].weight.detach().cpu())
            updates.append(WeightUpdate(name, delta_m, delta_d))
    return updates


def direction_magnitude_trend(points: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of delta_M on delta_D and their Pearson correlation, over ``(delta_D, delta_M)`` points.

    The paper's figure 2 reads the sign: positive for LoRA, negative for DoRA and full fine-tuning. NaN where the
    points do not vary (fewer than two distinct delta_D values).
    """
    pts = torch.tensor([tuple(p) for p in points], dtype=torch.float64).reshape(-1, 2)
    if pts.shape[0] < 2:
        return math.nan, math.nan
    centred = pts - pts.mean(dim=0)
    var_d, var_m = centred[:, 0].square().sum(), centred[:, 1].square().sum()
    cov = (centred[:, 0] * centred[:, 1]).sum()
    if var_d == 0:
        return math.nan, math.nan
    slope = cov / var_d
    correlation = cov / (var_d * var_m).sqrt() if var_m > 0 else torch.tensor(math.nan)
    return float(slope), float(correlation)
