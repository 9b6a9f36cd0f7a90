"""POPE: yes/no questions about objects in COCO images, in LLaVA's files (random, popular, adversarial)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_modules.formats.base import (
    DataFormatError,
    OnError,
    Reader,
    iter_json_lines,
    require,
    require_text,
    with_id,
)
from data_modules.records import Example, Turn

SPLITS = ("random", "popular", "adversarial")


class POPE(Reader):
    """``<folder>/coco_pope_<split>.json`` for each split: JSON lines ``{question_id, image, text, label}``, images
    ``<image_folder>/<image>`` (COCO val2014).

    The splits reuse question ids, so an Example's id is ``<split>/<question_id>`` and its ``category`` the split
    (the POPE metric scores each split apart). The target and the one reference are the label, "yes" or "no".
    """

    def __init__(
        self,
        folder: str | Path,
        image_folder: str | Path,
        splits: Sequence[str] = SPLITS,
        task: str = "pope",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(folder, task, on_error)
        self.image_folder = Path(image_folder)
        self.splits = tuple(splits)
        if not self.splits or not set(self.splits) <= set(SPLITS):
            raise ValueError(f"POPE splits must be some of {list(SPLITS)}, got {list(splits)}")

    def _records(self) -> Iterator[tuple[str, Any]]:
        for split in self.splits:
            for location, record in iter_json_lines(self.path / f"coco_pope_{split}.json", "folder"):
                yield location, record if isinstance(record, DataFormatError) else (split, record)

    def _parse(self, location: str, raw: Any) -> list[Example]:
        split, record = raw
        source = with_id(location, record, "question_id")
        question_id = require(record, "question_id", (int, str), source)
        turns = [Turn("user", require_text(record, "text", source))]
        references: tuple[str, ...] = ()
        if "label" in record:
            label = require_text(record, "label", source).lower()
            if label not in ("yes", "no"):
                raise DataFormatError(f"{source}: 'label' should be 'yes' or 'no', got {label!r}")
            turns.append(Turn("assistant", label))
            references = (label,)
        return [
            Example(
                task=self.task,
                id=f"{split}/{question_id}",
                turns=tuple(turns),
                images=(self.media_path(self.image_folder, require_text(record, "image", source), source),),
                references=references,
                source=source,
                category=split,
            )
        ]
