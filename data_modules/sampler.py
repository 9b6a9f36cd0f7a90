"""The training batch order of the multitask DataModule: one task's examples per batch (or a mix), shuffled per
epoch from a seed, sharded over the processes, optionally grouped by length and modality as LLaVA does or packed
into batches of at most a token budget, and resumable mid-epoch by skipping the batches already trained."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
from torch.utils.data import BatchSampler, DistributedSampler

from data_modules.records import Example

Sampling = Literal["round_robin", "proportional", "concat"]
# packing fills batches from windows of this many shuffled examples, longest first: little room is left unused, and
# the epoch's order stays random beyond a window
PACK_WINDOW = 1024


class MultitaskBatchSampler(BatchSampler):
    """Batches of indices into the concatenation of the tasks' examples, one task per batch.

    ``task_sizes[t]`` examples of task ``t`` follow those of task ``t - 1`` in the dataset. Each epoch, every task's
    examples are shuffled (seeded by ``seed``, the epoch and the task), this rank's share is cut into batches of
    ``batch_sizes[t]``, and the batches are ordered by ``sampling``:

    - ``round_robin``: tasks take turns, t0 t1 t2 t0 t1 t2 ...; a task whose batches run out leaves the cycle;
    - ``proportional``: the batches of all tasks in a seeded random order, so at each step a task comes up with
      probability proportional to its remaining batches (dataset size / batch size). This is what VL-Adapter's
      ``MultitaskLoader`` calls "roundrobin".

    Either way an epoch visits every example once (plus DDP padding). ``sampler`` supplies ``rank``,
    ``num_replicas`` and ``epoch`` (see the module docstring); ``set_epoch`` forwards to it.

    ``modality_lengths`` (one per dataset index: the example's length, negated for text-only examples) turns on
    LLaVA-1.5's ``group_by_modality_length``: within a task, the shuffled examples are split by modality and cut
    into megabatches of ``num_replicas x batch size``; each megabatch is dealt to the ranks longest first, each
    example to the rank whose batch is shortest so far, so a step's batches hold one modality and similar lengths
    (less padding); the task's megabatches are then shuffled. A megabatch too small for every rank is padded by
    repeating its examples.

    ``token_lengths`` (one per dataset index) with ``max_tokens`` packs instead: within a task, the shuffled
    examples are cut into windows of ``PACK_WINDOW``, each window's examples go longest first into the first row of
    at most ``max_tokens`` tokens with room for them (:func:`pack_by_length`; an example over the budget gets a row
    alone), the task's rows are shuffled, every ``batch_sizes[t]`` rows make a batch (their examples row by row),
    and the batches are dealt to the ranks in turn (the last few repeated so every rank gets as many). The batches
    differ per epoch and are the same on every rank and every run.
    """

    def __init__(
        self,
        sampler: DistributedSampler,
        task_sizes: Sequence[int],
        batch_sizes: Sequence[int],
        sampling: Literal["round_robin", "proportional"] = "round_robin",
        seed: int = 0,
        drop_last: bool = False,
        modality_lengths: Sequence[int] | None = None,
        resume: tuple[int, int] | None = None,
        token_lengths: Sequence[int] | None = None,
        max_tokens: int | None = None,
    ) -> None:
        # BatchSampler.__init__ is not called: it accepts a single integer batch size only.
        if not isinstance(sampler, DistributedSampler):
            raise TypeError(
                "MultitaskBatchSampler needs a DistributedSampler (for rank, world size and epoch); use "
                "DistributedSampler(dataset, num_replicas=1, rank=0) outside distributed training"
            )
        if len(task_sizes) != len(batch_sizes) or not task_sizes:
            raise ValueError("task_sizes and batch_sizes must be non-empty and of the same length")
        if min(task_sizes) < 1 or min(batch_sizes) < 1:
            raise ValueError(f"task sizes and batch sizes must be positive: {task_sizes}, {batch_sizes}")
        if sampling not in ("round_robin", "proportional"):
            raise ValueError(f"sampling must be 'round_robin' or 'proportional', got {sampling!r}")
        self.sampler = sampler
        self.task_sizes = list(task_sizes)
        self.batch_sizes = list(batch_sizes)
        self.batch_size = max(batch_sizes)
        self.sampling = sampling
        self.seed = seed
        self.drop_last = drop_last
        if modality_lengths is not None:
            if len(modality_lengths) != sum(self.task_sizes) or 0 in modality_lengths:
                raise ValueError("modality_lengths needs one non-zero length per example of every task")
        self.modality_lengths = modality_lengths  # kept as given: Lightning rebuilds the sampler from its attributes
        self._lengths = None if modality_lengths is None else np.asarray(modality_lengths)
        packing = token_lengths is not None
        if packing != (max_tokens is not None) or (packing and modality_lengths is not None):
            raise ValueError("packing needs token_lengths and max_tokens together, and no modality_lengths")
        if token_lengths is not None:
            if len(token_lengths) != sum(self.task_sizes) or min(token_lengths) < 1 or max_tokens < 1:
                raise ValueError("token_lengths needs one positive length per example of every task, and "
                                 "max_tokens a positive budget")
        self.token_lengths = token_lengths
        self.max_tokens = max_tokens
        self._packed: dict[tuple[int, int], list[np.ndarray]] = {}
        self.resume = resume
        if resume is not None and sampler.epoch < resume[0]:
            # DataLoader workers draw their first batches when Lightning sets up the loader, before it sets the epoch
            sampler.set_epoch(resume[0])

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _num_batches(self, task: int) -> int:
        divide = math.floor if self.drop_last else math.ceil
        if self.token_lengths is not None:
            return divide(len(self._packed_batches(task)) / self.sampler.num_replicas)
        if self.modality_lengths is not None:
            megabatch = self.sampler.num_replicas * self.batch_sizes[task]
            return sum(divide(n / megabatch) for n in self._modality_counts(task))
        per_rank = math.ceil(self.task_sizes[task] / self.sampler.num_replicas)
        return divide(per_rank / self.batch_sizes[task])

    def _task_lengths(self, task: int) -> np.ndarray:
        offset = sum(self.task_sizes[:task])
        return self._lengths[offset : offset + self.task_sizes[task]]

    def _modality_counts(self, task: int) -> tuple[int, int]:
        lengths = self._task_lengths(task)
        return int((lengths > 0).sum()), int((lengths < 0).sum())

    def __len__(self) -> int:
        return sum(self._num_batches(t) for t in range(len(self.task_sizes)))

    def _task_batches(self, task: int, offset: int) -> list[list[int]]:
        size, batch_size = self.task_sizes[task], self.batch_sizes[task]
        rank, world = self.sampler.rank, self.sampler.num_replicas
        if self.token_lengths is not None:
            batches = self._packed_batches(task)
            batches = [batches[i % len(batches)] for i in range(self._num_batches(task) * world)]
            return [(batch + offset).tolist() for batch in batches[rank::world]]
        order = np.random.default_rng([self.seed, self.sampler.epoch, 1 + task]).permutation(size)
        if self.modality_lengths is not None:
            return self._grouped_batches(task, order, offset)
        order = np.resize(order, math.ceil(size / world) * world)  # pads by repeating the first indices
        mine = (order[rank::world] + offset).tolist()
        batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
        return batches[: self._num_batches(task)]

    def _packed_batches(self, task: int) -> list[np.ndarray]:
        """Every rank's packed batches of ``task`` this epoch (indices within the task, row after row)."""
        key = (self.sampler.epoch, task)
        if key not in self._packed:
            offset = sum(self.task_sizes[:task])
            lengths = np.asarray(self.token_lengths[offset : offset + self.task_sizes[task]])
            order = np.random.default_rng([self.seed, self.sampler.epoch, 1 + task]).permutation(len(lengths))
            rows = [row for start in range(0, len(order), PACK_WINDOW)
                    for row in pack_by_length(order[start : start + PACK_WINDOW], lengths, self.max_tokens)]
            shuffle = np.random.default_rng([self.seed, self.sampler.epoch, 1 + task, 2]).permutation(len(rows))
            rows = [rows[i] for i in shuffle]
            size = self.batch_sizes[task]
            self._packed = {k: v for k, v in self._packed.items() if k[0] == key[0]}  # this epoch's alone
            self._packed[key] = [np.concatenate(rows[i : i + size]) for i in range(0, len(rows), size)]
        return self._packed[key]

    def _grouped_batches(self, task: int, order: np.ndarray, offset: int) -> list[list[int]]:
        """This rank's batches of ``task`` grouped by modality and length (see the class docstring)."""
        world, megabatch = self.sampler.num_replicas, self.sampler.num_replicas * self.batch_sizes[task]
        lengths = self._task_lengths(task)
        batches = []
        for modality in (order[lengths[order] > 0], order[lengths[order] < 0]):
            for start in range(0, len(modality), megabatch):
                chunk = modality[start : start + megabatch]
                if len(chunk) < megabatch and self.drop_last:
                    continue
                chunk = np.resize(chunk, math.ceil(len(chunk) / world) * world)
                batches.append((deal_by_length(chunk, np.abs(lengths[chunk]), world)[self.sampler.rank] + offset))
        shuffle = np.random.default_rng([self.seed, self.sampler.epoch, 1 + task, 1]).permutation(len(batches))
        return [batches[i].tolist() for i in shuffle]

    def _schedule(self, counts: list[int]) -> list[int]:
        """The task of each batch of the epoch."""
        if self.sampling == "round_robin":
            rounds = [[t for t in range(len(counts)) if counts[t] > r] for r in range(max(counts))]
            return [t for tasks in rounds for t in tasks]
        labels = np.repeat(np.arange(len(counts)), counts)
        return np.random.default_rng([self.seed, self.sampler.epoch, 0]).permutation(labels).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        offsets = np.cumsum([0, *self.task_sizes[:-1]]).tolist()
        per_task = [self._task_batches(t, offset) for t, offset in enumerate(offsets)]
        queues = [iter(batches) for batches in per_task]
        # ``resume = (epoch, n)``: that epoch's first n batches were trained before the checkpoint
        skip = self.resume[1] if self.resume is not None and self.resume[0] == self.sampler.epoch else 0
        for step, task in enumerate(self._schedule([len(batches) for batches in per_task])):
            batch = next(queues[task])
            if step >= skip:
                yield batch


def deal_by_length(indices: np.ndarray, lengths: np.ndarray, parts: int) -> list[np.ndarray]:
    """Split ``indices`` (a multiple of ``parts`` long) into ``parts`` equal-sized groups of balanced total length:
    longest first, each to the group with the smallest total so far that still has room (as LLaVA balances ranks)."""
    size = len(indices) // parts
    groups: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for position in np.argsort(-lengths, kind="stable"):
        open_groups = [g for g in range(parts) if len(groups[g]) < size]
        target = min(open_groups, key=lambda g: totals[g])
        groups[target].append(int(indices[position]))
        totals[target] += int(lengths[position])
    return [np.asarray(group, dtype=np.int64) for group in groups]


def pack_by_length(indices: np.ndarray, lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """``indices`` in rows of at most ``max_tokens`` tokens (``lengths[index]`` each): longest first, each into
    the first row with room for it, else a new one (first-fit decreasing); ties keep the order given."""
    batches: list[list[int]] = []
    room: list[int] = []
    for index in indices[np.argsort(-lengths[indices], kind="stable")]:
        length = int(lengths[index])
        target = next((b for b, free in enumerate(room) if free >= length), None)
        if target is None:
            batches.append([])
            room.append(max_tokens)
            target = len(batches) - 1
        batches[target].append(int(index))
        room[target] -= length
    return [np.asarray(batch, dtype=np.int64) for batch in batches]


def modality_length(example: Example) -> int:
    """LLaVA's length for ``group_by_modality_length``: the words of every turn, negated for text-only examples."""
    words = max(1, sum(len(turn.text.split()) for turn in example.turns))
    return words if example.images or example.video is not None else -words
