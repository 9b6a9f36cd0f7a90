"""MSRVTT-QA: open-ended questions about short videos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_modules.formats.base import OnError, Reader, iter_json_records, require, require_text, with_id
from data_modules.records import Example, Turn


class MSRVTTQA(Reader):
    """``[{id, video_id, question, answer}]`` (``train_qa.json`` etc.); videos ``<video_folder>/video<video_id>.mp4``.

    Scored by exact match against ``answer``.
    """

    def __init__(
        self, json_path: str | Path, video_folder: str | Path, task: str = "msrvtt_qa", on_error: OnError | None = None
    ) -> None:
        super().__init__(json_path, task, on_error)
        self.video_folder = Path(video_folder)

    def _records(self):
        return iter_json_records(self.path, "json_path")

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "id")
        record_id = require(record, "id", int, source)
        video_id = require(record, "video_id", int, source)
        answer = require_text(record, "answer", source)
        return [
            Example(
                task=self.task,
                id=str(record_id),
                turns=(Turn("user", require_text(record, "question", source)), Turn("assistant", answer)),
                video=self.video_folder / f"video{video_id}.mp4",
                references=(answer,),
                source=source,
            )
        ]
