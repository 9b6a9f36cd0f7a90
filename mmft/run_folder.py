"""One folder per run: every output path of a run derives from ``trainer.default_root_dir``.

The CLI fills what a config leaves unset, before anything is built: the run folder itself (named after the recipe
and the adapter method, so a LoRA and a DoRA run of one recipe never share one), the loggers (CSV in
``<run>/csv``, W&B in ``<run>/wandb`` named after the run) and ``ModelCheckpoint``'s ``dirpath``
(``<run>/checkpoints``). mmft's own callbacks (PeftExport, AnswerWriter, WeightUpdates) default to the run folder
themselves. A value set in a config always wins. While a run writes to its folder it holds the folder's lock
(:class:`RunFolderLock`), so that a second run started on the same folder stops at once instead of writing over the
first one's files.
"""

from __future__ import annotations

import atexit
import os
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from mmft.checkpoint_io import pid_alive
from mmft.errors import InputError

RUNS = Path("runs")
CHECKPOINTS = "checkpoints"
CHECKPOINT_CLASSES = {"lightning.pytorch.callbacks.ModelCheckpoint", "pytorch_lightning.callbacks.ModelCheckpoint"}


def run_name(config_files: Sequence[str | Path], method: str | None) -> str:
    """``<recipe>_<method>``: the first config's path below its ``configs`` folder, ``/`` read as ``_``, then the
    adapter method unless the name already ends with it (``configs/tiny/llava.yaml`` + DoRA and
    ``configs/tiny/llava_dora.yaml`` both give ``tiny_llava_dora``)."""
    recipe = "run"
    if config_files:
        path = Path(str(config_files[0])).with_suffix("")
        parts = path.parts
        recipe = "_".join(parts[len(parts) - parts[::-1].index("configs"):]) if "configs" in parts else path.name
    return recipe if not method or recipe.endswith(f"_{method}") else f"{recipe}_{method}"


def fill_run_paths(trainer: Any, config_files: Sequence[str | Path], method: str | None) -> Path:
    """Fill the unset output paths of a parsed ``trainer`` config section (a jsonargparse Namespace) in place and
    return the run folder."""
    if trainer.get("default_root_dir") is None:
        trainer.default_root_dir = str(RUNS / run_name(config_files, method))
    root = Path(trainer.default_root_dir)
    if trainer.get("logger") in (None, True):  # Lightning's "default logger"
        trainer.logger = default_loggers(root)
    for callback in trainer.get("callbacks") or []:
        init_args = _init_args(callback)
        if init_args is not None and callback.class_path in CHECKPOINT_CLASSES and init_args.get("dirpath") is None:
            init_args.dirpath = str(root / CHECKPOINTS)
    return root


def default_loggers(root: Path) -> list[Namespace]:
    """CSV (``<root>/csv/version_N``) and W&B (``<root>/wandb``, offline unless set up), as config entries."""
    return [
        Namespace(class_path="lightning.pytorch.loggers.CSVLogger",
                  init_args=Namespace(save_dir=str(root), name="csv")),
        Namespace(class_path="lightning.pytorch.loggers.WandbLogger",
                  init_args=Namespace(save_dir=str(root), project="mmft", name=root.name)),
    ]


def _init_args(entry: Any) -> Any:
    """The ``init_args`` of a ``{class_path, init_args}`` entry, or None for anything else (``true``, an object)."""
    if entry is None or not hasattr(entry, "get") or entry.get("class_path") is None:
        return None
    return entry.get("init_args")


LOCK_NAME = ".mmft.lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


class RunFolderLocked(InputError, RuntimeError):
    """Another live mmft run writes to this run folder."""


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks since boot, from /proc), or None where unknown, so that a
    lock whose pid was reused by another process is known stale."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (not a later one given the same pid)."""
    return pid_alive(pid) and (started is None or _process_start(pid) in (None, started))


def _holder_line() -> str:
    return f"{os.getpid()} {_process_start(os.getpid()) or '-'} {socket.gethostname()}\n"


class RunFolderLock:
    """``<run>/.mmft.lock`` held while a run writes to its folder, so that two runs never write over each other.

    The file names the holder (pid, process start time, host). A lock whose process has ended on this host (a
    killed run) is stale and taken over with a warning; one held by a live process, or by another host, is a
    :class:`RunFolderLocked` error naming the folder and the holder. Only the main process of a run (global rank
    0) takes it; the lock is released when the run ends (at exit, whatever the outcome).
    """

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = _holder_line()
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale(mine)
                continue
            with os.fdopen(descriptor, "w") as file:
                file.write(mine)
            self.held = True
            atexit.register(self.release)
            return
        raise RunFolderLocked(f"{self.path.parent}: could not take the run folder's lock {self.path}")

    def _clear_if_stale(self, mine: str) -> None:
        try:
            holder = self.path.read_text()
        except FileNotFoundError:
            return
        fields = holder.split()
        if holder == mine:  # this process already holds it (a second run in one Python process)
            self.path.unlink(missing_ok=True)
            return
        if len(fields) == 3 and fields[0].isdigit() and fields[2] == socket.gethostname():
            pid, started = int(fields[0]), None if fields[1] == "-" else fields[1]
            if _alive(pid, started):
                raise RunFolderLocked(
                    f"run folder {self.path.parent} is in use by another mmft run (process {pid}): wait for it to "
                    "end, or give this run another folder, --trainer.default_root_dir DIR"
                )
            warnings.warn(f"{self.path}: taking over the lock of run process {pid}, which has ended", stacklevel=3)
            self.path.unlink(missing_ok=True)
            return
        raise RunFolderLocked(
            f"run folder {self.path.parent} is locked by {holder.strip()!r} ({self.path}): if no run writes there any "
            "more (another machine's, say), delete that file; or give this run another folder, "
            "--trainer.default_root_dir DIR"
        )

    def release(self) -> None:
        if self.held:
            try:
                if self.path.read_text() == _holder_line():
                    self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False


def is_main_process() -> bool:
    """Whether this process is a run's global rank 0, judged from the launcher's environment before any strategy
    exists (Lightning's DDP subprocesses, torchrun and SLURM set these)."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)
