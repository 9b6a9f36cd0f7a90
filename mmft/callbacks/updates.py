"""Track how far the adapted weights move from the pre-trained ones in magnitude and direction during training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info

from mmft.analysis import direction_magnitude_trend, weight_updates
from mmft.analysis.updates import full_weight_updates, pretrained_snapshot
from mmft.files import write_json_atomic


class WeightUpdates(Callback):
    """The DoRA paper's section 3 analysis, run as training goes (see :mod:`mmft.analysis.updates`).

    At the end of every training epoch, and every ``every_n_train_steps`` steps when set, it measures delta_M and
    delta_D of each adapted module (under ``method: full``, each Linear layer of the fully trained modules, against a
    CPU copy of its weight taken when fit starts) matching ``modules`` (PEFT's target rules; default: every adapted
    module) and logs their means as ``updates/delta_magnitude`` and ``updates/delta_direction``, with the slope and
    correlation of delta_M on delta_D over every point so far (``updates/slope``, ``updates/correlation``: positive
    is LoRA's pattern, negative full fine-tuning's and DoRA's). At the end of fit it writes every point, the overall
    trend and each module's trend over time to ``path`` (default ``<trainer.default_root_dir>/weight_updates.json``,
    the run folder). The points are kept in checkpoints, so a run resumed with ``--ckpt_path`` writes the whole
    record.
    """

    def __init__(self, modules: str | list[str] | None = None, every_n_train_steps: int | None = None,
                 path: str | None = None) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"WeightUpdates: every_n_train_steps must be >= 1, got {every_n_train_steps}")
        self.modules = modules
        self.every_n_train_steps = every_n_train_steps
        self.path = path
        self.points: list[dict[str, Any]] = []
        self.pretrained: dict[str, Any] = {}  # method full: the Linear weights before training

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.points = []  # before a checkpoint's state is restored: a resumed run continues its record
        if isinstance(getattr(trainer, "strategy", None), ModelParallelStrategy):
            raise ValueError("WeightUpdates (trainer.callbacks) reads whole weights on rank 0, which a model sharded "
                             "by FSDP does not hold: remove it from trainer.callbacks, or train with strategy ddp")
        try:  # a typo in ``modules`` fails now, not after the first epoch
            self.pretrained = pretrained_snapshot(pl_module, self.modules)  # W0 before a checkpoint's weights
        except ValueError as error:
            raise ValueError(f"WeightUpdates (trainer.callbacks) init_args.modules={self.modules!r}: {error}") from None

    def state_dict(self) -> dict[str, Any]:
        return {"points": self.points}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.points = list(state_dict["points"])

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step % self.every_n_train_steps == 0 and self._last_step() != step:
            self._measure(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._last_step() != trainer.global_step:
            self._measure(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not self.points:
            return
        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "weight_updates.json"
        write_json_atomic(path, self.summary(pl_module))
        rank_zero_info(f"magnitude/direction updates written to {path}")

    def summary(self, pl_module: LightningModule) -> dict[str, Any]:
        """Every point, the trend over all of them and each module's trend over time."""
        by_module: dict[str, list[tuple[float, float]]] = {}
        for p in self.points:
            by_module.setdefault(p["module"], []).append((p["delta_direction"], p["delta_magnitude"]))
        slope, correlation = direction_magnitude_trend(
            (p["delta_direction"], p["delta_magnitude"]) for p in self.points)
        config = getattr(pl_module, "adapter_config", None)
        return {
            "method": getattr(config, "method", None),
            "trend": {"slope": slope, "correlation": correlation},
            "module_trends": {
                name: dict(zip(("slope", "correlation"), direction_magnitude_trend(points)))
                for name, points in by_module.items()
            },
            "points": self.points,
        }

    def _last_step(self) -> int | None:
        return self.points[-1]["step"] if self.points else None

    def _measure(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:  # every rank holds the same weights; rank 0 logs and saves the record
            return
        if self.pretrained:
            updates = full_weight_updates(pl_module, self.pretrained)
        else:
            updates = weight_updates(pl_module, self.modules)
        step, epoch = trainer.global_step, trainer.current_epoch
        self.points += [{"step": step, "epoch": epoch, "module": u.module, "delta_magnitude": u.delta_magnitude,
                         "delta_direction": u.delta_direction} for u in updates]
        slope, correlation = direction_magnitude_trend(
            (p["delta_direction"], p["delta_magnitude"]) for p in self.points)
        metrics = {
            "updates/delta_magnitude": sum(u.delta_magnitude for u in updates) / len(updates),
            "updates/delta_direction": sum(u.delta_direction for u in updates) / len(updates),
            "updates/slope": slope,
            "updates/correlation": correlation,
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
