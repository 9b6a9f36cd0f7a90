"""Training data read from litdata shards (written by ``mmft optimize``): a reader the MultitaskDataModule takes
beside the in-memory ones, the map-style Dataset over its items, and the per-item decoding that turns a shard item
into the :class:`Sample` a model's collate receives.

The shards are read by index, not streamed in litdata's order: litdata's ``StreamingDataset[i]`` reads any item by
its global index (a local chunk in place; a remote one fetched into the cache on demand). So a shard set is a
map-style Dataset of known length and the DataModule's own :class:`~data_modules.sampler.MultitaskBatchSampler`
draws its batches exactly as for examples held in memory: every ``sampling``, per-task batch sizes,
``group_by_modality_length``, DDP sharding with DistributedSampler's padding and an exact mid-epoch resume from the
DataModule's state. What the sampler needs of each item (task, modality and length) comes from the shard index
(:mod:`data_modules.shard_index`), so nothing is read before its batch is drawn.

Checks happen per sample, in the DataLoader workers: an image or video that cannot be decoded, or an example the
model's collate finds too long for its ``max_length`` (``check_length``; the shards hold no tokens, so the same
shards serve any model), raises or, under ``on_error="skip"``, becomes a :class:`SkippedSample` that the DataModule
counts, as the in-memory path counts its media.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from data_modules.datasets import SkippedSample
from data_modules.formats.base import TOO_LONG, DataFormatError, OnError
from data_modules.media import FrameSampling, MediaError, decode_image, load_video_frames
from data_modules.records import Example, LengthCheck, Sample
from data_modules.shard_index import ShardIndex, ShardIndexError, is_uri, read_shard_index
from data_modules.shards import StoredFrames, item_to_example
from mmft.errors import InputError


def litdata() -> Any:
    """The litdata module, or an ImportError that says how to install it (it is an optional dependency)."""
    try:
        import litdata as module
    except ImportError:
        raise ImportError("streaming shards need litdata: pip install 'mmft[stream]'") from None
    return module


class StreamingShards:
    """Training examples read from a shard set written by ``mmft optimize``, each keeping the task it was written
    with (one set may hold several tasks; the DataModule pools them with other readers' examples by task).

    Args:
        input_dir: a shard folder (litdata's ``index.json`` and mmft's ``mmft_index.json``) or an object-store URI
            (``s3://...``), passed to litdata unchanged.
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

    @cached_property
    def index(self) -> ShardIndex:
        """The shard index (read once; a ShardIndexError names the folder when it has none)."""
        return read_shard_index(self.input_dir)

    @property
    def item_tasks(self) -> list[str]:
        """Each item's task, ``task`` overriding the written ones."""
        return [self.task] * len(self.index) if self.task is not None else self.index.tasks

    @property
    def tasks(self) -> list[str]:
        """The tasks of the items, in the order of their first item."""
        return list(dict.fromkeys(self.item_tasks))

    def dataset(self, decode: DecodeShardItem) -> ShardDataset:
        """The items as a map-style Dataset, each decoded by ``decode``."""
        return ShardDataset(self.input_dir, self.index.ids, decode, self.cache_dir, self.max_cache_size)


DAMAGED_SHARD = "damaged shard"


class DamagedShardError(InputError, ValueError):
    """A shard item cannot be read: its chunk file is missing, truncated or corrupt; the message names the chunk
    file, the item and its id."""


class ShardDataset(Dataset):
    """Item ``i`` of a shard set, read through litdata by its global index and decoded.

    Each process (each DataLoader worker) opens its own litdata dataset on its first read, as litdata caches per
    process; the open dataset is never pickled or inherited across a fork. Each item's id is checked against the
    shard index, so an index that does not belong to the shards cannot pass unnoticed.

    A local shard folder's chunk files are checked against litdata's ``index.json`` when opened (present, of the
    size written); an item in a missing or truncated chunk, or one that cannot be deserialised, is a
    :class:`DamagedShardError` naming the chunk file and the item, or under ``on_error="skip"`` a counted
    :class:`SkippedSample`: never a wait on a chunk that will not come, never a bare decoding error.
    """

    def __init__(self, input_dir: str, ids: list[str], decode: DecodeShardItem, cache_dir: str | None = None,
                 max_cache_size: str = "100GB") -> None:
        self.input_dir = input_dir
        self.ids = ids
        self.decode = decode
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self._items: Any = None
        self._opened_by: int | None = None
        self._chunks: list[tuple[str, str | None]] = []  # per chunk: its file, what is wrong with it or None
        self._chunk_ends: list[int] = []  # per chunk: the index after its last item

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_items": None, "_opened_by": None, "_chunks": [], "_chunk_ends": []}

    def items(self) -> Any:
        """litdata's dataset over the shards, opened once per process."""
        if self._opened_by != os.getpid():
            items = litdata().StreamingDataset(self.input_dir, cache_dir=self.cache_dir,
                                               max_cache_size=self.max_cache_size)
            written = sum(end - start for start, end in items.region_of_interest)
            if written != len(self.ids):
                raise ShardIndexError(f"{self.input_dir}: the shards hold {written} items, their index "
                                      f"{len(self.ids)}: rewrite the shards with `mmft optimize`")
            chunks = chunk_files(self.input_dir)
            self._chunk_ends = [end for end, _, _ in chunks]
            self._chunks = [(name, damage) for _, name, damage in chunks]
            self._items, self._opened_by = items, os.getpid()
        return self._items

    def __getitem__(self, index: int) -> Sample | SkippedSample:
        items = self.items()
        chunk = bisect.bisect_right(self._chunk_ends, index)
        name, damage = self._chunks[chunk] if chunk < len(self._chunks) else ("a chunk", None)
        if damage is None:
            try:
                example, images, video = item_to_example(items[index])
            except Exception as error:  # litdata and the item's JSON raise many kinds on damaged bytes
                damage = f"cannot be read ({type(error).__name__}: {str(error)[:200]})"
        if damage is not None:
            where = f"{self.input_dir}: item {index} (id {self.ids[index]!r})"
            message = f"{where}: its chunk {name} {damage}: rewrite the shards with `mmft optimize`"
            if self.decode.on_error == "raise":
                raise DamagedShardError(message + ", or set on_error: skip to leave such items out")
            return SkippedSample(where, DAMAGED_SHARD, message)
        if example.id != self.ids[index]:
            raise ShardIndexError(f"{self.input_dir}: item {index} is {example.id!r}, its index says "
                                  f"{self.ids[index]!r}: rewrite the shards with `mmft optimize`")
        return self.decode(example, images, video)


def chunk_files(input_dir: str) -> list[tuple[int, str, str | None]]:
    """Per chunk of a local shard folder, in item order: the item index after its last item, its file name, and
    what is wrong with the file (missing, or not the size litdata's ``index.json`` records), or None. Empty for an
    object-store URI, whose chunks are fetched on demand."""
    if is_uri(input_dir):
        return []
    folder = Path(input_dir)
    try:
        chunks = [(int(c["chunk_size"]), str(c["filename"]), int(c["chunk_bytes"]))
                  for c in json.loads((folder / "index.json").read_text(encoding="utf-8"))["chunks"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DamagedShardError(f"{folder / 'index.json'}: litdata's index cannot be read ({error!r}): rewrite the "
                                "shards with `mmft optimize`") from None
    found, end = [], 0
    for size, filename, written in chunks:
        end += size
        path = folder / filename
        damage = None
        if not path.is_file():
            damage = "is missing"
        elif path.stat().st_size != written:
            damage = f"holds {path.stat().st_size} bytes, not the {written} written (truncated?)"
        found.append((end, filename, damage))
    return found


class DecodeShardItem:
    """A shard item's Example and media bytes -> :class:`Sample` (media decoded) or :class:`SkippedSample`, in the
    DataLoader workers.

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

    def __call__(self, example: Example, images: list[bytes],
                 stored_video: bytes | StoredFrames | None) -> Sample | SkippedSample:
        if self.task is not None and example.task != self.task:
            example = replace(example, task=self.task)
        try:
            if self.check_length is not None:
                verdict = self.check_length(example, True)
                if verdict.problem is not None:
                    raise DataFormatError(f"data.train: {verdict.problem}", TOO_LONG)
            if not self.load_media:
                return Sample(example, on_error=self.on_error)
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
            return Sample(example, pixels, on_error=self.on_error)
        return Sample(example, pixels, video.frames, video.times, on_error=self.on_error)
