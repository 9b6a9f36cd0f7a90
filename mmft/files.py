"""Writing files a user keeps without ever leaving a half-written one: a temporary name beside the target, then a
rename into place (atomic on one file system)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``.<name>.<pid>.tmp`` in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, written atomically (NaN becomes null: JSON has no NaN)."""
    return write_text_atomic(path, json.dumps(_without_nan(data), indent=2, ensure_ascii=False) + "\n")


def _without_nan(data: Any) -> Any:
    if isinstance(data, float) and data != data:
        return None
    if isinstance(data, dict):
        return {key: _without_nan(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_without_nan(value) for value in data]
    return data


def replace_refusal(folder: Path, option: str, overwrite: bool, marker: str, tool: str) -> str | None:
    """Why ``tool`` may not write ``folder`` (named by ``option``), or None when it may: a folder that is absent or
    empty, or, with ``overwrite``, one that holds ``tool``'s own ``marker`` file and no subfolder, i.e. an earlier
    output of the same tool. Anything else (a run folder, a data folder) is never replaced."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"{option} {folder} is a file, not a folder: choose another path"
    entries = list(folder.iterdir())
    if not entries:
        return None
    if not overwrite:
        return f"{option} {folder} exists: choose another folder, or pass --overwrite to replace an earlier {tool}"
    subfolders = sorted(entry.name for entry in entries if entry.is_dir())
    if not (folder / marker).is_file() or subfolders:
        held = f"subfolders {', '.join(subfolders[:3])}" if subfolders else f"no {marker}"
        return (f"{option} {folder} is not the output of an earlier {tool} ({held}): --overwrite replaces only such "
                "a folder; choose another folder")
    return None
