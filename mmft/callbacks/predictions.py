"""Write ``mmft predict`` answers as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class AnswerWriter(BasePredictionWriter):
    """One ``{"id", "task", "answer"}`` JSON object per line, written as batches finish (nothing piles up in memory).

    ``path`` defaults to ``<trainer.default_root_dir>/predictions.jsonl`` (the run folder); with several processes each rank writes
    ``predictions.rank<r>.jsonl`` next to it.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._file: TextIO | None = None
        self.written: Path | None = None

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.written = path
        self._file = path.open("w", encoding="utf-8")

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        for record in prediction:
            self._file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._file.close()
        self._file = None
        rank_zero_info(f"predictions written to {self.written}")
