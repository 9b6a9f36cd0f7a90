"""What the DataModule may ask of a model's collate: the seam between ``data_modules`` and ``mmft.models``.

A model hands the DataModule its collate (the CLI links ``data.collate_fn`` to ``model.collate``). Any callable that
turns a list of :class:`~data_modules.records.Sample` into a batch will do; a :class:`Collate` (every mmft model's
is one) also answers the three questions below, and the DataModule asks them:

- ``check_length(example, training)``: whether an example fits the model's token budget, asked once per example
  when the data is read (in-memory readers) or per sample in the workers (streamed shards), never mid-epoch;
- ``needs_media``: False when the collate reads pre-extracted visual features, so images are neither checked nor
  decoded;
- ``video_frames``: the frames per video the model's architecture fixes (VL-BART embeds each frame's position up to
  ``max_images``), or None to let ``data.num_frames`` decide; a fixed number is the DataModule's ``num_frames``, so
  the count lives in one setting.

A plain callable gets no length checks and always its samples' decoded media. Collates run in DataLoader workers,
so they must pickle.

With ``data.packing`` the collate must also be a :class:`Packs`: its training batches are then
``pack(collate(samples), max_tokens)`` (:class:`PackedCollate`), rows of whole examples of at most ``max_tokens``
tokens, and ``check_packing()`` is asked once, when the DataModule is built, so a model that cannot pack is refused
before any data is read.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from data_modules.records import Example, LengthCheck, Sample


@runtime_checkable
class Collate(Protocol):
    """A model's collate, with the length check, media need and frame count the DataModule asks of it."""

    needs_media: bool
    video_frames: int | None

    def __call__(self, samples: list[Sample]) -> dict[str, Any]: ...

    def check_length(self, example: Example, training: bool) -> LengthCheck: ...


@runtime_checkable
class Packs(Protocol):
    """A collate whose training batches can be packed into one padding-free row."""

    def pack(self, batch: dict[str, Any], row_tokens: int | None = None) -> dict[str, Any]: ...

    def check_packing(self) -> None: ...


class PackedCollate:
    """Training batches as packed rows of at most ``row_tokens`` tokens: ``collate.pack(collate(samples),
    row_tokens)`` (a class, so workers can pickle it)."""

    def __init__(self, collate: Packs, row_tokens: int) -> None:
        self.collate = collate
        self.row_tokens = row_tokens

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        return self.collate.pack(self.collate(samples), self.row_tokens)
