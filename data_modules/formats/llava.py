"""LLaVA instruction-tuning data (``llava_v1_5_mix665k.json``, LLaVA-OneVision and LLaVA-Video-178K files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.formats.base import DataFormatError, OnError, Reader, iter_json_records, require, with_id
from data_modules.formats.value import time_span
from data_modules.records import IMAGE_MARKER, Example, Turn

ROLES = {"human": "user", "gpt": "assistant"}
VIDEO_MARKER = "<video>"


class LlavaInstruct(Reader):
    """A JSON list of ``{id, image? | video?, conversations: [{from: human|gpt, value}]}``.

    ``image`` is one path or a list of paths relative to ``image_folder`` (LLaVA-OneVision's multi-image records);
    ``video`` is one path relative to ``video_folder`` (LLaVA-Video-178K / OneVision layout; default: the image
    folder), with an optional ``ts: [start, end]`` in seconds, as in VALUE's TVC files, for records about a moment
    of the video (the public files have no span field). Records with neither are text-only.

    Rules (each violation is a per-record DataFormatError naming the file, index and id):

    - turns alternate human, gpt, human, gpt ... and end with gpt (an unanswered last question teaches nothing);
    - markers sit in human turns only; a record with one image has exactly one ``<image>`` marker, in its first human
      turn, and a video record exactly one ``<image>`` or ``<video>`` marker there (LLaVA-NeXT's code writes
      ``<image>``); both are removed from the text (the model's collate puts the media at the start of the first
      user turn, where LLaVA's preprocessing moves it);
    - a record with several images has one ``<image>`` marker per image, in any human turns; they are matched to
      the images in order and stay in the text where they are (see :class:`~data_modules.records.Turn`);
    - a record without media has no marker, and no record has both ``image`` and ``video``. LLaVA's own loader
      would silently ignore an image whose marker is missing; here that is an error, because the data author almost
      certainly meant the model to see the image.

    ``references`` holds the last answer, so instruction data can also be scored by exact match.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_folder: str | Path = "",
        task: str = "llava_instruct",
        on_error: OnError | None = None,
        video_folder: str | Path | None = None,
    ) -> None:
        super().__init__(json_path, task, on_error)
        self.image_folder = Path(image_folder)
        self.video_folder = Path(video_folder) if video_folder is not None else self.image_folder

    def _records(self):
        return iter_json_records(self.path, "json_path")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "id")
        record_id = require(record, "id", (str, int), source)
        conversation = require(record, "conversations", list, source)
        images = _image_paths(record, source)
        video = record.get("video")
        if video is not None and not (isinstance(video, str) and video.strip()):
            raise DataFormatError(
                f"{source}: 'video' should be one relative path (a non-empty string), got {video!r:.60}"
            )
        if images and video is not None:
            raise DataFormatError(f"{source}: has both 'image' and 'video'; a record shows one kind of media")
        if "ts" in record and video is None:
            raise DataFormatError(f"{source}: has a 'ts' time span but no 'video'")
        if not conversation:
            raise DataFormatError(f"{source}: empty conversation")
        if len(conversation) % 2:
            raise DataFormatError(f"{source}: the conversation ends with a human turn (no answer to learn)")
        turns, found = _turns(conversation, len(images), video is not None, source)
        _check_marker_count(found, len(images), video is not None, source)
        return [
            Example(
                task=self.task,
                id=str(record_id),
                turns=tuple(turns),
                images=tuple(self.media_path(self.image_folder, image, source) for image in images),
                video=self.media_path(self.video_folder, video, source) if video is not None else None,
                references=(turns[-1].text,),
                source=source,
                video_span=time_span(record, source) if "ts" in record else None,
            )
        ]


def _turns(conversation: list, num_images: int, has_video: bool, source: str) -> tuple[list[Turn], int]:
    """The checked turns and the number of media markers in them; markers stay in the text only with several
    images (see the class docstring)."""
    several = num_images > 1
    allowed = (IMAGE_MARKER, VIDEO_MARKER) if has_video else (IMAGE_MARKER,)
    turns = []
    found = 0
    for number, message in enumerate(conversation):
        where = f"{source} turn {number}"
        speaker = require(message, "from", str, where)
        text = require(message, "value", str, where)
        expected = "human" if number % 2 == 0 else "gpt"
        if speaker != expected:
            raise DataFormatError(
                f"{where}: 'from' is {speaker!r}, expected {expected!r} "
                "(turns must alternate human/gpt, starting with human)"
            )
        for marker in (IMAGE_MARKER, VIDEO_MARKER):
            if marker not in text:
                continue
            if speaker == "gpt":
                raise DataFormatError(f"{where}: {marker} marker in a gpt turn (markers belong in human turns)")
            if marker not in allowed:
                raise DataFormatError(f"{where}: {marker} marker in a record without a 'video'")
            if number != 0 and not several:
                raise DataFormatError(f"{where}: {marker} marker outside the first human turn")
            found += text.count(marker)
            if not several:
                text = text.replace(marker, "")
        text = text.strip()
        if not text and not (number == 0 and (num_images or has_video)):
            raise DataFormatError(f"{where}: empty message")
        turns.append(Turn(ROLES[speaker], text))
    return turns, found


def _image_paths(record: dict, source: str) -> list[str]:
    """``image`` as a list of relative paths: none, one (a string) or several (a non-empty list of strings)."""
    image = record.get("image")
    if image is None:
        return []
    paths = image if isinstance(image, list) else [image]
    if not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise DataFormatError(
            f"{source}: 'image' should be a relative path or a non-empty list of them, got {image!r:.60}"
        )
    return paths


def _check_marker_count(found: int, num_images: int, has_video: bool, source: str) -> None:
    """One marker per image, one for a video, none without media."""
    if has_video:
        if found != 1:
            raise DataFormatError(
                f"{source}: has a 'video' but {found} {IMAGE_MARKER}/{VIDEO_MARKER} markers (exactly one is expected)"
            )
    elif not num_images:
        if found:
            raise DataFormatError(f"{source}: has an {IMAGE_MARKER} marker but no 'image'")
    elif num_images == 1 and found != 1:
        problem = f"no {IMAGE_MARKER} marker" if found == 0 else f"{found} {IMAGE_MARKER} markers"
        raise DataFormatError(f"{source}: has an 'image' but {problem} (exactly one is expected)")
    elif found != num_images:
        raise DataFormatError(
            f"{source}: has {num_images} images but {found} {IMAGE_MARKER} markers (one per image, matched in order)"
        )
