"""VQAv2 (and VQAv1-style) question and annotation files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.formats.base import (
    DUPLICATE,
    DataFormatError,
    OnError,
    Reader,
    load_json,
    require,
    require_text,
    with_id,
)
from data_modules.records import Example, Turn


class VQAv2(Reader):
    """``v2_OpenEnded_mscoco_<split>_questions.json`` plus, when known, ``v2_mscoco_<split>_annotations.json``.

    Images are ``<image_folder>/COCO_<split>_<image_id:012d>.jpg``; ``split`` is the image split in those names
    (``train2014``, ``val2014``, or ``test2015`` for test and test-dev). The prompt is the bare question (models add
    their own instruction suffix); the target is ``multiple_choice_answer`` and ``references`` the annotators'
    answers (10 in VQAv2) that VQA accuracy scores against. Without ``annotations`` the Examples are unanswered
    (test / predict).
    """

    def __init__(
        self,
        questions: str | Path,
        image_folder: str | Path,
        split: str,
        annotations: str | Path | None = None,
        task: str = "vqav2",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(questions, task, on_error)
        self.annotations = Path(annotations) if annotations is not None else None
        self.image_folder = Path(image_folder)
        self.split = split
        self._by_question: dict[int, Any] | None = None
        self._annotation_index: dict[int, list[int]] = {}

    def _records(self):
        questions = _top_level_list(self.path, "questions", "questions")
        if self.annotations is not None:
            self._by_question = {}
            self._annotation_index = {}
            for index, annotation in enumerate(_top_level_list(self.annotations, "annotations", "annotations")):
                question_id = annotation.get("question_id") if isinstance(annotation, dict) else None
                if not isinstance(question_id, int):
                    raise DataFormatError(
                        f"{self.annotations}#{index}: annotation without an integer 'question_id' "
                        "(is this really a VQA annotations file?)"
                    )
                self._by_question.setdefault(question_id, annotation)
                self._annotation_index.setdefault(question_id, []).append(index)
        for index, question in enumerate(questions):
            yield f"{self.path}#{index}", question

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "question_id")
        question_id = require(record, "question_id", int, source)
        image_id = require(record, "image_id", int, source)
        turns = [Turn("user", require_text(record, "question", source))]
        references: tuple[str, ...] = ()
        if self._by_question is not None:
            annotation = self._by_question.get(question_id)
            if annotation is None:
                raise DataFormatError(f"{source}: no annotation with this question_id in {self.annotations}")
            where = f"{self.annotations} (question_id {question_id})"
            indices = self._annotation_index[question_id]
            if len(indices) > 1:
                raise DataFormatError(
                    f"{source}: {len(indices)} annotations for this question_id in {self.annotations} (records "
                    f"{', '.join(f'#{i}' for i in indices[:5])}): which answers count is ambiguous",
                    DUPLICATE,
                )
            if annotation.get("image_id") != image_id:
                raise DataFormatError(
                    f"{where}: image_id {annotation.get('image_id')!r} differs from the question's ({image_id})"
                )
            answers = require(annotation, "answers", list, where)
            if not answers:
                raise DataFormatError(f"{where}: empty 'answers'")
            references = tuple(require(a, "answer", str, f"{where} answer {k}") for k, a in enumerate(answers))
            turns.append(Turn("assistant", require_text(annotation, "multiple_choice_answer", where)))
        return [
            Example(
                task=self.task,
                id=str(question_id),
                turns=tuple(turns),
                images=(self.image_folder / f"COCO_{self.split}_{image_id:012d}.jpg",),
                references=references,
                source=source,
            )
        ]


def _top_level_list(path: Path, argument: str, key: str) -> list:
    """The list under ``key`` of a JSON object file (the VQA files wrap their records that way)."""
    data = load_json(path, argument)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataFormatError(f"{path}: expected a JSON object with a list under {key!r} (given as `{argument}`)")
    return data[key]
