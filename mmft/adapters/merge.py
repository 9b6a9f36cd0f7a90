"""Merge adapters into the base weights for zero-latency inference, and undo it exactly.

Merging puts each layer's plain ``nn.Linear`` (weights merged) back in the model, so the forward path holds no adapter
code and the model saves as an ordinary checkpoint. The adapter is kept beside the Linear to allow `unmerge_adapters`.
A 4-bit base is merged into a dequantized copy (a new ``nn.Linear`` in the weight's original dtype), and unmerging
puts the untouched 4-bit layer back; :func:`dequantize_4bit_layers` does the same for the 4-bit layers that have no
adapter, so that a merged model saves as plain weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .base_weight import dense_weight, is_4bit, weight_dtype
from .expert_layers import AdaptedParameters
from .inject import AdapterError, find_adapted_modules, find_adapted_parameters, set_submodule
from .layers import AdaptedLinear

MERGED_ATTRIBUTE = "_mmft_merged_adapter"


def merged_weight(layer: AdaptedLinear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The merged weight in fp32 (fp64 for fp64 weights), and the DoRA scale ``g`` it used (None for LoRA / VeRA)."""
    with torch.no_grad():
        delta = layer.delta_weight()
        combined = dense_weight(layer.base_layer.weight, delta.dtype) + delta
        if not layer.use_dora:
            return combined, None
        scale = (layer.lora_magnitude_vector / layer.weight_norm()).to(delta.dtype)
        return scale[:, None] * combined, scale


def _dense_copy(base: nn.Module, merged: torch.Tensor) -> nn.Linear:
    """A plain ``nn.Linear`` with ``merged`` as its weight, in the dtype of the 4-bit ``base``'s original weight."""
    dense = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device=merged.device,
                      dtype=weight_dtype(base.weight))
    with torch.no_grad():
        dense.weight.copy_(merged)
        if base.bias is not None:
            dense.bias.copy_(base.bias)
    return dense.requires_grad_(False)


def _merge_parameters(model: nn.Module, name: str, wrapper: AdaptedParameters) -> None:
    base = wrapper.base_layer
    with torch.no_grad():
        for parameter in wrapper.parameter_names:
            getattr(base, parameter).copy_(wrapper.adapted_weight(parameter))
    base.__dict__[MERGED_ATTRIBUTE] = wrapper
    set_submodule(model, name, base)


def _unmerge_parameters(model: nn.Module, name: str, base: nn.Module, wrapper: AdaptedParameters) -> None:
    with torch.no_grad():
        for parameter in wrapper.parameter_names:
            weight = getattr(base, parameter)
            weight.copy_(weight - wrapper.delta_weight(parameter).to(weight.dtype))
    set_submodule(model, name, wrapper)


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter of ``model`` into its base weight (in place). Returns the number of layers merged."""
    layers = find_adapted_modules(model)
    wrappers = find_adapted_parameters(model)
    if not layers and not wrappers:
        raise AdapterError("merge_adapters: the model has no unmerged mmft adapters")
    for name, wrapper in wrappers.items():
        _merge_parameters(model, name, wrapper)
    for name, layer in layers.items():
        base = layer.base_layer
        merged, scale = merged_weight(layer)
        if is_4bit(base.weight):  # the 4-bit layer stays inside the adapter, untouched, for unmerge
            base = _dense_copy(base, merged)
        else:
            with torch.no_grad():
                if scale is not None:
                    # unmerge divides by the scale; rows with scale 0 lose W, so keep those rows
                    zero_rows = (scale == 0).nonzero().flatten()
                    layer._merge_state = (scale, zero_rows, base.weight[zero_rows].clone())
                base.weight.copy_(merged.to(base.weight.dtype))
        base.__dict__[MERGED_ATTRIBUTE] = layer
        set_submodule(model, name, base)
    return len(layers) + len(wrappers)


def dequantize_4bit_layers(model: nn.Module) -> int:
    """Replace every 4-bit layer of ``model`` (in place) by a plain ``nn.Linear`` holding its dequantized weight in
    the weight's original dtype: the numbers the 4-bit model computes with, in a form every tool loads. Returns the
    number of layers replaced."""
    names = [name for name, module in model.named_modules() if is_4bit(getattr(module, "weight", None))]
    for name in names:
        layer = model.get_submodule(name)
        set_submodule(model, name, _dense_copy(layer, dense_weight(layer.weight, weight_dtype(layer.weight))))
    return len(names)


def unmerge_adapters(model: nn.Module) -> int:
    """Restore the base weights and put the adapters back (in place). Returns the number of layers unmerged."""
    merged = {n: m for n, m in model.named_modules() if MERGED_ATTRIBUTE in m.__dict__}
    if not merged:
        raise AdapterError("unmerge_adapters: the model has no merged mmft adapters")
    for name, base in merged.items():
        layer: AdaptedLinear | AdaptedParameters = base.__dict__.pop(MERGED_ATTRIBUTE)
        if isinstance(layer, AdaptedParameters):
            _unmerge_parameters(model, name, base, layer)
            continue
        layer.to(base.weight.device)
        if is_4bit(layer.base_layer.weight):
            set_submodule(model, name, layer)
            continue
        with torch.no_grad():
            weight = base.weight.to(layer.delta_weight().dtype)
            if layer.use_dora:
                scale, zero_rows, kept = layer._merge_state
                weight = weight / torch.where(scale == 0, 1.0, scale)[:, None]
            weight = weight - layer.delta_weight()
            if layer.use_dora:
                weight[zero_rows] = kept.to(weight.dtype)
                del layer._merge_state
            base.weight.copy_(weight.to(base.weight.dtype))
        set_submodule(model, name, layer)
    return len(merged)
