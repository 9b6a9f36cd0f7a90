"""TextVQA: questions about text in images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from data_modules.formats.base import (
    DataFormatError,
    OnError,
    Reader,
    iter_json_records,
    optional_answers,
    require,
    require_text,
    with_id,
)
from data_modules.records import Example, Turn

OCR_PREFIX = "Reference OCR token: "


class TextVQA(Reader):
    """``TextVQA_0.5.1_<split>.json``: ``{data: [{question, question_id, image_id, answers: [10 strings]}]}``.

    Images are ``<image_folder>/<image_id>.jpg``. The target is the most frequent answer (the first one of the most
    frequent on ties); ``references`` are all answers, for VQA accuracy. The test split has no answers: unanswered.

    ``reference_ocr=True`` appends the image's OCR tokens to the question as LLaVA-1.5's TextVQA evaluation does
    (``<question>\nReference OCR token: a, b, c``; the number LLaVA-1.5 reports). The tokens come from
    ``ocr_json``, a Rosetta OCR file (``TextVQA_Rosetta_OCR_v0.2_<split>.json``: ``{data: [{image_id,
    ocr_tokens}]}``), or, without it, from each question record's own ``ocr_tokens``.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_folder: str | Path,
        reference_ocr: bool = False,
        ocr_json: str | Path | None = None,
        task: str = "textvqa",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(json_path, task, on_error)
        self.image_folder = Path(image_folder)
        self.reference_ocr = reference_ocr
        self.ocr_json = Path(ocr_json) if ocr_json is not None else None
        if self.ocr_json is not None and not reference_ocr:
            raise ValueError("TextVQA: ocr_json is given but reference_ocr is false; set reference_ocr: true")
        self._ocr_by_image: dict[str, list[str]] | None = None

    def _records(self):
        if self.ocr_json is not None:
            self._ocr_by_image = {}
            for location, record in iter_json_records(self.ocr_json, "ocr_json", key="data"):
                source = with_id(location, record, "image_id")
                self._ocr_by_image[require_text(record, "image_id", source)] = _ocr_tokens(record, source)
        return iter_json_records(self.path, "json_path", key="data")

    def _question(self, record: Any, image_id: str, source: str) -> str:
        question = require_text(record, "question", source)
        if not self.reference_ocr:
            return question
        if self._ocr_by_image is None:
            tokens = _ocr_tokens(record, source)
        elif image_id in self._ocr_by_image:
            tokens = self._ocr_by_image[image_id]
        else:
            raise DataFormatError(f"{source}: image {image_id!r} has no entry in {self.ocr_json}")
        return f"{question}\n{OCR_PREFIX}{', '.join(tokens)}"

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "question_id")
        question_id = require(record, "question_id", int, source)
        image_id = require_text(record, "image_id", source)
        turns = [Turn("user", self._question(record, image_id, source))]
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


def _ocr_tokens(record: Any, source: str) -> list[str]:
    tokens = require(record, "ocr_tokens", list, source)
    if not all(isinstance(t, str) for t in tokens):
        raise DataFormatError(f"{source}: 'ocr_tokens' should be a list of strings")
    return [t.strip() for t in tokens]
