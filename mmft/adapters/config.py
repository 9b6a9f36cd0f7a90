"""AdapterConfig: which adapter, where, and how big. A plain dataclass so LightningCLI/YAML can build it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from mmft.errors import InputError

from .methods import METHODS, AdapterMethod, adapter_method

Method = Literal[tuple(METHODS)]  # the names in mmft.adapters.methods.METHODS
BiasMode = Literal["none", "all", "lora_only"]
TargetSpec = str | list[str] | None


class AdapterConfigError(InputError, ValueError):
    """An AdapterConfig field has a value mmft cannot use; the message names the field."""


@dataclass
class AdapterConfig:
    """Adapter settings, named after their PEFT counterparts where one exists.

    Args:
        method: ``lora``, ``dora`` (weight-decomposed LoRA), ``vera`` (shared frozen random projections with trainable
            scaling vectors), ``dvora`` (DoRA whose direction update is a VeRA update) or ``full`` (full fine-tuning:
            every weight of the ``target_modules``, which may be any modules, such as whole decoder layers; ``r``,
            ``alpha``, ``dropout`` and the patterns do not apply).
        r: rank of the update (VeRA: rank of the shared projections).
        alpha: LoRA scaling numerator: ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``). Unused by
            VeRA, whose scaling is carried by its trainable vectors.
        dropout: dropout on the adapter input during training.
        target_modules: modules that get a direction update: a regex string (must match the full module name) or a
            list of names (a module matches a name exactly or ends with ``"." + name``), as in PEFT.
        target_parameters: LoRA only: parameters that are not a Linear layer's weight, such as the expert weights of
            a mixture-of-experts model (``mlp.experts.gate_up_proj``): a list of names, each matching a parameter's
            full name exactly or as a suffix after a ``.``, as PEFT's ``target_parameters``. Each expert gets its own
            pair of rank-``r`` factors. Takes no dropout (the update cannot be applied to a dropped-out input).
        magnitude_only_modules: DoRA/DVoRA only: modules that get only a trainable magnitude vector (the DoRA paper's
            "fewer parameters" granularity). Same matching rules; takes precedence over ``target_modules``.
        modules_to_save: modules trained fully (e.g. a projector), matched by exact name or ``"." + name`` suffix,
            as PEFT matches them.
        rank_pattern: per-module rank, keys matched as PEFT does (``(.*\\.)?(key)$``).
        alpha_pattern: per-module alpha, keys matched the same way.
        layers_to_transform: restrict list targets to these layer indices (by default the first numbered segment of
            the name is the index).
        layers_pattern: the module list whose index ``layers_to_transform`` reads, e.g. ``layers``.
        bias: ``none``, ``all`` (train every bias) or ``lora_only`` (train the biases of adapted layers).
        detach_norm: DoRA paper section 4.3: treat the weight norm as a constant in backprop (saves memory).
        dora_recompute: recompute the DoRA layer output in backward instead of saving it: less activation memory,
            one extra matmul per adapted layer.
        vera_d_initial: VeRA's initial ``lambda_d`` value (PEFT's ``d_initial``).
        vera_seed: the seed of VeRA's shared projections (PEFT's ``projection_prng_key``).
    """

    method: Method = "lora"
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: TargetSpec = None
    target_parameters: list[str] | None = None
    magnitude_only_modules: TargetSpec = None
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    layers_to_transform: list[int] | int | None = None
    layers_pattern: str | list[str] | None = None
    use_rslora: bool = False
    bias: BiasMode = "none"
    detach_norm: bool = True
    dora_recompute: bool = False
    vera_d_initial: float = 0.1
    vera_seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AdapterConfigError(f"AdapterConfig.method={self.method!r}: choose one of {', '.join(METHODS)}")
        method = self.method_spec
        if self.r < 1:
            raise AdapterConfigError(f"AdapterConfig.r={self.r}: the rank must be a positive integer")
        if not 0 < self.alpha < math.inf:
            raise AdapterConfigError(
                f"AdapterConfig.alpha={self.alpha}: must be a positive finite number (the update is scaled by "
                "alpha / r; a negative alpha flips it, zero switches it off, infinity makes every loss NaN)"
            )
        for key, alpha in self.alpha_pattern.items():
            if not 0 < alpha < math.inf:
                raise AdapterConfigError(f"AdapterConfig.alpha_pattern[{key!r}]={alpha}: alphas must be positive "
                                         "and finite")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterConfigError(f"AdapterConfig.dropout={self.dropout}: must be in [0, 1)")
        if self.bias not in ("none", "all", "lora_only"):
            raise AdapterConfigError(f"AdapterConfig.bias={self.bias!r}: choose none, all or lora_only")
        if self.target_modules is None and self.magnitude_only_modules is None and not self.target_parameters:
            raise AdapterConfigError("AdapterConfig.target_modules is required (a regex or a list of module names)")
        if self.target_parameters:
            self._check_target_parameters()
        if method.full_weights:
            self._check_full()
        if self.magnitude_only_modules is not None and not method.magnitude:
            with_magnitude = " or ".join(name for name, m in METHODS.items() if m.magnitude)
            raise AdapterConfigError(
                f"AdapterConfig.magnitude_only_modules needs method {with_magnitude} (got {self.method!r}): "
                "only DoRA has a magnitude to train on its own"
            )
        if method.shared_projections and (self.rank_pattern or self.alpha_pattern):
            raise AdapterConfigError(
                "AdapterConfig.rank_pattern / alpha_pattern are not available with VeRA: all layers share one "
                "pair of projections of rank r"
            )
        for key, rank in self.rank_pattern.items():
            if rank < 1:
                raise AdapterConfigError(f"AdapterConfig.rank_pattern[{key!r}]={rank}: ranks must be positive")
        if self.layers_to_transform is not None and isinstance(self.target_modules, str):
            raise AdapterConfigError(
                "AdapterConfig.layers_to_transform applies to a list of target_modules names (as in PEFT); with a "
                "regex target, write the layer indices into the regex"
            )
        if isinstance(self.layers_to_transform, int):
            self.layers_to_transform = [self.layers_to_transform]

    def _check_full(self) -> None:
        unused = {"dropout": 0.0, "rank_pattern": {}, "alpha_pattern": {}, "bias": "none", "use_rslora": False}
        for key, neutral in unused.items():
            if getattr(self, key) != neutral:
                raise AdapterConfigError(f"AdapterConfig.{key}={getattr(self, key)!r} with method 'full': full "
                                         "fine-tuning trains the weights themselves, so it has no " + key)

    def _check_target_parameters(self) -> None:
        if isinstance(self.target_parameters, str):
            raise AdapterConfigError(
                f"AdapterConfig.target_parameters={self.target_parameters!r}: give a list of parameter names "
                "(for example [mlp.experts.gate_up_proj, mlp.experts.down_proj]), as in PEFT"
            )
        if self.method != "lora":
            raise AdapterConfigError(
                f"AdapterConfig.target_parameters with method {self.method!r}: parameters other than Linear weights "
                "(mixture-of-experts expert weights) take LoRA only, as in PEFT, whose files have no other format "
                "for them; use method lora, or keep DoRA on target_modules and leave target_parameters out"
            )
        if self.dropout:
            raise AdapterConfigError(
                f"AdapterConfig.dropout={self.dropout} with target_parameters: the update of a parameter is added to "
                "the weight itself, so there is no adapter input to drop out; set dropout: 0.0"
            )

    @property
    def method_spec(self) -> AdapterMethod:
        """What the method does (:mod:`mmft.adapters.methods`)."""
        return adapter_method(self.method)

    @property
    def is_dora(self) -> bool:
        return self.method_spec.magnitude

    @property
    def is_vera(self) -> bool:
        return self.method_spec.shared_projections
