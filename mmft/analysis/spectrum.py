"""The spectrum of a weight update: singular values of ``W' - W0`` and the rank that explains a share of its energy.

"LoRA Learns Less and Forgets Less" (Biderman et al., 2024) measures how many singular directions an update needs: the
smallest ``k`` whose top-``k`` squared singular values hold 90% of ``||W' - W0||_F^2``. Full fine-tuning needs a rank
10-100x higher than typical LoRA ranks. A LoRA update ``s B A`` has rank at most ``r``; a DoRA update is not low rank:
rescaling each row by its trained magnitude, ``W' = m (W0 + s B A) / ||W0 + s B A||``, moves every row of ``W0``. The
effective weight ``W'`` is computed in float64 exactly as the layer applies it (a 4-bit ``W0`` dequantized).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmft.adapters import AdaptedLinear
from mmft.adapters.base_weight import dense_weight
from mmft.adapters.layers import NORM_EPS

from .updates import select_adapted

ENERGY = 0.9


def rank_at_energy(singular_values: Tensor, energy: float = ENERGY) -> int:
    """The smallest ``k`` whose ``k`` largest squared singular values hold ``energy`` of their sum; 0 for a zero
    update."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    squared = singular_values.double().sort(descending=True).values.square()
    total = float(squared.sum())
    if total == 0:
        return 0
    cumulative = squared.cumsum(0) / total
    # a share reached up to rounding counts as reached (a rank-r update's energy sums to 1 - 1e-16 at k = r)
    return int((cumulative < energy - 1e-12).sum()) + 1


@dataclass(frozen=True)
class UpdateSpectrum:
    """One layer's update ``W' - W0``: its singular values (largest first), its rank at 90% of the energy, and its
    Frobenius norm."""

    module: str
    singular_values: list[float]
    rank_90: int
    frobenius: float


def effective_weight(layer: AdaptedLinear) -> Tensor:
    """``W'`` in float64 as the layer computes it: ``W0 + s B A``, or DoRA's ``m (W0 + s B A) / ||W0 + s B A||``."""
    with torch.no_grad():
        pretrained = dense_weight(layer.base_layer.weight, torch.float64)
        factors = layer.factors()  # the update's own factors in float64: a rank-r update stays rank r
        direction = pretrained
        if factors is not None:
            direction = pretrained + layer.scaling * factors[1].double() @ factors[0].double()
        if not layer.use_dora:
            return direction
        norm = direction.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
        return layer.lora_magnitude_vector.double()[:, None] * direction / norm


def update_spectrum(pretrained: Tensor, trained: Tensor) -> Tensor:
    """Singular values of ``trained - pretrained`` in float64, largest first."""
    if pretrained.shape != trained.shape or pretrained.dim() != 2:
        raise ValueError(f"pretrained {tuple(pretrained.shape)} and trained {tuple(trained.shape)} must be the same "
                         "[out, in] shape")
    return torch.linalg.svdvals(trained.detach().double() - pretrained.detach().double())


def spectrum_of(name: str, pretrained: Tensor, trained: Tensor, energy: float = ENERGY) -> UpdateSpectrum:
    """The `UpdateSpectrum` of ``trained - pretrained``."""
    with torch.no_grad():
        values = update_spectrum(pretrained, trained)
    return UpdateSpectrum(name, values.tolist(), rank_at_energy(values, energy), float(values.square().sum().sqrt()))


def layer_spectrum(name: str, layer: AdaptedLinear, energy: float = ENERGY) -> UpdateSpectrum:
    return spectrum_of(name, dense_weight(layer.base_layer.weight, torch.float64), effective_weight(layer), energy)


def full_update_spectra(model: nn.Module, pretrained: dict[str, Tensor], energy: float = ENERGY
                        ) -> list[UpdateSpectrum]:
    """Under full fine-tuning: the spectrum of each layer of ``pretrained`` (name -> its weight before training, see
    :func:`mmft.analysis.updates.pretrained_weights`), its trained weight against that copy."""
    layers = dict(model.named_modules())
    return [spectrum_of(name, weight, layers[name].weight.detach().cpu(), energy)
            for name, weight in pretrained.items()]


def update_spectra(model: nn.Module, modules: str | Iterable[str] | None = None,
                   energy: float = ENERGY) -> list[UpdateSpectrum]:
    """The spectrum of every adapted layer of ``model`` (those matching ``modules``, PEFT's target rules, if given)."""
    return [layer_spectrum(name, layer, energy) for name, layer in select_adapted(model, modules).items()]
