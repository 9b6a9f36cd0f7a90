"""Save and load adapters in the Hugging Face PEFT folder format (REFERENCE.md section 2).

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors``; tensor keys are
``base_model.model.<module path>.<name>``. mmft writes what PEFT needs to rebuild the same model and keeps its own
complete AdapterConfig beside it in ``mmft_adapter_config.json``, a file PEFT does not read. Two mmft features have no PEFT field and are written so that
PEFT still computes the same outputs: magnitude-only DoRA modules are saved as rank-1 DoRA modules whose update is zero;
DVoRA has no PEFT counterpart and is saved with ``peft_type`` ``"DVORA"``, which PEFT refuses instead of misreading.
Adapted parameters (``target_parameters``) take PEFT's names: PEFT nests one wrapper per parameter of a module, the
module's first parameter innermost, so the factors of its k-th of n parameters sit under ``base_layer.`` n-1-k times.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.tensor import DTensor

from .config import AdapterConfig
from .inject import (
    VERA_ATTRIBUTE,
    AdapterError,
    adapter_config_of,
    apply_adapters,
    find_adapted_modules,
    find_adapted_parameters,
    has_adapters,
    saved_module_names,
)
from .methods import method_of_peft_folder

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MMFT_CONFIG_FILE = "mmft_adapter_config.json"
PREFIX = "base_model.model."
VERA_KEYS = {"base_model.vera_A": "vera_A", "base_model.vera_B": "vera_B"}
# PEFT fields whose non-default value changes the math in a way mmft does not implement
UNSUPPORTED_PEFT_FIELDS = {
    "fan_in_fan_out": False,
    "lora_bias": False,
    "layer_replication": None,
    "trainable_token_indices": None,
    "use_qalora": False,
    "use_bdlora": None,
}


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter folder holds, under mmft's own module names (no PEFT prefix)."""
    config = adapter_config_of(model)
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    vera = getattr(model, VERA_ATTRIBUTE, None)
    if vera is not None:
        state.update({f"{VERA_ATTRIBUTE}.vera_A": vera.vera_A, f"{VERA_ATTRIBUTE}.vera_B": vera.vera_B})
    if config.bias != "none":  # a bias may be frozen again by the user: it still belongs to the adapter
        state.update({n: p for n, p in model.named_parameters() if n.endswith("bias") and _bias_saved(n, model, config)})
    return state


def _adapted_parameter_keys(model: nn.Module) -> list[str]:
    """The full names of the adapted parameters (``<module>.<parameter>``), sorted."""
    return sorted(f"{m}.{p}" for m, wrapper in find_adapted_parameters(model).items() for p in wrapper.parameter_names)


def _peft_parameter_names(model: nn.Module) -> dict[str, str]:
    """mmft name -> PEFT name (no prefix) of every factor of an adapted parameter."""
    names = {}
    for module_name, wrapper in find_adapted_parameters(model).items():
        count = len(wrapper.parameter_names)
        for index, parameter in enumerate(wrapper.parameter_names):
            nesting = "base_layer." * (count - 1 - index)
            for factor in ("lora_A", "lora_B"):
                names[f"{module_name}.{factor}.{parameter}"] = f"{module_name}.{nesting}{factor}.weight"
    return names


def _bias_saved(name: str, model: nn.Module, config: AdapterConfig) -> bool:
    if config.bias == "all":
        return True
    return any(name == f"{layer}.base_layer.bias" for layer in find_adapted_modules(model))


def _peft_config(model: nn.Module, config: AdapterConfig, base_model_name_or_path: str | None) -> dict:
    layers = find_adapted_modules(model)
    directed = sorted(n for n, m in layers.items() if not m.magnitude_only)
    magnitude_only = sorted(n for n, m in layers.items() if m.magnitude_only)
    rank_pattern = {re.escape(n): m.r for n, m in layers.items() if m.r != config.r and not m.magnitude_only}
    alpha_pattern = {re.escape(n): m.alpha for n, m in layers.items() if m.alpha != config.alpha}
    rank_pattern.update({re.escape(n): 1 for n in magnitude_only})
    for module_name, wrapper in find_adapted_parameters(model).items():
        for parameter in wrapper.parameter_names:
            key = re.escape(f"{module_name}.{parameter}")
            if wrapper.r[parameter] != config.r:
                rank_pattern[key] = wrapper.r[parameter]
            if wrapper.alpha[parameter] != config.alpha:
                alpha_pattern[key] = wrapper.alpha[parameter]
    common = {
        "base_model_name_or_path": base_model_name_or_path,
        "target_modules": directed + magnitude_only,
        "target_parameters": _adapted_parameter_keys(model) or None,
        # the exact module names: PEFT before 0.22 matched any name ending with an entry ("merger" took
        # "vit_merger" too), so a short name could wrap modules the file holds no weights for
        "modules_to_save": saved_module_names(model, config) or None,
        "bias": config.bias,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "task_type": None,
        "layers_to_transform": None,
        "layers_pattern": None,
    }
    method = config.method_spec
    if not method.shared_projections:
        return {
            **common,
            "peft_type": method.peft_type,
            "use_dora": method.magnitude,
            "r": config.r,
            "lora_alpha": config.alpha,
            "lora_dropout": config.dropout,
            "use_rslora": config.use_rslora,
            "rank_pattern": rank_pattern,
            "alpha_pattern": alpha_pattern,
            "init_lora_weights": True,
        }
    return {
        **common,
        "peft_type": method.peft_type,
        "r": config.r,
        "vera_dropout": config.dropout,
        "d_initial": config.vera_d_initial,
        "projection_prng_key": config.vera_seed,
        "save_projection": True,
        "init_weights": True,
    }


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU, whole: a parameter sharded by FSDP (a ``DTensor``) is gathered from every rank."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu").contiguous()


def peft_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``model``'s PEFT adapter file, under PEFT's names, whole and on the CPU. For a model sharded by
    FSDP this gathers every adapter tensor: every rank must call it (then one writes, with `save_adapters`)."""
    config = adapter_config_of(model)
    if config.method_spec.full_weights:
        raise AdapterError("save_adapters: method 'full' trains the weights themselves and has no PEFT adapter "
                           "folder; export the whole model instead (mmft export, a merged folder)")
    if not has_adapters(model):
        raise AdapterError("save_adapters: the adapters are merged; call unmerge_adapters before saving them")
    tensors = {}
    parameter_names = _peft_parameter_names(model)
    for name, tensor in adapter_state_dict(model).items():
        if name in parameter_names:
            tensors[PREFIX + parameter_names[name]] = tensor
        elif name.startswith(f"{VERA_ATTRIBUTE}."):
            tensors[f"base_model.{name.split('.', 1)[1]}"] = tensor
        else:
            tensors[PREFIX + name] = tensor
    for name, layer in find_adapted_modules(model).items():
        # PEFT has no magnitude-only modules: in a PEFT LoRA folder they are DoRA modules with a zero rank-1 update
        if layer.magnitude_only and config.method_spec.peft_type == "LORA":
            tensors[f"{PREFIX}{name}.lora_A.weight"] = torch.zeros(1, layer.in_features)
            tensors[f"{PREFIX}{name}.lora_B.weight"] = torch.zeros(layer.out_features, 1)
    return {k: _whole(v) for k, v in tensors.items()}


def save_adapters(model: nn.Module, folder: str | Path, base_model_name_or_path: str | None = None,
                  tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter of ``model`` as a PEFT folder that `peft.PeftModel.from_pretrained` and mmft both load.
    ``tensors``: `peft_tensors` already gathered (a sharded model); by default they are read from ``model``."""
    config = adapter_config_of(model)
    tensors = peft_tensors(model) if tensors is None else tensors
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    peft_config = _peft_config(model, config, base_model_name_or_path)
    (folder / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    layers = find_adapted_modules(model)
    exact = {  # the module names actually adapted, so the folder rebuilds the same layers on any copy of the model
        **asdict(config),
        "target_modules": sorted(n for n, m in layers.items() if not m.magnitude_only) or None,
        "target_parameters": _adapted_parameter_keys(model) or None,
        "magnitude_only_modules": sorted(n for n, m in layers.items() if m.magnitude_only) or None,
        "layers_to_transform": None,
    }
    (folder / MMFT_CONFIG_FILE).write_text(json.dumps(exact, indent=2, sort_keys=True) + "\n")
    return folder


def read_adapter_config(folder: str | Path) -> AdapterConfig:
    """The AdapterConfig of an mmft- or PEFT-written folder, with clear errors for settings mmft cannot honour."""
    mmft_path = Path(folder) / MMFT_CONFIG_FILE
    if mmft_path.is_file():
        try:
            return AdapterConfig(**json.loads(mmft_path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise AdapterError(f"{mmft_path}: not an mmft adapter config ({err})") from err
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise AdapterError(f"{path}: no adapter config (expected a PEFT folder with {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AdapterError(f"{path}: not valid JSON ({err})") from err
    peft_type = raw.get("peft_type")
    for key, neutral in UNSUPPORTED_PEFT_FIELDS.items():
        if raw.get(key, neutral) not in (neutral, None, False, [], {}):
            raise AdapterError(f"{path}: {key}={raw[key]!r} is not supported by mmft adapters")
    common = {
        "target_modules": raw.get("target_modules") or None,
        "target_parameters": raw.get("target_parameters") or None,
        "modules_to_save": raw.get("modules_to_save"),
        "layers_to_transform": raw.get("layers_to_transform"),
        "layers_pattern": raw.get("layers_pattern"),
        "bias": raw.get("bias", "none"),
        "r": raw["r"],
    }
    if common["target_modules"] is None and common["target_parameters"] is None:
        raise AdapterError(f"{path}: target_modules is missing (mmft needs the adapted module names)")
    if peft_type == "LORA":
        return AdapterConfig(
            method=method_of_peft_folder("LORA", bool(raw.get("use_dora"))).name,
            alpha=raw.get("lora_alpha", 8),
            dropout=raw.get("lora_dropout", 0.0),
            use_rslora=raw.get("use_rslora", False),
            rank_pattern=raw.get("rank_pattern") or {},
            alpha_pattern=raw.get("alpha_pattern") or {},
            **common,
        )
    if peft_type == "VERA":
        return AdapterConfig(
            method="vera",
            dropout=raw.get("vera_dropout", 0.0),
            vera_d_initial=raw.get("d_initial", 0.1),
            vera_seed=raw.get("projection_prng_key", 0),
            **common,
        )
    raise AdapterError(f"{path}: peft_type={peft_type!r} is not one mmft can load (LORA, VERA, or an mmft folder)")


def _normalise_key(key: str, parameter_names: dict[str, str]) -> str | None:
    """PEFT on-disk key -> mmft name (``parameter_names``: PEFT name -> mmft name of adapted parameters' factors);
    None for keys that carry no weight mmft needs."""
    if key.startswith(PREFIX) and key[len(PREFIX):] in parameter_names:
        return parameter_names[key[len(PREFIX):]]
    if key in VERA_KEYS:
        return f"{VERA_ATTRIBUTE}.{VERA_KEYS[key]}"
    if not key.startswith(PREFIX):
        return key
    name = key[len(PREFIX):]
    if ".original_module." in name:  # PEFT's frozen copy of a modules_to_save module
        return None
    return re.sub(r"\.modules_to_save(\.default)?\.", ".", name)


def load_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load an mmft- or PEFT-written adapter folder into ``model``, applying the adapters first if it has none.

    Every tensor of the file must find its place and every adapter tensor of the model must be in the file;
    anything else is an error naming the key, so a mismatched adapter never loads halfway.
    """
    folder = Path(folder)
    config = read_adapter_config(folder)
    if not has_adapters(model):
        apply_adapters(model, config)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterError(f"{weights_path}: missing adapter weights file")
    on_disk = load_file(str(weights_path))
    layers = find_adapted_modules(model)
    expected = adapter_state_dict(model)
    magnitude_only = {n for n, m in layers.items() if m.magnitude_only}
    parameter_names = {peft: mmft for mmft, peft in _peft_parameter_names(model).items()}
    loaded: set[str] = set()
    unexpected: list[str] = []
    for key, tensor in on_disk.items():
        name = _normalise_key(key, parameter_names)
        if name is None:
            continue
        module_name = name.rsplit(".", 2)[0]
        if module_name in magnitude_only and (".lora_A." in name or ".lora_B." in name):
            if tensor.count_nonzero():
                raise AdapterError(f"{weights_path}: {key} is non-zero but {module_name} is magnitude-only in mmft")
            continue
        target = expected.get(name)
        if target is None:
            unexpected.append(key)
            continue
        if tuple(target.shape) != tuple(tensor.shape):
            raise AdapterError(
                f"{weights_path}: {key} has shape {tuple(tensor.shape)} but the model's {name} has "
                f"{tuple(target.shape)}: this adapter was made for a model of another size or rank"
            )
        with torch.no_grad():
            target.copy_(tensor)
        loaded.add(name)
    missing = sorted(set(expected) - loaded - {f"{VERA_ATTRIBUTE}.vera_A", f"{VERA_ATTRIBUTE}.vera_B"})
    if unexpected or missing:
        raise AdapterError(
            f"{weights_path} does not match the model: "
            + (f"keys with no place in the model: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; "
               if unexpected else "")
            + (f"model tensors missing from the file: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
               if missing else "")
        )
    return model
