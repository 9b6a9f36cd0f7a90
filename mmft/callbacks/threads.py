"""Set the number of intra-op CPU threads for a run (from the config, so a recipe can say what suits it)."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class CPUThreads(Callback):
    """``torch.set_num_threads(num_threads)`` when the Trainer sets up.

    Tiny models gain nothing from intra-op parallelism (their matrices are too small) and lose a lot when their
    threads compete with other processes for the cores: the tiny configs run on one thread.
    """

    def __init__(self, num_threads: int = 1) -> None:
        if num_threads < 1:
            raise ValueError(f"CPUThreads num_threads={num_threads}: must be at least 1")
        self.num_threads = num_threads

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        torch.set_num_threads(self.num_threads)
