"""One folder per run: every output path of a run derives from ``trainer.default_root_dir``.

The CLI fills what a config leaves unset, before anything is built: the run folder itself (named after the recipe
and the adapter method, so a LoRA and a DoRA run of one recipe never share one), the loggers (CSV in
``<run>/csv``, W&B in ``<run>/wandb`` named after the run) and ``ModelCheckpoint``'s ``dirpath``
(``<run>/checkpoints``). mmft's own callbacks (PeftExport, AnswerWriter, WeightUpdates) default to the run folder
themselves. A value set in a config always wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

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
