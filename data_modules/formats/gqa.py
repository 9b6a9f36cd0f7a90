"""GQA balanced question files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.formats.base import DataFormatError, OnError, Reader, load_json, require_text
from data_modules.records import Example, Turn


class GQA(Reader):
    """``<split>_balanced_questions.json``: a JSON object question id -> ``{imageId, question, answer, ...}``.

    Images are ``<image_folder>/<imageId>.jpg``. Records without ``answer`` (the challenge / submission files) are
    unanswered Examples. GQA is scored by exact match against ``answer``.
    """

    def __init__(
        self, questions: str | Path, image_folder: str | Path, task: str = "gqa", on_error: OnError | None = None
    ) -> None:
        super().__init__(questions, task, on_error)
        self.image_folder = Path(image_folder)

    def _records(self):
        data = load_json(self.path, "questions")
        if not isinstance(data, dict):
            raise DataFormatError(
                f"{self.path}: expected a JSON object question id -> question, got {type(data).__name__}"
            )
        for question_id, record in data.items():
            yield f"{self.path}#{question_id}", (question_id, record)

    def _parse(self, location: str, raw: Any) -> list[Example]:
        question_id, record = raw
        turns = [Turn("user", require_text(record, "question", location))]
        image_id = require_text(record, "imageId", location)
        references: tuple[str, ...] = ()
        if "answer" in record:
            answer = require_text(record, "answer", location)
            turns.append(Turn("assistant", answer))
            references = (answer,)
        return [
            Example(
                task=self.task,
                id=question_id,
                turns=tuple(turns),
                images=(self.media_path(self.image_folder, f"{image_id}.jpg", location),),
                references=references,
                source=location,
            )
        ]
