"""LoRA, DoRA, VeRA and DVoRA adapters for any PyTorch model, on a plain or a 4-bit (bitsandbytes) base: pure
PyTorch, no Lightning or transformers import.

    from mmft.adapters import AdapterConfig, apply_adapters
    report = apply_adapters(model, AdapterConfig(method="dora", r=8, alpha=16, target_modules=["q_proj", "v_proj"]))
"""

from .config import AdapterConfig, AdapterConfigError
from .expert_layers import AdaptedParameters
from .fingerprint import frozen_weights_hash
from .inject import (
    AdapterError,
    AdapterReport,
    adapter_config_of,
    apply_adapters,
    find_adapted_modules,
    find_adapted_parameters,
    fully_trained_modules,
    has_adapters,
)
from .layers import AdaptedLinear, dora_weight_norm
from .merge import merge_adapters, unmerge_adapters
from .peft_format import adapter_state_dict, load_adapters, peft_tensors, read_adapter_config, save_adapters
from .quantize import QuantizationConfig, QuantizationError, quantize_linear_layers

__all__ = [
    "AdaptedLinear",
    "AdaptedParameters",
    "AdapterConfig",
    "AdapterConfigError",
    "AdapterError",
    "AdapterReport",
    "QuantizationConfig",
    "QuantizationError",
    "adapter_config_of",
    "adapter_state_dict",
    "apply_adapters",
    "dora_weight_norm",
    "find_adapted_modules",
    "find_adapted_parameters",
    "fully_trained_modules",
    "has_adapters",
    "frozen_weights_hash",
    "load_adapters",
    "merge_adapters",
    "peft_tensors",
    "quantize_linear_layers",
    "read_adapter_config",
    "save_adapters",
    "unmerge_adapters",
]
