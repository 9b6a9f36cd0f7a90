"""COCO captions in the Karpathy split (``dataset_coco.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from data_modules.formats.base import DataFormatError, OnError, Reader, load_json, require, require_text, with_id
from data_modules.records import Example, Turn

SPLITS = {"train": {"train", "restval"}, "restval": {"restval"}, "val": {"val"}, "test": {"test"}}


class CocoKarpathy(Reader):
    """``{images: [{filepath, filename, cocoid, split, sentences: [{raw, tokens}]}]}``; images at
    ``<image_folder>/<filepath>/<filename>``. ``split="train"`` includes ``restval`` (as everyone trains on it).

    ``per_caption`` (default: True for the train split, False otherwise) decides between one Example per caption
    (training: each caption is a target; ids ``<cocoid>_<k>``) and one Example per image (evaluation: CIDEr-D scores
    one generated caption per image against all of them; the first caption is the target for a validation loss).
    ``references`` always holds every caption of the image. ``prompt`` is the user text (empty by default: the
    model adds its task prefix, e.g. VL-BART's ``caption:``).
    """

    def __init__(
        self,
        dataset_json: str | Path,
        image_folder: str | Path,
        split: Literal["train", "restval", "val", "test"],
        per_caption: bool | None = None,
        prompt: str = "",
        task: str = "coco_caption",
        on_error: OnError | None = None,
    ) -> None:
        super().__init__(dataset_json, task, on_error)
        if split not in SPLITS:
            raise ValueError(f"CocoKarpathy split must be one of {sorted(SPLITS)}, got {split!r}")
        self.image_folder = Path(image_folder)
        self.split = split
        self.per_caption = split == "train" if per_caption is None else per_caption
        self.prompt = prompt

    def _records(self):
        data = load_json(self.path, "dataset_json")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataFormatError(f"{self.path}: expected a JSON object with a list under 'images'")
        wanted = SPLITS[self.split]
        for index, record in enumerate(data["images"]):
            split = record.get("split") if isinstance(record, dict) else None
            if not isinstance(split, str) or split in wanted:  # a record without a valid split is reported as bad
                yield f"{self.path}#{index}", record

    def _parse(self, location: str, record: Any) -> list[Example]:
        source = with_id(location, record, "cocoid")
        cocoid = require(record, "cocoid", int, source)
        require(record, "split", str, source)
        relative = Path(require_text(record, "filepath", source)) / require_text(record, "filename", source)
        image = self.media_path(self.image_folder, str(relative), source)
        sentences = require(record, "sentences", list, source)
        if not sentences:
            raise DataFormatError(f"{source}: no captions in 'sentences'")
        captions = tuple(require_text(s, "raw", f"{source} sentence {k}") for k, s in enumerate(sentences))
        user = Turn("user", self.prompt)
        if self.per_caption:
            return [
                Example(self.task, f"{cocoid}_{k}", (user, Turn("assistant", c)), (image,), None, captions, source)
                for k, c in enumerate(captions)
            ]
        first = Turn("assistant", captions[0])
        return [Example(self.task, str(cocoid), (user, first), (image,), None, captions, source)]
