"""apply_adapters: find the targeted layers and parameters of any nn.Module, swap in AdaptedLinear (and
AdaptedParameters for targeted parameters such as expert weights), freeze the rest, report."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from mmft.errors import InputError

from .base_weight import is_4bit, parameter_count
from .config import AdapterConfig, TargetSpec
from .expert_layers import AdaptedParameters
from .layers import AdaptedLinear, VeraProjections
from .methods import adapter_method

VERA_ATTRIBUTE = "mmft_vera"
CONFIG_ATTRIBUTE = "mmft_adapter_config"


class AdapterError(InputError, ValueError):
    """Adapters cannot be applied or loaded as asked; the message says which module, key or file."""


@dataclass
class AdapterReport:
    """What `apply_adapters` did: the figures papers quote (trainable share of all parameters)."""

    method: str
    adapted: list[str] = field(default_factory=list)
    adapted_parameters: list[str] = field(default_factory=list)
    magnitude_only: list[str] = field(default_factory=list)
    modules_to_save: list[str] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def __str__(self) -> str:
        if adapter_method(self.method).full_weights:
            return (f"mmft: full fine-tuning of {len(self.modules_to_save)} modules\n"
                    f"trainable params: {self.trainable_params:,} / {self.total_params:,} "
                    f"({self.trainable_percent:.4f}%)")
        lines = [
            f"mmft adapters: {self.method}, {len(self.adapted)} layers with a direction update, "
            f"{len(self.magnitude_only)} magnitude-only, {len(self.modules_to_save)} fully trained modules"
            + (f", {len(self.adapted_parameters)} adapted parameters" if self.adapted_parameters else ""),
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


def find_adapted_parameters(model: nn.Module) -> dict[str, AdaptedParameters]:
    """The AdaptedParameters wrappers of ``model`` by module name (empty when merged or never adapted)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdaptedParameters)}


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` holds unmerged mmft adapters (on Linear layers or on parameters)."""
    return bool(find_adapted_modules(model) or find_adapted_parameters(model))


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
            weights = [p for p, value in module.named_parameters(recurse=False) if value.dim() in (2, 3)]
            hint = (f"; its weights {weights} are adapted through AdapterConfig.target_parameters "
                    f"(for example [{name.rpartition('.')[2]}.{weights[0]}])" if weights else "")
            raise AdapterError(
                f"module {name!r} ({type(module).__name__}) matches the adapter targets, but mmft adapters support "
                f"nn.Linear layers only: narrow AdapterConfig.target_modules to the Linear layers you mean{hint}"
            )
    return chosen, magnitude_only


def _select_parameters(model: nn.Module, config: AdapterConfig, chosen: list[str]) -> dict[str, list[str]]:
    """``target_parameters`` as PEFT matches them: module name -> names of its matched parameters, in the module's
    own parameter order (the order PEFT nests its wrappers in, and so names their tensors)."""
    targets = config.target_parameters or []
    if not targets:
        return {}
    found: dict[str, list[str]] = {}
    keys = []
    for module_name, module in model.named_modules():
        for parameter_name, parameter in module.named_parameters(recurse=False):
            key = f"{module_name}.{parameter_name}" if module_name else parameter_name
            keys.append(key)
            if not any(key == target or key.endswith("." + target) for target in targets):
                continue
            if not module_name or module_name in chosen:
                where = "the top-level module" if not module_name else f"{module_name}, which target_modules adapts"
                raise AdapterError(f"AdapterConfig.target_parameters matches {key}, a parameter of {where}: a "
                                   "targeted parameter must belong to a submodule that is not itself a target")
            if parameter.dim() not in (2, 3) or not parameter.is_floating_point():
                raise AdapterError(
                    f"AdapterConfig.target_parameters matches {key} ({tuple(parameter.shape)}, {parameter.dtype}): "
                    "only floating-point 2-D weights and 3-D expert weights [experts, out, in] can be adapted"
                )
            found.setdefault(module_name, []).append(parameter_name)
    if not found:
        raise _unmatched_error("target_parameters", targets, keys)
    return found


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
    if has_adapters(model):
        raise AdapterError(
            "this model already has mmft adapters; apply_adapters works on a model without them "
            "(use load_adapters to load weights into an adapted model)"
        )
    if config.method_spec.full_weights:
        return _train_fully(model, config)
    chosen, magnitude_only = _select(model, config) if _targets_modules(config) else ([], [])
    chosen_parameters = _select_parameters(model, config, chosen + magnitude_only)
    saved = saved_module_names(model, config)  # checked before the model changes
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
    for name, parameter_names in chosen_parameters.items():
        keys = {p: f"{name}.{p}" for p in parameter_names}
        ranks = {p: pattern_value(key, config.rank_pattern, config.r) for p, key in keys.items()}
        alphas = {p: pattern_value(key, config.alpha_pattern, config.alpha) for p, key in keys.items()}
        scalings = {p: config.method_spec.scaling(alphas[p], ranks[p], config.use_rslora) for p in parameter_names}
        set_submodule(model, name, AdaptedParameters(model.get_submodule(name), ranks, alphas, scalings))

    for name in saved:
        model.get_submodule(name).requires_grad_(True)
    _set_bias_trainable(model, config)
    setattr(model, CONFIG_ATTRIBUTE, config)
    for layer in find_adapted_modules(model).values():
        for pname, param in layer.named_parameters():
            if not pname.startswith("base_layer."):
                param.requires_grad_(True)
    for wrapper in find_adapted_parameters(model).values():
        wrapper.lora_A.requires_grad_(True)
        wrapper.lora_B.requires_grad_(True)

    return AdapterReport(
        method=config.method,
        adapted=chosen,
        adapted_parameters=[f"{m}.{p}" for m, names in chosen_parameters.items() for p in names],
        magnitude_only=magnitude_only,
        modules_to_save=saved,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(parameter_count(p) for p in model.parameters()),
    )


def _train_fully(model: nn.Module, config: AdapterConfig) -> AdapterReport:
    """Full fine-tuning: every parameter of the outermost modules ``target_modules`` matches (and of the
    ``modules_to_save``) trains; everything else is frozen."""
    chosen = list(fully_trained_modules(model, config))
    if not chosen:
        raise _unmatched_error("target_modules", config.target_modules, [n for n, _ in model.named_modules() if n])
    modules = dict(model.named_modules())
    quantized = [n for n in chosen if any(is_4bit(p) for p in modules[n].parameters())]
    if quantized:
        raise AdapterError(f"AdapterConfig.method='full' cannot train 4-bit weights ({quantized[0]}): full fine-tuning "
                           "needs a base in full or half precision (drop model.init_args.backbone's quantization)")
    saved = [n for n in saved_module_names(model, config) if n not in chosen]
    model.requires_grad_(False)
    for name in chosen + saved:
        modules[name].requires_grad_(True)
    setattr(model, CONFIG_ATTRIBUTE, config)
    return AdapterReport(
        method=config.method,
        modules_to_save=chosen + saved,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(parameter_count(p) for p in model.parameters()),
    )


def fully_trained_modules(model: nn.Module, config: AdapterConfig | None = None) -> dict[str, nn.Module]:
    """The outermost modules whose own weights ``method: full`` trains (``config``: by default the model's), by
    name; empty for the other methods."""
    config = config or getattr(model, CONFIG_ATTRIBUTE, None)
    if config is None or not config.method_spec.full_weights:
        return {}
    found = {n: m for n, m in model.named_modules() if n and module_matches(n, config.target_modules)}
    return {n: m for n, m in found.items() if not any(n.startswith(other + ".") for other in found)}


def _targets_modules(config: AdapterConfig) -> bool:
    """False for a config that adapts parameters only (``target_parameters`` with no module targets)."""
    return config.target_modules not in (None, []) or config.magnitude_only_modules is not None


def saved_module_names(model: nn.Module, config: AdapterConfig) -> list[str]:
    """The modules ``config.modules_to_save`` trains fully: the outermost ones matched (exactly or as a
    ``.``-separated suffix, as PEFT matches them)."""
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
