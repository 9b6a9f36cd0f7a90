"""DocVQA: questions about document images, scored with ANLS."""

from __future__ import annotations

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


class DocVQA(Reader):
    """``{data: [{questionId, question, image, answers: [...]}]}``; ``image`` is relative to ``image_folder``.

    The target is the first answer; ``references`` are all answers (ANLS takes the best match). The test split has
    no answers: unanswered Examples.
    """

    def __init__(
        self, json_path: str | Path, image_folder: str | Path, task: str = "docvqa", on_error: OnError | None = None
    ) -> None:
        super().__init__(json_path, task, on_error)
        self.image_folder = Path(image_folder)

    def _records(self):
        return iter_json_records(self.path, "json_path", key="data")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "questionId")
        question_id = require(record, "questionId", (int, str), source)
        turns = [Turn("user", require_text(record, "question", source))]
        references = optional_answers(record, source)
        if references:
            turns.append(Turn("assistant", references[0]))
        return [
            Example(
                task=self.task,
                id=str(question_id),
                turns=tuple(turns),
                images=(self.media_path(self.image_folder, require_text(record, "image", source), source),),
                references=references,
                source=source,
            )
        ]
