"""Export a trained checkpoint: its adapter as a Hugging Face PEFT folder, or (``--merged``) the model with the
adapters folded into its weights.

    mmft export --ckpt_path runs/tiny_llava_dora/checkpoints/last.ckpt --out exports/tiny_llava_dora
    mmft export --ckpt_path runs/tiny_llava_dora/checkpoints/last.ckpt --merged --out runs/tiny_llava_dora/merged

The checkpoint describes itself (the model's config is stored with it), so no ``--config`` is needed: the module is
rebuilt with ``load_from_checkpoint``. The PEFT folder (:func:`mmft.adapters.save_adapters`) loads with
``peft.PeftModel.from_pretrained(base_model, folder)`` or ``mmft.adapters.load_adapters``; the merged folder is
:func:`mmft.models.export.export_merged`'s. Either is written beside the target and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path

from mmft.adapters import save_adapters
from mmft.adapters.peft_format import CONFIG_FILE as PEFT_CONFIG_FILE
from mmft.checkpoint_io import AtomicCheckpointIO, CheckpointFileError
from mmft.files import replace_refusal
from mmft.models.base import AdapterModule
from mmft.stored_config import StoredConfigError, check_as_data

TRUSTED_PREFIX = "mmft.models."  # a checkpoint names the class to rebuild: only mmft's model families are imported


class ExportError(ValueError):
    """The checkpoint cannot be exported, or the target is in the way; the message says why."""


def load_module(ckpt_path: str | Path) -> AdapterModule:
    """The trained module of an mmft checkpoint, rebuilt from the config stored with it."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise ExportError(f"--ckpt_path {path}: no such file")
    try:
        checkpoint = AtomicCheckpointIO().load_checkpoint(path, map_location="cpu")
    except CheckpointFileError as error:
        raise ExportError(f"--ckpt_path {error}") from None
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if class_path is None:
        raise ExportError(f"--ckpt_path {path} holds no model config (it was not saved by the mmft CLI): build the "
                          "module by hand, load the checkpoint into it and call mmft.adapters.save_adapters")
    try:  # load_from_checkpoint builds what the stored hyperparameters name: only mmft's and standard classes
        check_as_data(checkpoint["hyper_parameters"], f"--ckpt_path {path}", "build the module from your own config "
                      "and export it from Python (mmft.adapters.save_adapters, mmft.models.export.export_merged)")
    except StoredConfigError as error:
        raise ExportError(str(error)) from None
    if not class_path.startswith(TRUSTED_PREFIX):
        raise ExportError(f"--ckpt_path {path}: model class {class_path!r} is not an mmft model family "
                          f"({TRUSTED_PREFIX}*); load it with that class's load_from_checkpoint")
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, AdapterModule)):
        raise ExportError(f"--ckpt_path {path}: {class_path!r} is not an mmft AdapterModule")
    return cls.load_from_checkpoint(path, map_location="cpu")


def check_out(out: Path, overwrite: bool, marker: str) -> None:
    """Refuse an ``--out`` that exists, unless ``overwrite`` and it is an earlier export of the same kind."""
    refusal = replace_refusal(out, "--out", overwrite, marker, "mmft export")
    if refusal is not None:
        raise ExportError(refusal)


def export_peft(ckpt_path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the checkpoint's adapter as a PEFT folder at ``out``; returns ``out``."""
    out = Path(out)
    check_out(out, overwrite, PEFT_CONFIG_FILE)
    module = load_module(ckpt_path)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_adapters(module.model, partial, base_model_name_or_path=getattr(module, "base_model_name_or_path", None))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def export_merged_model(ckpt_path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the checkpoint's model with its adapters merged at ``out`` (:func:`mmft.models.export.export_merged`)."""
    from mmft.models.export import MERGED_CONFIG, export_merged
    from mmft.models.export import ExportError as MergedExportError

    out = Path(out)
    check_out(out, overwrite, MERGED_CONFIG)
    try:
        return export_merged(load_module(ckpt_path), out)
    except MergedExportError as error:
        raise ExportError(f"--ckpt_path {ckpt_path}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    """``mmft export``."""
    parser = argparse.ArgumentParser(prog="mmft export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", type=Path, required=True, help="a checkpoint written by mmft fit")
    parser.add_argument("--out", type=Path, required=True, help="the PEFT folder to write")
    parser.add_argument("--merged", action="store_true",
                        help="write the model with the adapters merged into its weights, not the PEFT adapter")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it holds an earlier export of the same kind (never another folder)")
    args = parser.parse_args(argv)
    try:
        if args.merged:
            folder = export_merged_model(args.ckpt_path, args.out, args.overwrite)
        else:
            folder = export_peft(args.ckpt_path, args.out, args.overwrite)
    except ExportError as error:
        print(f"mmft export: {error}", file=sys.stderr)
        return 2
    kind = "the merged model" if args.merged else "the adapter (PEFT format)"
    print(f"wrote {kind} of {args.ckpt_path} to {folder}")
    return 0
