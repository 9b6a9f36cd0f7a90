"""Files a user keeps are written through a temporary name in the same folder, then renamed into place."""

from __future__ import annotations

import json
from pathlib import Path

from mmft.files import write_json_atomic, write_text_atomic


def test_write_json_atomic_replaces_the_file_and_writes_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "run" / "test_metrics.json"
    write_text_atomic(path, "old")
    write_json_atomic(path, {"metrics": {"a": 0.5, "b": float("nan")}, "list": [float("nan"), 1]})
    assert json.loads(path.read_text()) == {"metrics": {"a": 0.5, "b": None}, "list": [None, 1]}
    assert [p.name for p in path.parent.iterdir()] == ["test_metrics.json"]  # no temporary file left
