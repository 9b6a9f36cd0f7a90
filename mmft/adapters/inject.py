"""apply_adapters: find the targeted layers of any nn.Module, swap in AdaptedLinear, freeze the rest, report."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from mmft.errors import InputError

from .base_weight import is_4bit, parameter_count
from .config import AdapterConfig, TargetSpec
from .layers import AdaptedLinear, VeraProjections

VERA_ATTRIBUTE = "mmft_vera"
CONFIG_ATTRIBUTE = "mmft_adapter_config"


class AdapterError(InputError, ValueError):
    """Adapters cannot be applied or loaded as asked; the message says which module, key or file."""


@dataclass
class AdapterReport:
    """What `apply_adapters` did: the figures papers quote (trainable share of all parameters)."""

    method: str
    adapted: list[str] = field(default_factory=list)
    magnitude_only: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def __str__(self) -> str:
        lines = [
            f"mmft adapters: {self.method}, {len(self.adapted)} layers with a direction update, "
            f"{len(self.magnitude_only)} magnitude-only, {len(self.modules_to_save)} fully trained modules",
            f"trainable params: {self.trainable_params:,} / {self.total_params:,} ({self.trainable_percent:.4f}%)",
        ]
        return "\n".join(lines)


def module_matches(name: str, spec: TargetSpec) -> bool:
    """PEFT's rule: a string is a regex that must match the whole name; a list matches exactly or as a suffix."""
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == target or name.endswith("." + target) for target in spec)


def pattern_value(name: str, patterns: dict, default):
    """The value of the first ``rank_pattern`` / ``alpha_pattern`` key matching ``name`` as ``(.*\\.)?(key)$``."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _layer_index(name: str, layers_pattern: str | list[str] | None) -> int | None:
    """The first numbered segment after the module list's name (PEFT's rule: the first, not a nested expert index)."""
    if not layers_pattern:
        match = re.match(r"(?:^|.*?\.)[^.]+\.(\d+)\.", name)
        return int(match.group(1)) if match else None
    for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
        match = re.match(rf"(?:^|.*?\.){pattern}\.(\d+)\.", name)
        if match:
            return int(match.group(1))
    return None


def _in_chosen_layers(name: str, config: AdapterConfig) -> bool:
    if config.layers_to_transform is None:
        return True
    index = _layer_index(name, config.layers_pattern)
    return index is not None and index in config.layers_to_transform


def _unmatched_error(key: str, spec: TargetSpec, names: Iterable[str]) -> AdapterError:
    names = list(names)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n})
    probe = spec if isinstance(spec, str) else " ".join(spec)
    probe_leaf = re.sub(r"[^A-Za-z0-9_.]", " ", probe).split()
    similar = set()
    for word in probe_leaf or [probe]:
        similar.update(difflib.get_close_matches(word.rsplit(".", 1)[-1], leaves, n=5, cutoff=0.5))
        similar.update(difflib.get_close_matches(word, names, n=3, cutoff=0.5))
    hint = f" Similar module names: {', '.join(sorted(similar))}." if similar else ""
    return AdapterError(
        f"AdapterConfig.{key}={spec!r} matches no module of the model.{hint} "
        f"Some module names: {', '.join(names[:8])}"
    )


def find_adapted_modules(model: nn.Module) -> dict[str, AdaptedLinear]:
    """The AdaptedLinear layers of ``model`` by module name (empty when merged or never adapted)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def adapter_config_of(model: nn.Module) -> AdapterConfig:
    """The AdapterConfig that `apply_adapters` used on ``model``."""
    config = getattr(model, CONFIG_ATTRIBUTE, None)
    if config is None:
        raise AdapterError("this model has no mmft adapters: call apply_adapters (or load_adapters) first")
    return config


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _select(model: nn.Module, config: AdapterConfig) -> tuple[list[str], list[str]]:
    """Names of the modules that get a direction update, and of those that get a magnitude only."""
    names = [n for n, _ in model.named_modules() if n]
    magnitude_only = [n for n in names if module_matches(n, config.magnitude_only_modules)]
    if config.magnitude_only_modules is not None and not magnitude_only:
        raise _unmatched_error("magnitude_only_modules", config.magnitude_only_modules, names)
    chosen = [n for n in names if module_matches(n, config.target_modules) and n not in magnitude_only]
    if config.target_modules is not None and not chosen and not magnitude_only:
        raise _unmatched_error("target_modules", config.target_modules, names)
    if config.layers_to_transform is not None:
        chosen = [n for n in chosen if _in_chosen_layers(n, config)]
        magnitude_only = [n for n in magnitude_only if _in_chosen_layers(n, config)]
        if not chosen and not magnitude_only:
            raise AdapterError(
                f"AdapterConfig.layers_to_transform={config.layers_to_transform} (layers_pattern="
                f"{config.layers_pattern!r}) leaves no matched module: no layer index found in those module names"
            )
    for name in chosen + magnitude_only:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise AdapterError(
                f"module {name!r} ({type(module).__name__}) matches the adapter targets, but mmft adapters support "
                "nn.Linear layers only: narrow AdapterConfig.target_modules to the Linear layers you mean"
            )
    return chosen, magnitude_only


def _build_vera(model: nn.Module, config: AdapterConfig, names: list[str]) -> VeraProjections:
    linears = [model.get_submodule(n) for n in names]
    max_in = max(m.in_features for m in linears)
    max_out = max(m.out_features for m in linears)
    vera = VeraProjections(config.r, max_in, max_out, config.vera_seed).to(linears[0].weight.device)
    model.add_module(VERA_ATTRIBUTE, vera)
    return vera


def apply_adapters(model: nn.Module, config: AdapterConfig) -> AdapterReport:
    """Replace the targeted ``nn.Linear`` layers of ``model`` (in place) and freeze everything else.

    Trainable afterwards: the adapter parameters, the ``modules_to_save`` and the biases chosen by ``config.bias``.
    """
    if find_adapted_modules(model):
        raise AdapterError(
            "this model already has mmft adapters; apply_adapters works on a model without them "
            "(use load_adapters to load weights into an adapted model)"
        )
    chosen, magnitude_only = _select(model, config)
    saved = _modules_to_save(model, config)  # checked before the model changes
    vera = _build_vera(model, config, chosen) if config.is_vera and chosen else None
    for param in model.parameters():
        param.requires_grad_(False)

    for name in chosen + magnitude_only:
        base = model.get_submodule(name)
        if is_4bit(base.weight):  # keep bitsandbytes' standard layout, the one mmft reads (see quantize_linear)
            base.support_avx512bf16_for_cpu = False
        rank = pattern_value(name, config.rank_pattern, config.r)
        alpha = pattern_value(name, config.alpha_pattern, config.alpha)
        layer = AdaptedLinear(
            base,
            method=config.method,
            r=rank,
            alpha=alpha,
            dropout=config.dropout,
            use_rslora=config.use_rslora,
            magnitude_only=name in magnitude_only,
            detach_norm=config.detach_norm,
            dora_recompute=config.dora_recompute,
            vera=vera,
            vera_d_initial=config.vera_d_initial,
        )
        set_submodule(model, name, layer)

    for name in saved:
        model.get_submodule(name).requires_grad_(True)
    _set_bias_trainable(model, config)
    setattr(model, CONFIG_ATTRIBUTE, config)
    for layer in find_adapted_modules(model).values():
        for pname, param in layer.named_parameters():
            if not pname.startswith("base_layer."):
                param.requires_grad_(True)

    return AdapterReport(
        method=config.method,
        adapted=chosen,
        magnitude_only=magnitude_only,
        modules_to_save=saved,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(parameter_count(p) for p in model.parameters()),
    )


def _modules_to_save(model: nn.Module, config: AdapterConfig) -> list[str]:
    if not config.modules_to_save:
        return []
    names = [n for n, _ in model.named_modules() if n]
    found = [n for n in names if module_matches(n, config.modules_to_save)]
    # a matched module's own submodules come along with it; report only the outermost
    outermost = [n for n in found if not any(n.startswith(other + ".") for other in found)]
    if not outermost:
        raise _unmatched_error("modules_to_save", config.modules_to_save, names)
    modules = dict(model.named_modules())
    for name in outermost:
        if isinstance(modules[name], (nn.ModuleList, nn.ModuleDict)):
            entries = ", ".join(f"{name.rpartition('.')[2]}.{key}" for key, _ in modules[name].named_children())
            raise AdapterError(
                f"AdapterConfig.modules_to_save: {name} is a container of modules, which PEFT cannot train as one "
                f"module: name its entries instead ({entries})"
            )
    return outermost


def _set_bias_trainable(model: nn.Module, config: AdapterConfig) -> None:
    if config.bias == "all":
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.requires_grad_(True)
    elif config.bias == "lora_only":
        for layer in find_adapted_modules(model).values():
            if layer.base_layer.bias is not None:
                layer.base_layer.bias.requires_grad_(True)
