"""MMBench: multiple-choice questions with the images inline (base64 in a TSV), asked once per rotation of the
options for the circular evaluation."""

from __future__ import annotations

import base64
import binascii
import csv
import os
import string
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_modules.formats.base import DataFormatError, OnError, Reader
from data_modules.records import Example, Turn

LETTERS = string.ascii_uppercase
# MMBench writes a repeated image once; later rows hold the index of the row that has it (at most this long)
IMAGE_REFERENCE_LENGTH = 64
_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8": ".jpg", b"GIF8": ".gif", b"RIFF": ".webp", b"BM": ".bmp"}


def _missing(value: str | None) -> bool:
    """Empty cells, and the "nan" / "none" that pandas-written TSVs hold for them (LLaVA's is_none)."""
    return value is None or value.strip().lower() in ("", "nan", "none")


def _extension(data: bytes) -> str:
    return next((ext for magic, ext in _SIGNATURES.items() if data.startswith(magic)), ".img")


def write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, unless it already holds them."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class MMBench(Reader):
    """An MMBench TSV (``mmbench_dev_20230712.tsv``, the English dev split LLaVA-1.5 reports): columns ``index``,
    ``question``, ``hint``, ``A`` .. ``D``, ``answer``, ``category``, ``l2-category`` and ``image`` (base64).

    The images are decoded into ``image_folder`` as ``<index>.<ext>`` (as VLMEvalKit does; rewritten only when they
    differ). Each question becomes one Example per rotation of its options (the options shifted by one place each
    time, as LLaVA's ``--all-rounds``), with id ``<index>/<rotation>of<rotations>`` and the letter of the right
    option after the rotation as target and reference; the circular metric groups them back by index. The prompt is
    LLaVA-1.5's: the hint on its own line when there is one, the question, then ``A. option`` lines (the model's
    collate adds "Answer with the option's letter from the given choices directly."). Rows without an answer (the
    test split) are unanswered.
    """

    def __init__(
        self, tsv_path: str | Path, image_folder: str | Path, task: str = "mmbench", on_error: OnError | None = None
    ) -> None:
        super().__init__(tsv_path, task, on_error)
        self.image_folder = Path(image_folder)
        self._images: dict[str, str] = {}

    def _records(self) -> Iterator[tuple[str, Any]]:
        if not self.path.is_file():
            raise DataFormatError(f"{self.path}: file not found (given as `tsv_path`)")
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # base64 images are far longer than csv's default limit
        with self.path.open(encoding="utf-8", newline="") as file:
            rows = list(csv.DictReader(file, delimiter="\t"))
        if rows and not {"index", "question", "A", "B", "image"} <= set(rows[0]):
            raise DataFormatError(
                f"{self.path}: expected MMBench's TSV columns index, question, hint, A..D, answer, image; "
                f"found {sorted(rows[0])}"
            )
        self._images = {row["index"]: row["image"] or "" for row in rows}
        for number, row in enumerate(rows, start=2):  # line 1 is the header
            yield f"{self.path}:{number} (index {row['index']})", row

    def _parse(self, location: str, row: dict[str, str]) -> list[Example]:
        index = row["index"].strip()
        if not index.lstrip("-").isdigit():
            raise DataFormatError(f"{location}: 'index' should be an integer")
        if _missing(row["question"]):
            raise DataFormatError(f"{location}: empty 'question'")
        options = []
        for letter in LETTERS:
            if _missing(row.get(letter)):
                break
            options.append(row[letter].strip())
        if len(options) < 2:
            raise DataFormatError(f"{location}: fewer than two options in columns A, B, ...")
        answer = None if _missing(row.get("answer")) else row["answer"].strip()
        if answer is not None and answer not in LETTERS[: len(options)]:
            raise DataFormatError(f"{location}: 'answer' {answer!r} is not one of its option letters")
        image = self._image_file(location, index, row["image"])
        hint = "" if _missing(row.get("hint")) else f"{row['hint'].strip()}\n"
        examples = []
        for rotation in range(len(options)):
            rotated = options[rotation:] + options[:rotation]
            listed = "".join(f"\n{LETTERS[k]}. {option}" for k, option in enumerate(rotated))
            turns = [Turn("user", f"{hint}{row['question'].strip()}{listed}")]
            references: tuple[str, ...] = ()
            if answer is not None:
                letter = LETTERS[(LETTERS.index(answer) - rotation) % len(options)]
                turns.append(Turn("assistant", letter))
                references = (letter,)
            examples.append(
                Example(
                    task=self.task,
                    id=f"{index}/{rotation}of{len(options)}",
                    turns=tuple(turns),
                    images=(image,),
                    references=references,
                    source=location,
                )
            )
        return examples

    def _image_file(self, location: str, index: str, encoded: str | None) -> Path:
        encoded = (encoded or "").strip()
        if len(encoded) <= IMAGE_REFERENCE_LENGTH:
            referenced = self._images.get(encoded, "")
            if len(referenced) <= IMAGE_REFERENCE_LENGTH:
                raise DataFormatError(
                    f"{location}: 'image' is neither base64 data nor the index of a row with an image"
                )
            encoded = referenced
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as error:
            raise DataFormatError(f"{location}: 'image' is not valid base64: {error}") from None
        path = self.image_folder / f"{index}{_extension(data)}"
        write_if_changed(path, data)
        return path
