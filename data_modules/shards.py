"""The item a streaming shard holds for one Example: its fields as JSON text and its media files' bytes.

Shards hold Examples, never tokens (a model's collate still tokenises) and media as the files' own encoded bytes
(JPEG, PNG, MP4), decoded at read time by the same :mod:`data_modules.media` functions as files on disk. Every item
has the same two fields, whatever its media, as litdata requires: ``record`` (JSON) and ``media`` (the images' bytes,
then the video's, concatenated; ``record["media_sizes"]`` splits them).

A video may instead be stored as its frames, decoded once when the shards are written (:class:`FrameExtraction`):
each frame an encoded image, with ``record["video_frames"]`` giving their times, the codec and the sampling that
picked them, so that a training config that samples frames otherwise is refused rather than silently served them.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image

from data_modules.media import MISSING, FrameSampling, MediaError, VideoFrames, decode_image, load_video_frames
from data_modules.records import Example, Turn
from mmft.errors import InputError

FORMAT_VERSION = 2  # 2: a video may be stored as pre-extracted frames
READABLE_FORMATS = (1, 2)  # format 1 items (videos as file bytes only) read as they always did
FrameCodec = Literal["png", "jpeg"]
SAMPLING_KEYS = "data.num_frames / data.video_fps / data.max_frames"


class FrameSamplingMismatch(InputError, ValueError):
    """Shards hold video frames sampled otherwise than the training config asks: a config error, never skipped."""


def sampling_fields(sampling: FrameSampling) -> dict[str, Any]:
    """The settings that decide which frames ``sampling`` picks (``num_frames`` is unused when ``fps`` is set)."""
    if sampling.fps is None:
        return {"num_frames": sampling.num_frames}
    return {"video_fps": sampling.fps, "max_frames": sampling.max_frames}


@dataclass(frozen=True)
class FrameExtraction:
    """Store videos as frames decoded once at write time, with the readers' :func:`load_video_frames` and the
    training config's ``sampling``: ``png`` keeps the decoded pixels exactly (training sees what it would from the
    video file); ``jpeg`` (quality 95, no chroma subsampling) is a few levels per pixel off (which is
    smaller, and faster to decode, depends on the footage: PNG on flat synthetic frames)."""

    sampling: FrameSampling
    codec: FrameCodec = "png"

    def __post_init__(self) -> None:
        if self.codec not in ("png", "jpeg"):
            raise ValueError(f"frame codec must be 'png' or 'jpeg', got {self.codec!r}")

    def extract(self, example: Example) -> tuple[list[bytes], dict[str, Any]]:
        """The encoded frames of ``example``'s video and their record entry; a MediaError names a bad video."""
        video = load_video_frames(example.video, self.sampling, example.source, span=example.video_span)
        blobs = [self._encode(frame) for frame in video.frames.numpy()]
        entry = {"codec": self.codec, "sampling": sampling_fields(self.sampling), "times": list(video.times)}
        return blobs, entry

    def _encode(self, frame: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        options = {} if self.codec == "png" else {"quality": 95, "subsampling": 0}
        Image.fromarray(frame).save(buffer, format=self.codec.upper(), **options)
        return buffer.getvalue()


class StoredFrames(NamedTuple):
    """A video's pre-extracted frames as a shard item holds them: encoded images, their times, the sampling."""

    blobs: list[bytes]
    times: tuple[float, ...]
    sampling: dict[str, Any]

    def decode(self, example: Example, sampling: FrameSampling | int) -> VideoFrames:
        """The frames as :func:`load_video_frames` returns them; refuses a ``sampling`` other than the stored one."""
        wanted = sampling_fields(FrameSampling(sampling) if isinstance(sampling, int) else sampling)
        if wanted != self.sampling:
            raise FrameSamplingMismatch(
                f"{example.source}: the shards hold the frames of {example.video} sampled with {self.sampling}, but "
                f"{SAMPLING_KEYS} ask for {wanted}: set them as the shards were written, or rewrite the shards "
                "with `mmft optimize --video-frames` under this config (or without it: videos as file bytes serve "
                "any sampling)"
            )
        pixels = [np.asarray(decode_image(blob, f"{example.video} (frame {i})", example.source))
                  for i, blob in enumerate(self.blobs)]
        return VideoFrames(torch.from_numpy(np.stack(pixels)), self.times)


def example_to_item(example: Example, frames: FrameExtraction | None = None) -> dict[str, Any]:
    """The shard item of ``example``, its media files read as bytes, or with ``frames`` its video as pre-extracted
    frames (a MediaError names a file that cannot be read or decoded)."""
    stored_frames = frames is not None and example.video is not None
    paths = list(example.images) + ([example.video] if example.video is not None and not stored_frames else [])
    blobs = []
    for path in paths:
        try:
            blobs.append(Path(path).read_bytes())
        except OSError as error:
            raise MediaError(f"cannot read the file ({error.strerror})", path=path, source=example.source,
                             reason=MISSING) from None
    video_frames = None
    if stored_frames:
        frame_blobs, video_frames = frames.extract(example)  # type: ignore[union-attr]
        blobs += frame_blobs
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
        "video_frames": video_frames,
    }
    return {"record": json.dumps(record, ensure_ascii=False), "media": b"".join(blobs)}


def item_to_example(item: dict[str, Any]) -> tuple[Example, list[bytes], bytes | StoredFrames | None]:
    """The Example of a shard item (its media paths as they were when the shards were written), its images' bytes
    in order and its video: the file's bytes, its :class:`StoredFrames`, or None without a video."""
    record = json.loads(item["record"])
    if record.get("format") not in READABLE_FORMATS:
        raise ValueError(f"shard item of format {record.get('format')!r}, expected one of {READABLE_FORMATS}: "
                         "rewrite the shards with this version's `mmft optimize`")
    media, blobs, start = item["media"], [], 0
    for size in record["media_sizes"]:
        blobs.append(bytes(media[start : start + size]))
        start += size
    stored = record.get("video_frames")
    video: bytes | StoredFrames | None = None
    if stored is not None:
        count = len(stored["times"])
        video = StoredFrames(blobs[len(blobs) - count :], tuple(stored["times"]), stored["sampling"])
        del blobs[len(blobs) - count :]
    elif record["video"] is not None:
        video = blobs.pop()
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
