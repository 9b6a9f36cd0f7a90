"""Checkpoint files that are never half-written: Lightning's ``CheckpointIO`` extension point, done atomically.

Lightning's default writes through fsspec, whose local "transaction" stages the file in ``$TMPDIR`` and, when the
checkpoint folder is on another filesystem (a data disk, NFS), falls back to truncating the target and copying into
it: a ``kill -9`` or a full disk during that copy leaves ``last.ckpt`` empty or truncated, and the previous good
checkpoint is gone. :class:`AtomicCheckpointIO` writes ``<target>.tmp-<pid>`` beside the target, flushes and fsyncs
it, then renames it into place with ``os.replace`` (atomic within one filesystem): the target is always either the
previous checkpoint or the new one, whole.

:class:`~mmft.models.base.AdapterModule` installs it in its ``setup`` hook whenever the trainer still has Lightning's
default ``TorchCheckpointIO``, so it applies to the ``mmft`` CLI and to any Python ``Trainer`` alike; a user's own
``plugins=[...]`` checkpoint IO is left alone.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH

from mmft.errors import InputError

TEMP_MARK = ".tmp-"


class CheckpointFileError(InputError, RuntimeError):
    """A checkpoint could not be written or read; the message names the file and says why."""


def _is_local(path: _PATH) -> bool:
    return isinstance(get_filesystem(path), LocalFileSystem)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(target: Path) -> None:
    """Temp files left beside ``target`` by processes that were killed mid-save (``kill -9`` cannot clean up)."""
    for temp in target.parent.glob(f"{target.name}{TEMP_MARK}*"):
        pid = temp.name.rsplit(TEMP_MARK, 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            temp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class _WriteErrors:
    """A file's ``write`` that remembers the first OSError it raised (a full disk), which torch's zip writer would
    otherwise report only as "unexpected pos"."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.name = getattr(file, "name", "")  # what a file object says it writes
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temp file beside the target, fsync, ``os.replace``; remote (fsspec) paths as Lightning's.

    A failed save raises :class:`CheckpointFileError` naming the file and the cause, after removing its temp file;
    the previous checkpoint at the target is untouched. Loading refuses anything but a checkpoint of plain tensors
    and containers with a message that says so (torch's own advice, ``weights_only=False``, would run the file's
    pickled code).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f"{target.name}{TEMP_MARK}{os.getpid()}")
        recorder = None
        try:
            with temp.open("wb") as file:
                recorder = _WriteErrors(file)
                torch.save(checkpoint, recorder)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException as error:
            temp.unlink(missing_ok=True)
            if isinstance(error, Exception) and recorder is not None and recorder.error is not None:
                error = recorder.error  # torch's zip writer reports a failed write as "unexpected pos"
            if isinstance(error, Exception):
                raise CheckpointFileError(
                    f"saving the checkpoint {target} failed ({type(error).__name__}: {error}); the previous file "
                    "there, if any, is unchanged"
                ) from error
            raise
        _fsync_folder(target.parent)
        _remove_stale_temps(target)

    def load_checkpoint(
        self,
        path: _PATH,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only)
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {file}")
        try:
            checkpoint = torch.load(file, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            raise CheckpointFileError(
                f"{file} is not a checkpoint mmft can read: it holds pickled objects besides tensors, which are never "
                "loaded because unpickling can run code"
            ) from None
        except Exception as error:  # torch raises many kinds (RuntimeError, EOFError, KeyError, ...) on bad bytes
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointFileError(
                f"{file} is not a checkpoint mmft can read: it is empty, truncated or not a torch file ({detail})"
            ) from None
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointFileError(
                f"{file} is not a Lightning checkpoint (no 'state_dict'): pass a .ckpt file written by mmft fit"
            )
        return checkpoint


def install_atomic_checkpoint_io(strategy: Any) -> None:
    """Give ``strategy`` an :class:`AtomicCheckpointIO` if it still has Lightning's default checkpoint IO."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
