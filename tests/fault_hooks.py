"""Test-only callbacks that inject faults into a real ``mmft`` run (loaded by class_path in subprocess tests)."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import torch
from lightning.pytorch import Callback


class KillDuringSave(Callback):
    """SIGKILLs the process halfway through writing the ``occurrence``-th save of the checkpoint file ``name``: the
    first half of the file's bytes are on disk, then the process dies as ``kill -9`` or a power cut would leave it."""

    def __init__(self, name: str = "last.ckpt", occurrence: int = 2) -> None:
        self.name = name
        self.occurrence = occurrence
        self.count = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        real_save = torch.save

        def save(obj, file, *args, **kwargs):
            if Path(getattr(file, "name", "")).name.startswith(f"{self.name}.tmp-"):
                self.count += 1
                if self.count == self.occurrence:
                    buffer = io.BytesIO()
                    real_save(obj, buffer, *args, **kwargs)
                    file.write(buffer.getvalue()[: buffer.tell() // 2])
                    file.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, file, *args, **kwargs)

        torch.save = save
