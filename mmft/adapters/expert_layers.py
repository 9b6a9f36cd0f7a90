"""LoRA on parameters that are not a Linear layer's weight: the expert weights of a mixture-of-experts model, stored
as one ``[experts, out, in]`` tensor (or ``[experts, in, out]`` where the module says ``is_transposed``), or a 2-D
parameter used as a weight.

`AdaptedParameters` wraps the module that owns the parameters (kept as ``base_layer``) and runs it with each targeted
parameter replaced by ``W_e + s B_e A_e`` for every expert ``e``, through ``torch.func.functional_call``: the base
module's own forward runs unchanged, whatever expert kernel it dispatches to. The factors are laid out as PEFT lays
them out for ``target_parameters``, so its files load both ways: ``A`` is ``[experts * r, in]`` with the rows of one
expert together, ``B`` is ``[out, r * experts]`` with the columns of one rank index together.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .layers import accumulation_dtype


def expert_shape(module: nn.Module, parameter: Tensor) -> tuple[int, int, int]:
    """``(experts, in_features, out_features)`` of a targeted parameter (a 2-D one is a single expert)."""
    if parameter.dim() == 2:
        return 1, parameter.shape[1], parameter.shape[0]
    experts, first, second = parameter.shape
    if getattr(module, "is_transposed", False):
        return experts, first, second
    return experts, second, first


class AdaptedParameters(nn.Module):
    """A module whose chosen parameters carry a LoRA update each. Build it through `apply_adapters` with
    ``AdapterConfig.target_parameters``."""

    def __init__(self, base_layer: nn.Module, ranks: dict[str, int], alphas: dict[str, float],
                 scalings: dict[str, float]) -> None:
        """``ranks`` / ``alphas`` / ``scalings``: per targeted parameter name, in the module's parameter order."""
        super().__init__()
        self.base_layer = base_layer
        self.parameter_names = list(ranks)
        self.r, self.alpha, self.scaling = dict(ranks), dict(alphas), dict(scalings)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in self.parameter_names:
            r = self.r[name]
            weight = getattr(base_layer, name)
            experts, in_features, out_features = expert_shape(base_layer, weight)
            factory = {"device": weight.device, "dtype": accumulation_dtype(weight.dtype)}
            lora_a = torch.empty(experts * r, in_features, **factory)
            nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))  # nn.Linear's default, as PEFT initialises A
            self.lora_A[name] = nn.Parameter(lora_a)
            self.lora_B[name] = nn.Parameter(torch.zeros(out_features, r * experts, **factory))

    def experts(self, name: str) -> int:
        return expert_shape(self.base_layer, getattr(self.base_layer, name))[0]

    def delta_weight(self, name: str) -> Tensor:
        """``s B_e A_e`` for every expert, in the parameter's own layout and the factors' dtype."""
        experts = self.experts(name)
        r = self.r[name]
        lora_a = self.lora_A[name].reshape(experts, r, -1)  # [experts, r, in]
        lora_b = self.lora_B[name].reshape(self.lora_B[name].shape[0], r, experts).permute(2, 0, 1)  # [e, out, r]
        delta = torch.bmm(lora_b, lora_a) * self.scaling[name]  # [experts, out, in]
        weight = getattr(self.base_layer, name)
        if weight.dim() == 2:
            return delta[0]
        return delta.transpose(1, 2) if getattr(self.base_layer, "is_transposed", False) else delta

    def adapted_weight(self, name: str) -> Tensor:
        weight = getattr(self.base_layer, name)
        return weight + self.delta_weight(name).to(weight.dtype)

    def forward(self, *args, **kwargs):
        weights = {name: self.adapted_weight(name) for name in self.parameter_names}
        return torch.func.functional_call(self.base_layer, weights, args, kwargs, strict=False)

    def __getattr__(self, name: str):
        """The base module's attributes (``num_experts``, ``is_transposed`` ...) stay readable through the wrapper."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("base_layer"), name)

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: r={self.r[name]}, alpha={self.alpha[name]}" for name in self.parameter_names)
