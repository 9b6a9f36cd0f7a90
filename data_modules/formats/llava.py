"""LLaVA instruction-tuning data (``llava_v1_5_mix665k.json`` and the like)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.formats.base import DataFormatError, OnError, Reader, iter_json_records, require, with_id
from data_modules.records import IMAGE_MARKER, Example, Turn
ROLES = {"human": "user", "gpt": "assistant"}


class LlavaInstruct(Reader):
    """A JSON list of ``{id, image?, conversations: [{from: human|gpt, value}]}``; ``image`` is relative to
    ``image_folder`` and absent for text-only records.

    Rules (each violation is a per-record DataFormatError naming the file, index and id):

    - turns alternate human, gpt, human, gpt ... and end with gpt (an unanswered last question teaches nothing);
    - a record with ``image`` has exactly one ``<image>`` marker, in its first human turn; a record without ``image``
      has none. LLaVA's own loader would silently ignore an image whose marker is missing; here that is an error,
      because the data author almost certainly meant the model to see the image;
    - the marker is removed from the text (the model's collate puts the image at the start of the first user turn,
      where LLaVA's preprocessing moves it); only multi-image-free records are supported (``image`` is one string).

    ``references`` holds the last answer, so instruction data can also be scored by exact match.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_folder: str | Path = "",
        task: str = "llava_instruct",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(json_path, task, on_error)
        self.image_folder = Path(image_folder)

    def _records(self):
        return iter_json_records(self.path, "json_path")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "id")
        record_id = require(record, "id", (str, int), source)
        conversation = require(record, "conversations", list, source)
        image = record.get("image")
        if image is not None and not (isinstance(image, str) and image.strip()):
            raise DataFormatError(
                f"{source}: 'image' should be one relative path (a non-empty string), got {image!r:.60}; "
                "multi-image records are not supported"
            )
        if not conversation:
            raise DataFormatError(f"{source}: empty conversation")
        if len(conversation) % 2:
            raise DataFormatError(f"{source}: the conversation ends with a human turn (no answer to learn)")
        turns = []
        markers = 0
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
            count = text.count(IMAGE_MARKER)
            if count and number != 0:
                raise DataFormatError(f"{where}: {IMAGE_MARKER} marker outside the first human turn")
            markers += count
            text = text.replace(IMAGE_MARKER, "").strip()
            if not text and not (number == 0 and image):
                raise DataFormatError(f"{where}: empty message")
            turns.append(Turn(ROLES[speaker], text))
        if image and markers != 1:
            problem = "no <image> marker" if markers == 0 else f"{markers} <image> markers"
            raise DataFormatError(f"{source}: has an 'image' but {problem} (exactly one is expected)")
        if not image and markers:
            raise DataFormatError(f"{source}: has an {IMAGE_MARKER} marker but no 'image'")
        return [
            Example(
                task=self.task,
                id=str(record_id),
                turns=tuple(turns),
                images=(self.media_path(self.image_folder, image, source),) if image else (),
                references=(turns[-1].text,),
                source=source,
            )
        ]
