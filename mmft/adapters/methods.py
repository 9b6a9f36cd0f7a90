"""The adapter methods, one small description each. Everything else in :mod:`mmft.adapters` asks these what a method
does (config checks, the layer's parts and scaling, the PEFT folder type), so a new method is one entry here.

Two independent choices make the four adapter methods:

- the direction update: a trained low-rank pair ``B A`` (LoRA) or VeRA's frozen random projections shared by all
  layers, scaled by trained vectors (``shared_projections``);
- the magnitude: none (the update is added to ``W``) or DoRA's trained magnitude vector over the normalised direction
  ``W + s B A`` (``magnitude``).

``full`` is the reference the papers compare against: the chosen modules' own weights are trained, every one of them
(``full_weights``); it has no factors, no rank and no PEFT folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AdapterMethod:
    """One adapter method.

    Args:
        name: the ``AdapterConfig.method`` value.
        magnitude: trains DoRA's magnitude vector over the normalised direction (and allows magnitude-only modules).
        shared_projections: the direction update comes from VeRA's shared frozen projections and trained scaling
            vectors (no per-layer rank or alpha).
        peft_type: ``peft_type`` of its saved folder; PEFT's name where PEFT has the method; None for ``full``,
            which has no adapter folder.
        full_weights: trains the chosen modules' weights themselves (full fine-tuning), not an update beside them.
    """

    name: str
    magnitude: bool
    shared_projections: bool
    peft_type: str | None
    full_weights: bool = False

    def scaling(self, alpha: float, r: int, use_rslora: bool) -> float:
        """The factor ``s`` of the direction update ``s B A``: ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA);
        1 for VeRA, whose trained vectors carry the scale."""
        if self.shared_projections:
            return 1.0
        return alpha / (math.sqrt(r) if use_rslora else r)


METHODS: dict[str, AdapterMethod] = {
    method.name: method
    for method in (
        AdapterMethod("lora", magnitude=False, shared_projections=False, peft_type="LORA"),
        AdapterMethod("dora", magnitude=True, shared_projections=False, peft_type="LORA"),
        AdapterMethod("vera", magnitude=False, shared_projections=True, peft_type="VERA"),
        AdapterMethod("dvora", magnitude=True, shared_projections=True, peft_type="DVORA"),  # PEFT has none
        AdapterMethod("full", magnitude=False, shared_projections=False, peft_type=None, full_weights=True),
    )
}


def adapter_method(name: str) -> AdapterMethod:
    """The method called ``name``; a ``KeyError`` listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"adapter method {name!r}: choose one of {', '.join(METHODS)}") from None


def method_of_peft_folder(peft_type: str, use_dora: bool) -> AdapterMethod | None:
    """The method a PEFT folder's ``peft_type`` (and ``use_dora``, for ``LORA``) stands for; None if mmft has none."""
    for method in METHODS.values():
        if method.peft_type == peft_type and (peft_type != "LORA" or method.magnitude == use_dora):
            return method
    return None
