"""What the DataModule may ask of a model's collate: the seam between ``data_modules`` and ``mmft.models``.

A model hands the DataModule its collate (the CLI links ``data.collate_fn`` to ``model.collate``). Any callable that
turns a list of :class:`~data_modules.records.Sample` into a batch will do; a :class:`Collate` (every mmft model's
is one) also answers the two questions below, and the DataModule asks them:

- ``check_length(example, training)``: whether an example fits the model's token budget, asked once per example
  when the data is read (in-memory readers) or per sample in the workers (streamed shards), never mid-epoch;
- ``needs_media``: False when the collate reads pre-extracted visual features, so images are neither checked nor
  decoded.

A plain callable gets no length checks and always its samples' decoded media. Collates run in DataLoader workers,
so they must pickle.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from data_modules.records import Example, LengthCheck, Sample


@runtime_checkable
class Collate(Protocol):
    """A model's collate, with the length check and media need the DataModule asks of it."""

    needs_media: bool

    def __call__(self, samples: list[Sample]) -> dict[str, Any]: ...

    def check_length(self, example: Example, training: bool) -> LengthCheck: ...
