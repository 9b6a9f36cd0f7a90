"""ScienceQA: multiple-choice science questions; the IMG subset is the test questions that come with an image."""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_modules.formats.base import DataFormatError, OnError, Reader, load_json, require, require_text
from data_modules.records import Example, Turn

LETTERS = string.ascii_uppercase


def choices_text(choices: list[str]) -> str:
    """Options one per line as ``A. text`` (LLaVA-1.5's and lmms-eval's layout)."""
    return "\n".join(f"{LETTERS[k]}. {choice}" for k, choice in enumerate(choices))


class ScienceQA(Reader):
    """``problems.json`` (id -> ``{question, choices, answer (index), hint, image, split, ...}``) and
    ``pid_splits.json`` (split -> list of ids); an image is ``<image_folder>/<id>/<image>``, so ``image_folder`` is
    the split's folder (``images/test``).

    ``images_only=True`` keeps the problems that have an image: ScienceQA-IMG on the test split. The prompt is
    LLaVA-1.5's: ``Context: <hint>`` on its own line when there is a hint, the question, then the options
    ``A. ...`` one per line (the model's collate adds "Answer with the option's letter from the given choices
    directly."). The target and reference are the answer's letter.
    """

    def __init__(
        self,
        problems: str | Path,
        pid_splits: str | Path,
        image_folder: str | Path,
        split: str = "test",
        images_only: bool = True,
        task: str = "scienceqa",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(problems, task, on_error)
        self.pid_splits = Path(pid_splits)
        self.image_folder = Path(image_folder)
        self.split = split
        self.images_only = images_only

    def _records(self) -> Iterator[tuple[str, Any]]:
        problems = load_json(self.path, "problems")
        if not isinstance(problems, dict):
            raise DataFormatError(f"{self.path}: expected a JSON object problem id -> problem")
        splits = load_json(self.pid_splits, "pid_splits")
        if not isinstance(splits, dict) or not isinstance(splits.get(self.split), list):
            raise DataFormatError(f"{self.pid_splits}: no list of problem ids under {self.split!r} (given as `split`)")
        for pid in splits[self.split]:
            pid = str(pid)
            location = f"{self.path}#{pid}"
            if pid not in problems:
                yield location, DataFormatError(f"{location}: listed in {self.pid_splits} but not in the problems")
                continue
            problem = problems[pid]
            if self.images_only and not (isinstance(problem, dict) and problem.get("image")):
                continue
            yield location, (pid, problem)

    def _parse(self, location: str, raw: Any) -> list[Example]:
        pid, problem = raw
        question = require_text(problem, "question", location)
        choices = require(problem, "choices", list, location)
        if not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) for c in choices):
            raise DataFormatError(f"{location}: 'choices' should be a list of 2 or more strings")
        answer = require(problem, "answer", int, location)
        if not 0 <= answer < len(choices):
            raise DataFormatError(f"{location}: 'answer' {answer} is not an index into its {len(choices)} choices")
        hint = problem.get("hint") or ""
        if not isinstance(hint, str):
            raise DataFormatError(f"{location}: 'hint' should be a string")
        context = f"Context: {hint.strip()}\n" if hint.strip() else ""
        image = problem.get("image")
        if image is not None and not isinstance(image, str):
            raise DataFormatError(f"{location}: 'image' should be a file name or null")
        letter = LETTERS[answer]
        return [
            Example(
                task=self.task,
                id=pid,
                turns=(Turn("user", f"{context}{question}\n{choices_text(choices)}"), Turn("assistant", letter)),
                images=(self.media_path(self.image_folder, f"{pid}/{image}", location),) if image else (),
                references=(letter,),
                source=location,
            )
        ]
