"""Training data streamed from litdata shards (written by ``mmft optimize``): a reader the MultitaskDataModule takes
beside the in-memory ones, and the per-item decoding that turns a shard item into the :class:`Sample` a model's
collate receives.

litdata does the rest: each rank and DataLoader worker reads its own share of the chunks (every example once per
epoch; under DDP litdata drops the last few examples so that every rank gets as many, ``drop_last``), chunks are
downloaded ahead from object stores, and ``StreamingDataLoader.state_dict`` records how many samples each worker has
yielded, which Lightning's fit loop saves in every checkpoint and restores on resume: a run resumed mid-epoch goes on
with the next batch of the uninterrupted run.

Checks happen per sample, in the workers, as the in-memory path does for media: an image or video that cannot be
decoded, or an example the model's collate finds too long for its ``max_length`` (``check_length``; the shards hold
no tokens, so the same shards serve any model), raises or, under ``on_error="skip"``, becomes a
:class:`SkippedSample` that the DataModule counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from data_modules.datasets import SkippedSample
from data_modules.formats.base import TOO_LONG, DataFormatError, OnError
from data_modules.media import FrameSampling, MediaError, decode_image, load_video_frames
from data_modules.records import Example, LengthCheck, Sample
from data_modules.shards import StoredFrames, item_to_example


def litdata() -> Any:
    """The litdata module, or an ImportError that says how to install it (it is an optional dependency)."""
    try:
        import litdata as module
    except ImportError:
        raise ImportError("streaming shards need litdata: pip install 'mmft[stream]'") from None
    return module


class StreamingShards:
    """Training examples streamed from shards written by ``mmft optimize``, every task's examples shuffled together.

    Args:
        input_dir: a shard folder (with litdata's ``index.json``) or an object-store URI (``s3://...``), passed to
            litdata unchanged.
        task: give every example this task (default: None, each keeps the task it was written with).
        on_error: ``raise`` or ``skip`` samples whose media cannot be decoded or that are too long for the model;
            None: the DataModule's policy.
        cache_dir: where chunks of a remote dataset are cached (litdata's default when None).
        max_cache_size: the most the cache may hold, e.g. ``"50GB"``.
    """

    def __init__(
        self,
        input_dir: str,
        task: str | None = None,
        on_error: OnError | None = None,
        cache_dir: str | None = None,
        max_cache_size: str = "100GB",
    ) -> None:
        if on_error not in (None, "raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.input_dir = str(input_dir)
        self.task = task
        self.on_error = on_error
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size

    def __repr__(self) -> str:
        return f"StreamingShards(task={self.task!r}, {self.input_dir})"

    def dataset(self, decode: DecodeShardItem, seed: int, shuffle: bool = True) -> Any:
        """litdata's ``StreamingDataset`` over the shards, each item decoded by ``decode``."""
        return litdata().StreamingDataset(self.input_dir, cache_dir=self.cache_dir, shuffle=shuffle, seed=seed,
                                max_cache_size=self.max_cache_size, transform=decode)


class DecodeShardItem:
    """A shard item -> :class:`Sample` (media decoded) or :class:`SkippedSample`, in the DataLoader workers.

    A class rather than a closure, so that workers can pickle it.
    """

    def __init__(
        self,
        task: str | None,
        on_error: OnError,
        load_media: bool = True,
        frame_sampling: FrameSampling | int = 8,
        check_length: Callable[[Example, bool], LengthCheck] | None = None,
    ) -> None:
        self.task = task
        self.on_error = on_error
        self.load_media = load_media
        self.frame_sampling = frame_sampling
        self.check_length = check_length

    def __call__(self, item: dict[str, Any]) -> Sample | SkippedSample:
        example, images, stored_video = item_to_example(item)
        if self.task is not None and example.task != self.task:
            example = replace(example, task=self.task)
        try:
            if self.check_length is not None:
                verdict = self.check_length(example, True)
                if verdict.problem is not None:
                    raise DataFormatError(f"data.train: {verdict.problem}", TOO_LONG)
            if not self.load_media:
                return Sample(example)
            pixels = [decode_image(data, path, example.source) for data, path in zip(images, example.images)]
            video = None
            if isinstance(stored_video, StoredFrames):  # pre-extracted: refused if sampled otherwise, never skipped
                video = stored_video.decode(example, self.frame_sampling)
            elif stored_video is not None:
                video = load_video_frames(example.video, self.frame_sampling, example.source, span=example.video_span,
                                          data=stored_video)
        except (MediaError, DataFormatError) as error:
            if self.on_error == "raise":
                raise
            return SkippedSample(example.source, error.reason, str(error))
        if video is None:
            return Sample(example, pixels)
        return Sample(example, pixels, video.frames, video.times)
