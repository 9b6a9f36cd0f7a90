"""The item a streaming shard holds for one Example: its fields as JSON text and its media files' bytes.

Shards hold Examples, never tokens (a model's collate still tokenises) and media as the files' own encoded bytes
(JPEG, PNG, MP4), decoded at read time by the same :mod:`data_modules.media` functions as files on disk. Every item
has the same two fields, whatever its media, as litdata requires: ``record`` (JSON) and ``media`` (the images' bytes,
then the video's, concatenated; ``record["media_sizes"]`` splits them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_modules.media import MISSING, MediaError
from data_modules.records import Example, Turn

FORMAT_VERSION = 1


def example_to_item(example: Example) -> dict[str, Any]:
    """The shard item of ``example``, its media files read as bytes (a MediaError names a file that cannot be)."""
    paths = list(example.images) + ([example.video] if example.video is not None else [])
    blobs = []
    for path in paths:
        try:
            blobs.append(Path(path).read_bytes())
        except OSError as error:
            raise MediaError(f"cannot read the file ({error.strerror})", path=path, source=example.source,
                             reason=MISSING) from None
    record = {
        "format": FORMAT_VERSION,
        "task": example.task,
        "id": example.id,
        "turns": [[turn.role, turn.text] for turn in example.turns],
        "images": [str(path) for path in example.images],
        "video": None if example.video is None else str(example.video),
        "references": list(example.references),
        "source": example.source,
        "video_span": None if example.video_span is None else list(example.video_span),
        "category": example.category,
        "media_sizes": [len(blob) for blob in blobs],
    }
    return {"record": json.dumps(record, ensure_ascii=False), "media": b"".join(blobs)}


def item_to_example(item: dict[str, Any]) -> tuple[Example, list[bytes], bytes | None]:
    """The Example of a shard item (its media paths as they were when the shards were written), its images' bytes
    in order and its video's bytes (None without a video)."""
    record = json.loads(item["record"])
    if record.get("format") != FORMAT_VERSION:
        raise ValueError(f"shard item of format {record.get('format')!r}, expected {FORMAT_VERSION}: rewrite the "
                         "shards with this version's `mmft optimize`")
    media, blobs, start = item["media"], [], 0
    for size in record["media_sizes"]:
        blobs.append(bytes(media[start : start + size]))
        start += size
    video = blobs.pop() if record["video"] is not None else None
    example = Example(
        task=record["task"],
        id=record["id"],
        turns=tuple(Turn(role, text) for role, text in record["turns"]),
        images=tuple(Path(path) for path in record["images"]),
        video=None if record["video"] is None else Path(record["video"]),
        references=tuple(record["references"]),
        source=record["source"],
        video_span=None if record["video_span"] is None else tuple(record["video_span"]),
        category=record["category"],
    )
    return example, blobs, video
