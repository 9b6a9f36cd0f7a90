"""Training speed and peak memory, logged the same way for every run so LoRA, DoRA and friends compare directly."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from mmft.models.packing import PACKED_TOKENS

GIB = 2**30


def peak_memory_gib(device: torch.device) -> tuple[str, float]:
    """(metric name, GiB): CUDA ``max_memory_allocated`` on a GPU, else the process's peak resident set size.

    The CPU figure is the peak RSS of the whole process since it started (model loading included), as the OS
    reports it; the CUDA figure covers tensors allocated since the last reset (the start of training).
    """
    if device.type == "cuda":
        return "perf/peak_cuda_allocated_gib", torch.cuda.max_memory_allocated(device) / GIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_bytes = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes
    return "perf/peak_cpu_rss_gib", peak_bytes / GIB


def batch_counts(batch: dict[str, Any]) -> tuple[int, int]:
    """A training batch's examples and tokens: the attended positions (image tokens included), or for packed rows
    (which have no attention mask) their examples' tokens, row padding left out."""
    samples = len(batch["ids"]) if "ids" in batch else int(batch["input_ids"].shape[0])
    if "attention_mask" in batch:
        return samples, int(batch["attention_mask"].sum())
    return samples, int(batch[PACKED_TOKENS])


class Throughput(Callback):
    """Logs training samples/s and tokens/s (time spent in the training step: forward, backward, optimizer; not data
    loading) and peak memory (see :func:`peak_memory_gib`), per device.

    Metrics: ``perf/samples_per_s``, ``perf/tokens_per_s`` (over the last ``window`` steps) and the peak memory; at
    the end of training a summary over all steps but the first ``skip_first`` (warm-up) is logged as
    ``perf/train_*`` and printed. Batches are counted by :func:`batch_counts`.
    """

    def __init__(self, window: int = 20, skip_first: int = 2) -> None:
        self.window = window
        self.skip_first = skip_first
        self._start = 0.0
        self._recent: list[tuple[float, int, int]] = []
        self._total = [0.0, 0, 0]
        self._steps = 0

    @staticmethod
    def _sync(pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self._recent, self._total, self._steps = [], [0.0, 0, 0], 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if batch is None:
            return
        self._sync(pl_module)
        seconds = time.perf_counter() - self._start
        samples, tokens = batch_counts(batch)
        self._steps += 1
        self._recent = (self._recent + [(seconds, samples, tokens)])[-self.window :]
        if self._steps > self.skip_first:
            self._total = [self._total[0] + seconds, self._total[1] + samples, self._total[2] + tokens]
        elapsed = sum(r[0] for r in self._recent)
        name, peak = peak_memory_gib(pl_module.device)
        pl_module.log_dict(  # Lightning passes them on every log_every_n_steps
            {
                "perf/samples_per_s": sum(r[1] for r in self._recent) / elapsed,
                "perf/tokens_per_s": sum(r[2] for r in self._recent) / elapsed,
                name: peak,
            },
            on_step=True,
            on_epoch=False,
            batch_size=samples,
        )

    def summary(self, pl_module: LightningModule) -> dict[str, float]:
        """Whole-run figures (warm-up steps excluded)."""
        seconds, samples, tokens = self._total
        name, peak = peak_memory_gib(pl_module.device)
        out = {name.replace("perf/", "perf/train_"): peak}
        if seconds > 0:
            out.update({"perf/train_samples_per_s": samples / seconds, "perf/train_tokens_per_s": tokens / seconds})
        return out

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        summary = self.summary(pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(summary, step=trainer.global_step)
        rank_zero_info("throughput: " + ", ".join(f"{k.removeprefix('perf/')}={v:.4g}" for k, v in summary.items()))
