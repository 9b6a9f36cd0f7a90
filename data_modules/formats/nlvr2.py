"""NLVR2: a sentence about a pair of images, true or false."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.formats.base import DataFormatError, OnError, Reader, iter_json_lines, require, require_text, with_id
from data_modules.records import Example, Turn

LABELS = {"True": "true", "False": "false"}


class NLVR2(Reader):
    """JSON lines ``{identifier, sentence, label: "True"|"False", left_url, right_url, directory?, ...}``.

    The identifier ``<split>-<set>-<pair>-<sentence>`` names the two images ``<split>-<set>-<pair>-img0.png`` and
    ``-img1.png`` in ``image_folder`` (in ``image_folder/<directory>/`` when the record has ``directory``, as the
    training split does). Targets are ``"true"`` / ``"false"``; records without ``label`` are unanswered.
    """

    def __init__(
        self, jsonl: str | Path, image_folder: str | Path, task: str = "nlvr2", on_error: OnError | None = None
    ) -> None:
        super().__init__(jsonl, task, on_error)
        self.image_folder = Path(image_folder)

    def _records(self):
        return iter_json_lines(self.path, "jsonl")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "identifier")
        identifier = require_text(record, "identifier", source)
        parts = identifier.rsplit("-", 1)
        if len(parts) != 2 or not parts[1].isdigit() or parts[0].count("-") < 2:
            raise DataFormatError(f"{source}: identifier {identifier!r} is not <split>-<set>-<pair>-<sentence>")
        directory = str(require(record, "directory", (int, str), source)) if "directory" in record else ""
        folder = self.media_path(self.image_folder, directory, source)
        self.media_path(folder, f"{parts[0]}-img0.png", source)
        turns = [Turn("user", require_text(record, "sentence", source))]
        references: tuple[str, ...] = ()
        if "label" in record:
            label = require(record, "label", str, source)
            if label not in LABELS:
                raise DataFormatError(f"{source}: 'label' should be 'True' or 'False', got {label!r}")
            turns.append(Turn("assistant", LABELS[label]))
            references = (LABELS[label],)
        return [
            Example(
                task=self.task,
                id=identifier,
                turns=tuple(turns),
                images=(folder / f"{parts[0]}-img0.png", folder / f"{parts[0]}-img1.png"),
                references=references,
                source=source,
            )
        ]
