"""The reader base class, the bad-input policy and the helpers every format reader shares.

A reader turns one public dataset file into :class:`~data_modules.records.Example` records. A problem with the
whole file (missing, not JSON, wrong top-level shape) always raises :class:`DataFormatError`. A problem with one
record (missing key, wrong type, duplicate id, an image that does not exist) raises too, unless the reader runs with
``on_error="skip"``: then the record is dropped, counted per reason in ``reader.skipped`` and logged as a warning
with a few examples. Nothing is lost silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from data_modules.media import MISSING, MediaError
from data_modules.records import Example
from mmft.errors import InputError

log = logging.getLogger("data_modules")

OnError = Literal["raise", "skip"]
MALFORMED = "malformed record"
DUPLICATE = "duplicate id"
OUTSIDE_FOLDER = "path outside its folder"
NOT_UTF8 = "not UTF-8"
TOO_LONG = "too long for the model"
T = TypeVar("T")


class DataFormatError(InputError, ValueError):
    """A dataset file, or one record in it, does not have the documented format. The message names both."""

    def __init__(self, message: str, reason: str = MALFORMED) -> None:
        self.reason = reason
        super().__init__(message)


class SkipReport:
    """What a reader or dataset dropped under ``on_error="skip"``: counts per reason and the first few messages."""

    max_examples = 3

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen = 0
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, message: str) -> None:
        self.counts[reason] += 1
        messages = self.examples.setdefault(reason, [])
        if len(messages) < self.max_examples:
            messages.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
        of = f" of {self.seen}" if self.seen else ""
        lines = [f"{self.name}: skipped {self.total}{of} ({counts})"]
        for reason, messages in sorted(self.examples.items()):
            lines += [f"  e.g. [{reason}] {m}" for m in messages]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"SkipReport({self.name!r}, seen={self.seen}, skipped={dict(self.counts)})"


class Reader:
    """Base class of the dataset readers: ``read()`` returns the file's Examples, applying the bad-input policy.

    Subclasses take plain typed ``__init__`` arguments (so LightningCLI builds them from YAML through
    ``class_path``), call ``super().__init__(path, task, on_error)`` with their main file, and implement
    :meth:`_records` and :meth:`_parse`. ``on_error=None`` means "use the policy of whoever calls read()" (the
    DataModule passes its own).
    """

    def __init__(self, path: str | Path, task: str, on_error: OnError | None = None) -> None:
        if on_error not in (None, "raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.path = Path(path)
        self.task = task
        self.on_error = on_error
        self.skipped = SkipReport(repr(self))
        self.allow_outside_paths = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(task={self.task!r}, {self.path})"

    def _records(self) -> Iterable[tuple[str, Any]]:
        """Yield ``(location, raw_record)`` pairs; ``location`` names the file and record (``path#12``, ``path:3``).

        Problems with the whole file raise here; problems with one record are left to :meth:`_parse`.
        """
        raise NotImplementedError

    def _parse(self, location: str, raw: Any) -> list[Example]:
        """Turn one raw record into Examples, or raise DataFormatError naming the location and the record's id."""
        raise NotImplementedError

    def read(
        self, on_error: OnError = "raise", check_media: bool = True, allow_outside_paths: bool = False
    ) -> list[Example]:
        """Read every record; with the policy "skip", drop bad records and report them (see ``self.skipped``).

        ``check_media=False`` skips the check that referenced media files exist, for models that read pre-extracted
        features instead of pixels. ``allow_outside_paths=True`` accepts records whose media paths leave the
        reader's folder (``../``, absolute paths), which are otherwise malformed records (see :meth:`media_path`)."""
        policy = self.on_error or on_error
        self.allow_outside_paths = allow_outside_paths
        report = SkipReport(repr(self))
        examples: list[Example] = []
        first_seen: dict[str, str] = {}
        media_exists: dict[Path, bool] = {}
        for location, raw in self._records():
            report.seen += 1
            try:
                if isinstance(raw, DataFormatError):
                    raise raw
                parsed = self._parse(location, raw)
                for example in parsed:
                    if example.id in first_seen:
                        raise DataFormatError(
                            f"{example.source}: duplicate id {example.id!r} (first seen at {first_seen[example.id]})",
                            DUPLICATE,
                        )
                    if check_media:
                        _check_media(example, media_exists)
            except (DataFormatError, MediaError) as error:
                if policy == "raise":
                    raise
                report.add(error.reason, str(error))
                continue
            for example in parsed:
                first_seen[example.id] = example.source
            examples.extend(parsed)
        self.skipped = report
        if report.total:
            log.warning("%s", report.summary())
        return examples


    def media_path(self, folder: Path, relative: str, source: str) -> Path:
        """``folder / relative`` for a path taken from a record, refused (a DataFormatError naming the record) when
        it leaves ``folder`` through ``..`` or is absolute, unless the reader was read with ``allow_outside_paths``:
        a dataset file must not make the run read arbitrary files."""
        path = folder / relative
        inside = os.path.normpath(path) == os.path.normpath(folder) or os.path.normpath(path).startswith(
            os.path.join(os.path.normpath(folder), "")
        )
        if not (inside and not Path(relative).is_absolute()) and not self.allow_outside_paths:
            raise DataFormatError(
                f"{source}: media path {relative!r} leaves the folder {str(folder)!r}; set "
                "data.init_args.allow_outside_paths: true if the dataset really points there",
                OUTSIDE_FOLDER,
            )
        return path


def _check_media(example: Example, exists: dict[Path, bool]) -> None:
    """Fail now, at read time, for media files that do not exist (cached: many questions share one image)."""
    paths = list(example.images) + ([example.video] if example.video is not None else [])
    for path in paths:
        if path not in exists:
            exists[path] = path.is_file()
        if not exists[path]:
            raise MediaError("file not found", path=path, source=example.source, reason=MISSING)


def load_json(path: Path, argument: str) -> Any:
    """Load a whole JSON file; a missing or invalid file is a DataFormatError naming the file and the argument."""
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found (given as `{argument}`)")
    try:
        with path.open(encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}: not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text: {error}") from None


def iter_json_records(path: Path, argument: str, key: str | None = None) -> Iterator[tuple[str, Any]]:
    """``(location, record)`` for each record of a JSON file that is a list of records (LLaVA, MSRVTT-QA) or, with
    ``key``, an object holding that list under ``key`` (TextVQA and DocVQA: ``"data"``)."""
    data = load_json(path, argument)
    if key is not None:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataFormatError(f"{path}: expected a JSON object with a list under {key!r}")
        data = data[key]
    elif not isinstance(data, list):
        raise DataFormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield f"{path}#{index}", record


def iter_json_lines(path: Path, argument: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)`` per non-empty line of a JSON-lines file; a bad line is a per-record error.

    The record of a line that is not valid JSON is a :class:`DataFormatError` instance, which ``Reader.read`` raises
    (or skips), so that one broken line does not make the whole file unusable under ``on_error="skip"``.
    """
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found (given as `{argument}`)")
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            location = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield location, DataFormatError(f"{location}: not UTF-8 text ({error})", NOT_UTF8)
                continue
            if not line.strip():
                continue
            try:
                yield location, json.loads(line)
            except json.JSONDecodeError as error:
                yield location, DataFormatError(f"{location}: not valid JSON: {error}")


def require(record: Any, key: str, kind: type[T] | tuple[type, ...], source: str) -> T:
    """``record[key]``, checked to be a dict entry of type ``kind``; otherwise a DataFormatError naming ``source``."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{source}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DataFormatError(f"{source}: missing key {key!r}")
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise DataFormatError(f"{source}: {key!r} should be {names}, got {type(value).__name__} {value!r:.60}")
    return value  # type: ignore[return-value]


def with_id(location: str, record: Any, key: str) -> str:
    """``location`` plus the record's id when it has one, e.g. ``questions.json#12 (question_id 7)``."""
    if isinstance(record, dict) and isinstance(record.get(key), (str, int)):
        return f"{location} ({key} {record[key]})"
    return location


def require_text(record: Any, key: str, source: str) -> str:
    """A non-empty string field (after stripping)."""
    value = require(record, key, str, source).strip()
    if not value:
        raise DataFormatError(f"{source}: {key!r} is empty")
    return value


def optional_answers(record: Any, source: str) -> tuple[str, ...]:
    """``record["answers"]`` as a non-empty tuple of strings, or ``()`` when the record has none (a test split)."""
    if "answers" not in record:
        return ()
    answers = require(record, "answers", list, source)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise DataFormatError(f"{source}: 'answers' should be a non-empty list of strings")
    return tuple(answers)
