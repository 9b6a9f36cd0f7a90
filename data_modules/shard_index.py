"""The shard index: each shard item's task, id and length, written by ``mmft optimize`` beside litdata's own files.

The DataModule's batch sampler needs every training example's task (one-task batches, per-task batch sizes) and
modality and length (``group_by_modality_length``) before an epoch starts. Reading them from the shard items would
mean reading every item's media bytes; the index holds them in one small JSON file, ``mmft_index.json`` in the shard
folder, item ``i`` of the index being item ``i`` of the shards (litdata's global index). The ids let the reader check,
item by item, that the index belongs to the shards it reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from data_modules.records import Example
from mmft.errors import InputError
from mmft.files import write_text_atomic

INDEX_NAME = "mmft_index.json"
FORMAT_VERSION = 1


def is_uri(location: str) -> bool:
    """Whether ``location`` names an object store (``s3://``, ``gs://``, ...) rather than a local folder."""
    return "://" in location


class ShardIndexError(InputError, ValueError):
    """A shard set's index is missing, malformed or does not match its shards; the message names the folder."""


@dataclass(frozen=True)
class ShardIndex:
    """Per shard item, in the shards' order: its task, its id and its modality length (the DataModule's
    ``modality_length``: words of every turn, negated for text-only examples)."""

    tasks: list[str]
    ids: list[str]
    lengths: list[int]

    @classmethod
    def of(cls, examples: Sequence[Example], length: Callable[[Example], int]) -> ShardIndex:
        """The index of ``examples`` written in this order."""
        return cls([e.task for e in examples], [e.id for e in examples], [length(e) for e in examples])

    def __len__(self) -> int:
        return len(self.ids)

    def to_json(self) -> str:
        names = list(dict.fromkeys(self.tasks))
        number = {name: i for i, name in enumerate(names)}
        return json.dumps({"format": FORMAT_VERSION, "task_names": names, "task": [number[t] for t in self.tasks],
                           "id": self.ids, "length": self.lengths}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, where: str) -> ShardIndex:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT_VERSION:
                raise ShardIndexError(f"{where}: index format {data.get('format')!r}, expected {FORMAT_VERSION}: "
                                      "rewrite the shards with this version's `mmft optimize`")
            names, tasks, ids, lengths = data["task_names"], data["task"], data["id"], data["length"]
            if not len(tasks) == len(ids) == len(lengths):
                raise ShardIndexError(f"{where}: task, id and length lists differ in length")
            return cls([names[t] for t in tasks], [str(i) for i in ids], [int(n) for n in lengths])
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as error:
            raise ShardIndexError(f"{where}: not a shard index ({type(error).__name__}: {error})") from None


def write_shard_index(output_dir: str, index: ShardIndex) -> None:
    """Write ``index`` into the shard folder ``output_dir`` (a local folder: through a temporary name and a rename;
    an object-store URI: through fsspec, whose upload replaces the object whole)."""
    if is_uri(output_dir):
        import fsspec

        with fsspec.open(f"{output_dir.rstrip('/')}/{INDEX_NAME}", "w", encoding="utf-8") as file:
            file.write(index.to_json())
        return
    write_text_atomic(Path(output_dir) / INDEX_NAME, index.to_json())


def read_shard_index(input_dir: str) -> ShardIndex:
    """The index of the shard folder (or object-store URI) ``input_dir``; a ShardIndexError naming the folder and
    the command that writes the index when it has none."""
    where = f"{input_dir.rstrip('/')}/{INDEX_NAME}"
    try:
        if is_uri(input_dir):
            import fsspec

            with fsspec.open(where, "r", encoding="utf-8") as file:
                text = file.read()
        else:
            text = Path(where).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ShardIndexError(
            f"{input_dir}: no shard index ({INDEX_NAME}), which training needs to batch the shards by task, modality "
            f"and length without reading them; write the shards with `mmft optimize --config <your configs> --out "
            f"{input_dir}`"
        ) from None
    return ShardIndex.from_json(text, where)
