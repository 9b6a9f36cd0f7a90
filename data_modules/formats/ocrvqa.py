"""OCR-VQA: questions about book covers (title, author, genre), answered by reading the cover."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from data_modules.formats.base import DataFormatError, OnError, Reader, load_json, require
from data_modules.records import Example, Turn

SPLITS = {"train": 1, "val": 2, "test": 3}


class OCRVQA(Reader):
    """``dataset.json``: a dict ``book id -> {imageURL, questions: [...], answers: [...], title, genre, split}``,
    ``split`` 1 train, 2 val, 3 test. Images are ``<image_folder>/<book id><extension of imageURL>`` (the layout
    OCR-VQA's download script writes, ``.jpg`` when the URL has none).

    One Example per question of a book of ``split``, id ``<book id>_<k>``; the target and only reference is the
    answer at the same index (scored by exact match).
    """

    def __init__(
        self,
        json_path: str | Path,
        image_folder: str | Path,
        split: str = "train",
        task: str = "ocrvqa",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(json_path, task, on_error)
        if split not in SPLITS:
            raise ValueError(f"OCRVQA: split must be one of {sorted(SPLITS)}, got {split!r}")
        self.image_folder = Path(image_folder)
        self.split = split

    def _records(self):
        data = load_json(self.path, "json_path")
        if not isinstance(data, dict):
            raise DataFormatError(f"{self.path}: expected a JSON object of book id -> record, got {type(data).__name__}")
        for book_id, record in data.items():
            yield f"{self.path}#{book_id}", (book_id, record)

    def _parse(self, location: str, raw: Any) -> list[Example]:
        book_id, record = raw
        source = location
        split = require(record, "split", int, source)
        if split not in SPLITS.values():
            raise DataFormatError(f"{source}: 'split' should be 1 (train), 2 (val) or 3 (test), got {split}")
        if split != SPLITS[self.split]:
            return []
        questions = require(record, "questions", list, source)
        answers = require(record, "answers", list, source)
        if len(questions) != len(answers) or not questions:
            raise DataFormatError(
                f"{source}: 'questions' and 'answers' should be non-empty lists of the same length, got "
                f"{len(questions)} and {len(answers)}"
            )
        if not all(isinstance(t, str) and t.strip() for t in questions + answers):
            raise DataFormatError(f"{source}: every question and answer should be a non-empty string")
        url = require(record, "imageURL", str, source)
        extension = PurePosixPath(urlparse(url).path).suffix or ".jpg"
        image = self.media_path(self.image_folder, f"{book_id}{extension}", source)
        return [
            Example(
                task=self.task,
                id=f"{book_id}_{k}",
                turns=(Turn("user", question.strip()), Turn("assistant", answer.strip())),
                images=(image,),
                references=(answer.strip(),),
                source=source,
            )
            for k, (question, answer) in enumerate(zip(questions, answers))
        ]
