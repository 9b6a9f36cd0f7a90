"""Write the spectrum of every adapted layer's update at the end of training (see :mod:`mmft.analysis.spectrum`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info

from mmft.analysis import update_spectra
from mmft.analysis.spectrum import full_update_spectra
from mmft.analysis.updates import pretrained_snapshot
from mmft.files import write_json_atomic


class UpdateSpectra(Callback):
    """At the end of fit, the singular values of ``W' - W0`` of each adapted module matching ``modules`` (default:
    all; under ``method: full``, each Linear layer of the fully trained modules, against a CPU copy of its weight taken
    when fit starts) and the rank holding 90% of its energy, written to ``path`` (default
    ``<trainer.default_root_dir>/update_spectrum.json``, the run folder) with the run's method and the median and
    largest rank; the ``keep`` largest singular values of each module are stored (all of them with ``keep: null``).
    """

    def __init__(self, modules: str | list[str] | None = None, path: str | None = None, keep: int | None = 64) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"UpdateSpectra: keep must be >= 1 or null, got {keep}")
        self.modules = modules
        self.path = path
        self.keep = keep
        self.pretrained: dict[str, Any] = {}  # method full: the Linear weights before training

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(getattr(trainer, "strategy", None), ModelParallelStrategy):
            raise ValueError("UpdateSpectra (trainer.callbacks) reads whole weights on rank 0, which a model sharded "
                             "by FSDP does not hold: remove it from trainer.callbacks, or train with strategy ddp")
        try:  # a typo in ``modules`` fails now, not after training
            self.pretrained = pretrained_snapshot(pl_module, self.modules)  # W0 before a checkpoint's weights
        except ValueError as error:
            raise ValueError(f"UpdateSpectra (trainer.callbacks) init_args.modules={self.modules!r}: {error}") from None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "update_spectrum.json"
        write_json_atomic(path, self.summary(pl_module))
        rank_zero_info(f"update spectra written to {path}")

    def summary(self, pl_module: LightningModule) -> dict[str, Any]:
        if self.pretrained:
            spectra = full_update_spectra(pl_module, self.pretrained)
        else:
            spectra = update_spectra(pl_module, self.modules)
        ranks = sorted(s.rank_90 for s in spectra)
        config = getattr(pl_module, "adapter_config", None)
        return {
            "method": getattr(config, "method", None),
            "rank": None if self.pretrained else getattr(config, "r", None),  # full fine-tuning has no rank
            "rank_90_median": ranks[len(ranks) // 2],
            "rank_90_max": ranks[-1],
            "modules": {s.module: {"rank_90": s.rank_90, "frobenius": s.frobenius,
                                   "singular_values": s.singular_values[: self.keep]} for s in spectra},
        }
