"""VizWiz-VQA: questions from blind photographers, many of them unanswerable."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data_modules.formats.base import (
    DataFormatError,
    OnError,
    Reader,
    iter_json_records,
    require,
    require_text,
    with_id,
)
from data_modules.records import Example, Turn

ANSWER_TYPES = ("yes/no", "number", "other", "unanswerable")


class VizWiz(Reader):
    """``<split>.json``: a list of ``{image, question, answers: [{answer, answer_confidence}], answer_type,
    answerable}``; images are ``<image_folder>/<image>``.

    One question per image, so the id is the image's name without its extension. The target is the most frequent
    answer (first of the most frequent on ties), ``references`` the 10 answers ("unanswerable" among them), and
    ``category`` the answer type, ``unanswerable`` for questions marked ``answerable: 0`` (the VizWiz metric
    reports per type and scores the recognition of unanswerable questions from it). The test split has no answers:
    unanswered Examples.
    """

    def __init__(
        self, json_path: str | Path, image_folder: str | Path, task: str = "vizwiz", on_error: OnError | None = None
    ) -> None:
        super().__init__(json_path, task, on_error)
        self.image_folder = Path(image_folder)

    def _records(self):
        return iter_json_records(self.path, "json_path")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "image")
        image = require_text(record, "image", source)
        turns = [Turn("user", require_text(record, "question", source))]
        references: tuple[str, ...] = ()
        category = None
        if "answers" in record:
            answers = require(record, "answers", list, source)
            if not answers:
                raise DataFormatError(f"{source}: empty 'answers'")
            references = tuple(require(a, "answer", str, f"{source} answer {k}") for k, a in enumerate(answers))
            turns.append(Turn("assistant", Counter(references).most_common(1)[0][0]))
            answerable = require(record, "answerable", int, source)
            category = "unanswerable" if answerable == 0 else require_text(record, "answer_type", source)
            if category not in ANSWER_TYPES:
                raise DataFormatError(f"{source}: 'answer_type' {category!r} is not one of {list(ANSWER_TYPES)}")
        return [
            Example(
                task=self.task,
                id=Path(image).stem,
                turns=tuple(turns),
                images=(self.media_path(self.image_folder, image, source),),
                references=references,
                source=source,
                category=category,
            )
        ]
