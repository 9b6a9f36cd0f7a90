"""The VALUE benchmark's video-and-subtitle formats: TVQA / How2QA (multiple-choice QA) and TVC / YC2C (captions).

VL-Adapter's video recipe (and DoRA's) trains on these four tasks. Videos are ``<video_folder>/<vid_name><ext>``;
subtitles are a JSON-lines side file ``{vid_name, sub: [{start, end, text}]}`` shared by every record of a video.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from data_modules.formats.base import DataFormatError, OnError, Reader, iter_json_lines, require, require_text, with_id
from data_modules.records import Example, Turn

NUM_CHOICES = 5
NUMBER = (int, float)


class Subtitle(NamedTuple):
    start: float
    end: float
    text: str


BadLines = list[tuple[str, DataFormatError]]


def read_subtitles(path: Path, argument: str) -> tuple[dict[str, list[Subtitle]], BadLines]:
    """``vid_name -> subtitles`` from a subtitles file, and its bad lines as ``(location, error)``.

    The reader passes the bad lines on with its records, so that each one raises or, under ``on_error="skip"``, is
    counted in the reader's skip report (the video it belonged to then has no subtitles from it). A duplicate
    ``vid_name`` is a bad line too; the first one counts.
    """
    subtitles: dict[str, list[Subtitle]] = {}
    first_seen: dict[str, str] = {}
    bad: BadLines = []
    for location, record in iter_json_lines(path, argument):
        try:
            if isinstance(record, DataFormatError):
                raise record
            source = with_id(location, record, "vid_name")
            vid_name = require_text(record, "vid_name", source)
            if vid_name in first_seen:
                raise DataFormatError(f"{source}: duplicate vid_name (first seen at {first_seen[vid_name]})")
            lines = require(record, "sub", list, source)
            subtitles[vid_name] = [_subtitle(line, f"{source} sub {k}") for k, line in enumerate(lines)]
            first_seen[vid_name] = location
        except DataFormatError as error:
            bad.append((location, error))
    return subtitles, bad


def _subtitle(line: Any, source: str) -> Subtitle:
    start, end = require(line, "start", NUMBER, source), require(line, "end", NUMBER, source)
    return Subtitle(float(start), float(end), require(line, "text", str, source).strip())


def join_texts(subtitles: list[Subtitle]) -> str:
    return " ".join(s.text for s in subtitles if s.text)


class TVQA(Reader):
    """VALUE's TVQA format, also How2QA's (``task="how2qa"``): five-way multiple-choice questions about a clip.

    ``qa_path``: JSON lines ``{vid_name, q, a0, a1, a2, a3, a4, answer_idx, qid, ts}``; ``subtitles``: JSON lines
    ``{vid_name, sub: [{start, end, text}]}`` (a video without a line there has no subtitles). One Example per
    question, prompt ``"[Subs] <all subtitles of the clip> [Q] <q> [Choices] a0: <a0> ... a4: <a4>"``, target and
    reference ``"a<answer_idx>"``; test files have no ``answer_idx`` and give unanswered Examples.

    The whole clip is used (no ``video_span``): ``ts`` marks the moment the question is about, an oracle that VALUE's
    setting (and VL-Adapter's) does not give the model, so it is not read.
    """

    def __init__(
        self,
        qa_path: str | Path,
        subtitles: str | Path,
        video_folder: str | Path,
        task: str = "tvqa",
        video_extension: str = ".mp4",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(qa_path, task, on_error)
        self.subtitles = Path(subtitles)
        self.video_folder = Path(video_folder)
        self.video_extension = video_extension
        self._subtitles: dict[str, list[Subtitle]] = {}

    def _records(self):
        self._subtitles, bad = read_subtitles(self.subtitles, "subtitles")
        yield from bad  # raised, or counted under on_error="skip", as bad records are
        yield from iter_json_lines(self.path, "qa_path")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "qid")
        qid = require(record, "qid", (int, str), source)
        vid_name = require_text(record, "vid_name", source)
        question = require_text(record, "q", source)
        choices = " ".join(f"a{k}: {require_text(record, f'a{k}', source)}" for k in range(NUM_CHOICES))
        subtitles = join_texts(self._subtitles.get(vid_name, []))
        turns = [Turn("user", f"[Subs] {subtitles} [Q] {question} [Choices] {choices}")]
        references: tuple[str, ...] = ()
        if "answer_idx" in record:
            answer = f"a{_answer_index(record, source)}"
            turns.append(Turn("assistant", answer))
            references = (answer,)
        video = self.media_path(self.video_folder, f"{vid_name}{self.video_extension}", source)
        return [Example(self.task, str(qid), tuple(turns), (), video, references, source)]


def _answer_index(record: dict, source: str) -> int:
    index = require(record, "answer_idx", int, source)
    if not 0 <= index < NUM_CHOICES:
        raise DataFormatError(f"{source}: 'answer_idx' should be 0..{NUM_CHOICES - 1}, got {index}")
    return index


class VideoCaptions(Reader):
    """VALUE's TVC format, also YC2C's (``task="yc2c"``): captions of a moment of a video.

    ``caption_path``: JSON lines ``{vid_name, duration, ts: [start, end], clip_id, descs: [{desc}, ...]}``; the
    Example's ``video_span`` is ``ts`` (seconds), so frames are sampled inside the moment. ``duration`` is not read:
    the video's own length is what counts, and a span outside it fails when the frames are decoded.

    The prompt is ``"[Subs] <subtitles overlapping ts>"`` when ``subtitles`` is given, else ``""`` (the model adds its
    task prefix). As in :class:`~data_modules.formats.coco_karpathy.CocoKarpathy`, ``per_caption=True`` (training)
    gives one Example per caption (ids ``<clip_id>_<k>``) and ``per_caption=False`` (evaluation: CIDEr scores one
    caption per clip against all of them) one Example per clip whose target is the first caption. ``references``
    always holds every caption of the clip.
    """

    def __init__(
        self,
        caption_path: str | Path,
        video_folder: str | Path,
        subtitles: str | Path | None = None,
        per_caption: bool = False,
        task: str = "tvc",
        video_extension: str = ".mp4",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(caption_path, task, on_error)
        self.video_folder = Path(video_folder)
        self.subtitles = Path(subtitles) if subtitles is not None else None
        self.per_caption = per_caption
        self.video_extension = video_extension
        self._subtitles: dict[str, list[Subtitle]] = {}

    def _records(self):
        if self.subtitles is not None:
            self._subtitles, bad = read_subtitles(self.subtitles, "subtitles")
            yield from bad  # raised, or counted under on_error="skip", as bad records are
        yield from iter_json_lines(self.path, "caption_path")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "clip_id")
        clip_id = require(record, "clip_id", (int, str), source)
        vid_name = require_text(record, "vid_name", source)
        span = time_span(record, source)
        descs = require(record, "descs", list, source)
        if not descs:
            raise DataFormatError(f"{source}: no captions in 'descs'")
        captions = tuple(require_text(d, "desc", f"{source} desc {k}") for k, d in enumerate(descs))
        user = Turn("user", self._prompt(vid_name, span))
        video = self.media_path(self.video_folder, f"{vid_name}{self.video_extension}", source)
        if self.per_caption:
            return [
                Example(self.task, f"{clip_id}_{k}", (user, Turn("assistant", c)), (), video, captions, source, span)
                for k, c in enumerate(captions)
            ]
        first = Turn("assistant", captions[0])
        return [Example(self.task, str(clip_id), (user, first), (), video, captions, source, span)]

    def _prompt(self, vid_name: str, span: tuple[float, float]) -> str:
        if self.subtitles is None:
            return ""
        start, end = span
        overlapping = [s for s in self._subtitles.get(vid_name, []) if s.start < end and s.end > start]
        return f"[Subs] {join_texts(overlapping)}"


def time_span(record: dict, source: str) -> tuple[float, float]:
    """``ts`` as ``(start, end)`` seconds, checked: two numbers with 0 <= start < end."""
    ts = require(record, "ts", list, source)
    if len(ts) != 2 or not all(isinstance(t, NUMBER) and not isinstance(t, bool) for t in ts) or not 0 <= ts[0] < ts[1]:
        raise DataFormatError(f"{source}: 'ts' should be [start, end] seconds with 0 <= start < end, got {ts!r:.60}")
    return float(ts[0]), float(ts[1])
