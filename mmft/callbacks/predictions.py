"""Write ``mmft predict`` answers as JSON lines, never losing the previous file or the answers already made."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

PARTIAL_SUFFIX = ".partial"


class AnswerWriter(BasePredictionWriter):
    """One ``{"id", "task", "answer"}`` JSON object per line, written as batches finish (nothing piles up in memory).

    ``path`` defaults to ``<trainer.default_root_dir>/predictions.jsonl`` (the run folder); with several processes each rank writes
    ``predictions.rank<r>.jsonl`` next to it. Answers go to ``<path>.partial`` (flushed after every batch) and
    replace ``path`` only when prediction finishes: a run that fails midway leaves the previous ``path`` as it was and
    its own answers so far in ``<path>.partial``.
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
        self._file = self._partial(path).open("w", encoding="utf-8")

    @staticmethod
    def _partial(path: Path) -> Path:
        return path.with_name(path.name + PARTIAL_SUFFIX)

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
        self._file.flush()

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self._partial(self.written), self.written)
        rank_zero_info(f"predictions written to {self.written}")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        previous = "the previous file is unchanged" if self.written.exists() else "no previous file existed"
        rank_zero_warn(
            f"prediction failed ({type(exception).__name__}); the answers made so far are in "
            f"{self._partial(self.written)}, and {self.written} was not replaced ({previous})"
        )
