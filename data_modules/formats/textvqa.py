"""TextVQA: questions about text in images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data_modules.formats.base import (
    OnError,
    Reader,
    iter_json_records,
    optional_answers,
    require,
    require_text,
    with_id,
)
from data_modules.records import Example, Turn


class TextVQA(Reader):
    """``TextVQA_0.5.1_<split>.json``: ``{data: [{question, question_id, image_id, answers: [10 strings]}]}``.

    Images are ``<image_folder>/<image_id>.jpg``. The target is the most frequent answer (the first one of the most
    frequent on ties); ``references`` are all answers, for VQA accuracy. The test split has no answers: unanswered.
    """

    def __init__(
        self, json_path: str | Path, image_folder: str | Path, task: str = "textvqa", on_error: OnError | None = None
    ) -> None:
        super().__init__(json_path, task, on_error)
        self.image_folder = Path(image_folder)

    def _records(self):
        return iter_json_records(self.path, "json_path", key="data")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "question_id")
        question_id = require(record, "question_id", int, source)
        image_id = require_text(record, "image_id", source)
        turns = [Turn("user", require_text(record, "question", source))]
        references = optional_answers(record, source)
        if references:
            turns.append(Turn("assistant", Counter(references).most_common(1)[0][0]))
        return [
            Example(
                task=self.task,
                id=str(question_id),
                turns=tuple(turns),
                images=(self.media_path(self.image_folder, f"{image_id}.jpg", source),),
                references=references,
                source=source,
            )
        ]
