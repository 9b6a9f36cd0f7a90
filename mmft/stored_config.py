"""A checkpoint's stored run config, read as data.

``mmft test|predict|validate|fit --ckpt_path CKPT`` without ``--config`` rebuilds its run from the config stored in
the checkpoint. A checkpoint may come from anyone, so that config is checked before it is parsed:

- every ``class_path`` in it names one of mmft's own classes (``mmft.*``, ``data_modules.*``) or one of an explicit
  allow-list of Lightning callbacks, loggers and strategies and torch / bitsandbytes optimizers and schedulers;
  anything else (``LambdaCallback``, ``os.system``, ...) is refused, as is any other string that names an importable
  object, since jsonargparse imports such strings for callable arguments;
- the run folder it names must hold the checkpoint or lie under the working folder, and every output path it holds
  (checkpoint folder, logger folders, the paths of mmft's writing callbacks) must lie inside that run folder; those
  paths are moved with the run folder when ``--trainer.default_root_dir`` gives another one.

A run config the user writes (``--config FILE``) is the user's own code and is not restricted.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mmft.errors import InputError

OWN_PACKAGES = ("mmft", "data_modules")

_LIGHTNING_CLASSES = {
    "callbacks": ("ModelCheckpoint", "LearningRateMonitor", "EarlyStopping", "TQDMProgressBar", "RichProgressBar",
                  "ModelSummary", "RichModelSummary", "Timer", "DeviceStatsMonitor", "GradientAccumulationScheduler"),
    "loggers": ("CSVLogger", "WandbLogger", "TensorBoardLogger"),
    "strategies": ("DDPStrategy", "FSDPStrategy", "SingleDeviceStrategy"),
}
_TORCH_OPTIMIZERS = ("Adafactor", "Adadelta", "Adagrad", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSprop",
                     "SGD")
_TORCH_SCHEDULERS = ("StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR", "PolynomialLR",
                     "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "OneCycleLR", "ReduceLROnPlateau")
_BNB_OPTIMIZERS = ("AdamW8bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit", "Adam8bit", "PagedAdam8bit")

ALLOWED_CLASS_PATHS = frozenset(
    [f"{package}.{group}.{name}" for package in ("lightning.pytorch", "pytorch_lightning")
     for group, names in _LIGHTNING_CLASSES.items() for name in names]
    + [f"torch.optim.{name}" for name in _TORCH_OPTIMIZERS]
    + [f"torch.optim.lr_scheduler.{name}" for name in _TORCH_SCHEDULERS]
    + [f"bitsandbytes.optim.{name}" for name in _BNB_OPTIMIZERS]
)

# class name -> the init arguments that name where it writes (resolved against the run folder, kept inside it)
OUTPUT_PATH_ARGUMENTS = {
    "ModelCheckpoint": ("dirpath",),
    "CSVLogger": ("save_dir",),
    "TensorBoardLogger": ("save_dir", "log_dir"),
    "WandbLogger": ("save_dir", "dir"),
    "PeftExport": ("dirpath",),
    "AnswerWriter": ("path",),
    "WeightUpdates": ("path",),
    "UpdateSpectra": ("path",),
}
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
OWN_CONFIG = "pass the config yourself, --config FILE"
# settings that only the user may turn on, never a checkpoint
USER_ONLY_SETTINGS = ("trust_remote_code",)
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class StoredConfigError(InputError, ValueError):
    """A checkpoint's stored run config asks for something only the user's own ``--config`` may ask for."""


def checked_stored_config(config: dict[str, Any], ckpt_path: str | Path, root_override: str | None) -> dict[str, Any]:
    """``config`` (a checkpoint's run config as plain data) checked as data, its output paths moved into the run
    folder: ``root_override`` (the user's ``--trainer.default_root_dir``) when given, else the stored one."""
    where = f"--ckpt_path {ckpt_path}"
    check_as_data(config, where)
    trainer = config.get("trainer") or {}
    if not isinstance(trainer, dict):
        raise StoredConfigError(f"{where}: its run config's trainer section is not a mapping of settings")
    stored_root = trainer.get("default_root_dir")
    if stored_root is None:
        return config
    root = Path(root_override) if root_override else _checked_root(Path(stored_root), Path(ckpt_path), where)
    for key, holder, name in _output_paths(trainer):
        if not isinstance(holder[name], str):
            raise StoredConfigError(f"{where}: its run config sets {key} = {holder[name]!r}, not a path")
        target = Path(holder[name])
        relative = _relative_inside(target, Path(stored_root))
        if relative is None:
            raise StoredConfigError(f"{where}: its run config writes {key} = {target} outside its run folder "
                                    f"{stored_root}: {OWN_CONFIG}")
        holder[name] = str(root / relative)
    if root_override is None:
        trainer["default_root_dir"] = str(root)
    return config


def check_as_data(config: Any, where: str, remedy: str = OWN_CONFIG) -> None:
    """Refuse a stored config (a run config, or a module's stored hyperparameters) that names a class outside mmft
    and the allow-list, any other importable object, or turns on a user-only setting; ``where`` starts the
    message, ``remedy`` ends it."""
    for key, value in _walk(config, ""):
        name = key.rsplit(".", 1)[-1]
        if name in ("class_path", "_class_path"):
            _check_class_path(value, key, where, remedy)
        elif name == "_instantiator":  # what Lightning's load_from_checkpoint imports and calls
            if value != LIGHTNING_INSTANTIATOR:
                raise StoredConfigError(f"{where}: its stored hyperparameters name {value!r} at {key}; only "
                                        f"{LIGHTNING_INSTANTIATOR} builds a module from them")
        elif name in USER_ONLY_SETTINGS and value not in (None, False):
            raise StoredConfigError(f"{where}: its run config sets {key}: {value!r}, which only your own config "
                                    f"may set: {remedy}")
        elif isinstance(value, str) and _names_an_importable_object(value):
            raise StoredConfigError(f"{where}: its run config names {value!r} at {key}, which mmft does not import "
                                    f"from a checkpoint: {remedy}")


def _walk(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    """Every ``(dotted key, value)`` in a nested config, leaves and inner nodes."""
    if isinstance(node, dict):
        for name, value in node.items():
            child = f"{key}.{name}" if key else str(name)
            yield child, value
            yield from _walk(value, child)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            child = f"{key}[{i}]"
            yield child, value
            yield from _walk(value, child)


def _check_class_path(value: Any, key: str, where: str, remedy: str) -> None:
    if isinstance(value, str) and (value in ALLOWED_CLASS_PATHS or own_class(value) is not None):
        return
    raise StoredConfigError(
        f"{where}: its run config names class {value!r} at {key}; a stored config may name only mmft's own classes "
        f"and Lightning's standard callbacks, loggers and strategies and torch's optimizers: {remedy}"
    )


def own_class(path: str) -> type | None:
    """The class ``path`` names when it is one defined in mmft's own packages, else None (nothing else imported)."""
    parts = path.split(".")
    if parts[0] not in OWN_PACKAGES or not all(part.isidentifier() for part in parts):
        return None
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        found: Any = importlib.import_module(module_name)
        for attribute in parts[split:]:
            found = getattr(found, attribute, None)
        if inspect.isclass(found) and found.__module__.split(".")[0] in OWN_PACKAGES:
            return found
        return None
    return None


def _names_an_importable_object(text: str) -> bool:
    """Whether ``text`` reads as a dotted import path into an installed package (``os.system``) that is neither an
    allowed class nor a torch dtype (``torch.bfloat16``). Nothing is imported to tell."""
    if not _DOTTED_NAME.fullmatch(text) or text in ALLOWED_CLASS_PATHS or own_class(text) is not None:
        return False
    top, _, attribute = text.partition(".")
    if top == "torch" and isinstance(getattr(torch, attribute, None), torch.dtype):
        return False
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _checked_root(stored: Path, ckpt_path: Path, where: str) -> Path:
    """The stored run folder, if the checkpoint lies in it or it lies under the working folder."""
    if _relative_inside(ckpt_path, stored) is not None or (not stored.is_absolute() and ".." not in stored.parts):
        return stored
    raise StoredConfigError(f"{where}: its run config puts the run folder at {stored}, which neither holds the "
                            "checkpoint nor lies under the working folder: give the run folder yourself, "
                            "--trainer.default_root_dir DIR")


def _relative_inside(path: Path, folder: Path) -> Path | None:
    """``path`` relative to ``folder`` when it lies inside it (both resolved), else None."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(folder))
    except ValueError:
        return None


def _output_paths(trainer: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """``(key, init_args, argument)`` for every output path set in the trainer's loggers and callbacks."""
    for section in ("logger", "callbacks"):
        entries = trainer.get(section)
        for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            if not isinstance(entry, dict) or not isinstance(entry.get("init_args"), dict):
                continue
            name = str(entry.get("class_path", "")).rsplit(".", 1)[-1]
            for argument in OUTPUT_PATH_ARGUMENTS.get(name, ()):
                if entry["init_args"].get(argument) is not None:
                    yield f"trainer.{section}[{i}].init_args.{argument}", entry["init_args"], argument
