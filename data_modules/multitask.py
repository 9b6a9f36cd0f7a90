"""One LightningDataModule for every model family: readers in, batches of one task (or mixed) out.

Training batches come from :class:`~data_modules.sampler.MultitaskBatchSampler`: each batch holds one task's
examples (``round_robin`` and ``proportional``) or a mix (``concat``). The order depends only on ``seed`` and the
epoch, so a run is reproducible. Resuming is exact from any checkpoint: the DataModule's ``state_dict`` (which
Lightning saves in checkpoints) records how many batches of the current epoch were trained, and a resumed run's
sampler skips them, so a checkpoint saved mid-epoch (``every_n_train_steps``; the only kind a one-epoch recipe such
as LLaVA-1.5's has) continues with the next batch the uninterrupted run would have drawn. Evaluation gets one
DataLoader per reader, in order, so a ``dataloader_idx`` maps to ``datamodule.eval_tasks(stage)[dataloader_idx]``.

Distributed training: Lightning's sampler injection does the sharding. The batch sampler takes a
``DistributedSampler`` only for its ``rank``, ``num_replicas`` and ``epoch``; under DDP Lightning re-creates the
batch sampler with its own DistributedSampler (``use_distributed_sampler=True``, the default) and calls
``set_epoch`` on it every epoch. Each rank then takes every ``num_replicas``-th example of each task's shuffled
order (padded by repeating the first ones, as DistributedSampler does), so all ranks run the same number of
batches and the same task at each step. Evaluation loaders get Lightning's ordinary DistributedSampler (which
also pads shards with repeated examples, so a metric over several processes may count a few examples twice).

Samples whose media fail to decode under ``on_error="skip"`` are reported by :meth:`on_before_batch_transfer`; a
batch left empty becomes ``None``, which Lightning skips in training and passes to evaluation steps as is.

Streaming: training readers may be :class:`~data_modules.streaming.StreamingShards` (shards written by
``mmft optimize``; one shard set may hold several tasks), alone or beside in-memory readers. Their items are read by
index, so they join the same pools, sampler, DDP sharding and resume as examples held in memory: the batches are
those of the same examples read from the files, for the same seed. Their media and token budgets are checked per
sample, in the workers (see :mod:`data_modules.streaming`).

Token budgets of in-memory readers are checked when the data is read, not mid-epoch: when the collate is a
:class:`~data_modules.collate.Collate` (mmft's are), every example is asked once; one that cannot fit the
model's ``max_length`` raises a :class:`DataFormatError` naming it or, under ``on_error="skip"``, is dropped and
counted in its reader's skip report, and the number of examples fitted by cutting context (earlier turns,
subtitles) and dropped is logged per task (``length_reports``).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset

from data_modules.collate import Collate, PackedCollate
from data_modules.datasets import SKIPPED_KEY, ExampleDataset, SkipFilteringCollate
from data_modules.formats.base import TOO_LONG, DataFormatError, OnError, Reader, SkipReport
from data_modules.records import Example, Sample
from data_modules.sampler import MultitaskBatchSampler, Sampling, modality_length
from data_modules.settings import EVAL_STAGES, DataConfigError, EvalStage, SettingsChecks
from data_modules.streaming import DecodeShardItem, StreamingShards

log = logging.getLogger("data_modules")

_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
# Lightning's running stages -> the split names of evaluation loaders
_EVAL_STAGE_NAMES = {"sanity_check": "val", "validate": "val", "test": "test", "predict": "predict"}


def reader_tasks(reader: Reader | StreamingShards) -> list[str]:
    """The tasks a training reader gives examples of: its ``task``, or a shard set's tasks from its index."""
    return reader.tasks if isinstance(reader, StreamingShards) else [reader.task]


class MultitaskDataModule(SettingsChecks, LightningDataModule):
    """Reads the readers of each stage, builds the datasets, and serves multitask training and per-reader eval.

    Args:
        train: training readers (any :class:`Reader` subclass, ``class_path`` in YAML); readers with the same
            ``task`` are pooled into one task. They may be :class:`StreamingShards` (see the module docstring).
        val: validation readers.
        test: test readers.
        predict: prediction readers.
        batch_size: per-device batch size, or a dict task -> batch size.
        eval_batch_size: batch size of val/test/predict loaders (default: ``batch_size`` of the reader's task).
        sampling: ``round_robin`` / ``proportional`` (one task per batch, see :class:`MultitaskBatchSampler`)
            or ``concat`` (all training examples shuffled together; mixed batches of the one int ``batch_size``).
        num_workers: DataLoader workers (media are decoded there).
        seed: seeds the training order together with the epoch.
        on_error: ``raise`` or ``skip`` bad records, undecodable media and examples too long for the model (counted
            and logged; readers with their own ``on_error`` keep it, for all three). Skip reports: ``read_reports``
            and ``media_skips``.
        allow_outside_paths: accept media paths in dataset files that leave the reader's folder (``../``, absolute
            paths); refused by default, as malformed records.
        collate_fn: the model's collate (Samples -> batch dict; a :class:`~data_modules.collate.Collate` is also
            asked for lengths and media); the CLI links it from the model.
        num_frames: frames sampled per video, spread uniformly over it (or over the example's span); default: the
            number the model's collate fixes (VL-BART: ``model.init_args.max_images``), else 8.
        video_fps: sample one frame every ``1 / video_fps`` seconds instead (LLaVA-NeXT/OneVision's ``video_fps``);
            needs ``max_frames``.
        max_frames: with ``video_fps``, the most frames per video (LLaVA-NeXT's ``frames_upbound``): a longer
            video gets that many, spread uniformly.
        group_by_modality_length: LLaVA-1.5's option (its LoRA recipe turns it on): each training batch holds
            examples of one modality (with images or video, or text-only) and of similar lengths; see
            :class:`MultitaskBatchSampler`.
        packing: train on packed batches: each training batch is ``batch_size`` rows of whole examples of one task
            (of any with ``concat``), each row at most ``max_tokens`` tokens long, the examples laid end to end with
            attention confined to each (the model's collate packs them, :class:`~data_modules.collate.Packs`).
            Rows are filled by the collate's length estimates (``check_length``), the longest examples first within
            windows of the shuffled order (:class:`MultitaskBatchSampler`).
        max_tokens: the tokens of a packed row (visual tokens included; the model's ``max_length`` is a good
            value); needed with ``packing``.
    """

    def __init__(
        self,
        train: list[Reader | StreamingShards] | None = None,
        val: list[Reader] | None = None,
        test: list[Reader] | None = None,
        predict: list[Reader] | None = None,
        batch_size: int | dict[str, int] = 8,
        eval_batch_size: int | None = None,
        sampling: Sampling = "round_robin",
        num_workers: int = 0,
        seed: int = 0,
        on_error: OnError = "raise",
        collate_fn: Collate | Callable[[list[Sample]], dict] | None = None,
        num_frames: int | None = None,
        video_fps: float | None = None,
        max_frames: int | None = None,
        group_by_modality_length: bool = False,
        allow_outside_paths: bool = False,
        packing: bool = False,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.readers: dict[str, list[Reader | StreamingShards]] = {
            "train": list(train or []),
            "val": list(val or []),
            "test": list(test or []),
            "predict": list(predict or []),
        }
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.sampling = sampling
        self.num_workers = num_workers
        self.seed = seed
        self.on_error = on_error
        self.collate_fn = collate_fn
        self.num_frames = num_frames
        self.video_fps = video_fps
        self.max_frames = max_frames
        self.group_by_modality_length = group_by_modality_length
        self.allow_outside_paths = allow_outside_paths
        self.packing = packing
        self.max_tokens = max_tokens
        self._check_arguments()
        self._examples: dict[str, list[list[Example]]] = {}
        self._token_lengths: dict[str, list[list[int | None]]] = {}  # per split, parallel to _examples
        self._resume: tuple[int, int] | None = None
        self.read_reports: list[SkipReport] = []
        self.length_reports: dict[str, dict[str, Counter[str]]] = {}
        self.media_skips = SkipReport("media decoded by the DataLoaders")
        self.eval_skips: Counter[tuple[str, int]] = Counter()

    @property
    def train_tasks(self) -> list[str]:
        """The training tasks, in the order of their first reader."""
        return list(dict.fromkeys(task for r in self.readers["train"] for task in reader_tasks(r)))

    def eval_tasks(self, stage: EvalStage) -> list[str]:
        """The task of each val/test/predict DataLoader: ``eval_tasks(stage)[dataloader_idx]``."""
        if stage not in EVAL_STAGES:
            raise ValueError(f"stage must be one of {EVAL_STAGES}, got {stage!r}")
        return [r.task for r in self.readers[stage]]

    def examples(self, split: Literal["train", "val", "test", "predict"]) -> list[list[Example]]:
        """The Examples read for ``split``, one list per reader held in memory (shard sets are not read)."""
        self._read(split)
        return self._examples[split]

    def setup(self, stage: str) -> None:
        for split in _STAGE_SPLITS[stage]:
            self._read(split)

    def _read(self, split: str) -> None:
        if split in self._examples:
            return
        per_reader, tokens_per_reader = [], []
        for reader in self._in_memory(split):
            examples = reader.read(
                self.on_error, check_media=self._needs_media, allow_outside_paths=self.allow_outside_paths
            )
            self.read_reports.append(reader.skipped)
            if not examples:
                raise DataFormatError(f"data.{split}: {reader!r} yielded no examples ({reader.skipped!r})")
            if split == "train":
                unanswered = [e for e in examples if e.target is None]
                if unanswered:
                    raise DataFormatError(
                        f"data.train: {reader!r} has {len(unanswered)} examples without an answer to train on, "
                        f"e.g. {unanswered[0].source} (a test split given as training data?)"
                    )
            examples, tokens = self._fit_lengths(split, reader, examples)
            if not examples:
                raise DataFormatError(f"data.{split}: none of the examples of {reader!r} fit the model's max_length")
            per_reader.append(examples)
            tokens_per_reader.append(tokens)
        self._examples[split] = per_reader
        self._token_lengths[split] = tokens_per_reader
        for task, counts in self.length_reports.get(split, {}).items():
            if counts["truncated"] or counts["dropped"]:
                log.warning(
                    "data.%s, task %s: %d of %d examples fit only with context cut (earlier turns, subtitles), "
                    "%d dropped as too long for the model or of a form it cannot take (the skip report says which)",
                    split, task, counts["truncated"], counts["examples"], counts["dropped"],
                )

    def _fit_lengths(self, split: str, reader: Reader, examples: list[Example]
                     ) -> tuple[list[Example], list[int | None]]:
        """Ask the collate whether each example fits the model's token budget (see the module docstring): the
        examples kept and their lengths in tokens (None where the collate does not say)."""
        collate = self._model_collate
        if collate is None:
            return examples, [None] * len(examples)
        policy = self._policy(reader)
        counts = self.length_reports.setdefault(split, {}).setdefault(reader.task, Counter())
        kept, tokens = [], []
        for example in examples:
            verdict = collate.check_length(example, split == "train")
            counts["examples"] += 1
            if verdict.problem is not None:
                message = f"data.{split}: {verdict.problem}"
                if policy == "raise":
                    raise DataFormatError(message, TOO_LONG)
                reader.skipped.add(TOO_LONG, message)
                counts["dropped"] += 1
                continue
            counts["truncated"] += verdict.truncated
            kept.append(example)
            tokens.append(verdict.tokens)
        return kept, tokens

    def _in_memory(self, split: str) -> list[Reader]:
        """The readers of ``split`` whose examples are read into memory (all but shard sets)."""
        return [r for r in self.readers[split] if not isinstance(r, StreamingShards)]

    def _policy(self, reader: Reader | StreamingShards) -> OnError:
        """The reader's own ``on_error`` if it has one, else the DataModule's: for records, lengths and media."""
        return reader.on_error or self.on_error

    def _collate(self) -> SkipFilteringCollate:
        if self.collate_fn is None:
            raise DataConfigError(
                "MultitaskDataModule has no collate_fn: the model's collate turns Samples into tensors. The mmft "
                "CLI links it from the model; in Python pass MultitaskDataModule(..., collate_fn=model.collate)."
            )
        return SkipFilteringCollate(self.collate_fn)

    def _task_batch_size(self, task: str) -> int:
        return self.batch_size[task] if isinstance(self.batch_size, dict) else self.batch_size

    def train_dataloader(self) -> DataLoader:
        collate = self._collate()
        if not self.readers["train"]:
            raise DataConfigError("data.train has no readers")
        dataset, pools, lengths = self._training_dataset()
        packing = {}
        if self.packing:
            collate = SkipFilteringCollate(PackedCollate(self._packing_collate(), self.max_tokens))
            packing = {"token_lengths": lengths, "max_tokens": self.max_tokens}
            lengths = None
        if self.sampling == "concat":
            task_sizes, batch_sizes = [len(dataset)], [self.batch_size]  # one int: checked in __init__
        else:
            task_sizes = [len(indices) for indices in pools.values()]
            batch_sizes = [self._task_batch_size(task) for task in pools]
        batch_sampler = MultitaskBatchSampler(
            DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False),
            task_sizes,
            batch_sizes,
            sampling="round_robin" if self.sampling == "round_robin" else "proportional",
            seed=self.seed,
            modality_lengths=lengths,
            resume=self._resume,
            **packing,
        )
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
        )

    def _training_dataset(self) -> tuple[Dataset, dict[str, list[int]], list[int] | None]:
        """Every training example as one Dataset whose indices run task by task (tasks in the order of their first
        reader, each task's examples in reader order), each task's items, and each example's modality length (with
        ``group_by_modality_length``) or its tokens (with ``packing``), else None.

        In-memory examples form one :class:`ExampleDataset`, already in that order; each shard set is one
        :class:`~data_modules.streaming.ShardDataset` after it; ``pools`` index their concatenation, and a ``Subset``
        puts every item in its place.
        """
        in_memory: dict[str, list[tuple[Example, OnError]]] = {}
        spans: list[tuple[str, int, int]] = []  # each in-memory reader's task and place in that task's pool
        tokens: dict[str, list[int | None]] = {}
        examples_read = self.examples("train")
        for reader, examples, lengths in zip(self._in_memory("train"), examples_read, self._token_lengths["train"]):
            pool = in_memory.setdefault(reader.task, [])
            spans.append((reader.task, len(pool), len(examples)))
            pool.extend((e, self._policy(reader)) for e in examples)
            tokens.setdefault(reader.task, []).extend(lengths)
        pooled = [pair for pairs in in_memory.values() for pair in pairs]
        starts = dict(zip(in_memory, np.cumsum([0, *(len(pairs) for pairs in in_memory.values())]).tolist()))
        parts: list[Dataset] = []
        if pooled:
            parts.append(ExampleDataset([e for e, _ in pooled], load_media=self._needs_media,
                                        on_error=[policy for _, policy in pooled], **self._frame_options()))
        grouping = self.group_by_modality_length or self.packing
        if self.packing:
            lengths = [length for per_task in tokens.values() for length in per_task]
            if None in lengths:
                raise DataConfigError("data.packing: the model's collate gave no token lengths for the examples")
        else:
            lengths = [modality_length(e) for e, _ in pooled] if grouping else []
        pools: dict[str, list[int]] = {}
        memory_spans = iter(spans)
        for reader in self.readers["train"]:
            if isinstance(reader, StreamingShards):
                offset = sum(len(part) for part in parts)
                for number, task in enumerate(reader.item_tasks):
                    pools.setdefault(task, []).append(offset + number)
                parts.append(reader.dataset(self._decode_shard_item(reader)))
                lengths += reader.index.lengths if grouping else []
            else:
                task, start, count = next(memory_spans)
                pools.setdefault(task, []).extend(range(starts[task] + start, starts[task] + start + count))
        order = [index for indices in pools.values() for index in indices]
        by_order = [lengths[index] for index in order] if grouping else None
        if len(parts) == 1 and order == list(range(len(order))):
            return parts[0], pools, by_order
        return Subset(ConcatDataset(parts), order), pools, by_order

    def _decode_shard_item(self, reader: StreamingShards) -> DecodeShardItem:
        collate = self._model_collate
        check_length = collate.check_length if collate is not None else None
        return DecodeShardItem(reader.task, self._policy(reader), self._needs_media, self.frame_sampling, check_length)

    def state_dict(self) -> dict[str, int]:
        """Where training stands in its epoch, saved with every checkpoint: the epoch and the batches trained in it."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch:  # Lightning resumes such a checkpoint with the next epoch
            return {"epoch": trainer.current_epoch + 1, "batches_trained": 0, **self._order_settings()}
        return {"epoch": trainer.current_epoch, "batches_trained": progress.current.processed,
                **self._order_settings()}

    def _order_settings(self) -> dict[str, Any]:
        """The settings that make an epoch's batch order: a mid-epoch resume replays it only if they are the same."""
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return {"batch_size": self.batch_size, "seed": self.seed, "sampling": self.sampling,
                "group_by_modality_length": self.group_by_modality_length, "world_size": world_size,
                "packing": self.packing, "max_tokens": self.max_tokens}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume the saved epoch after its trained batches (see the module docstring); a mid-epoch checkpoint is
        refused when the settings that make the epoch's order differ (the resumed epoch would repeat some
        examples and never show others)."""
        if not state_dict:
            return
        if int(state_dict["batches_trained"]) > 0:
            now = self._order_settings()
            names = {key: f"data.init_args.{key}" for key in now} | {"world_size": "devices x nodes"}
            changed = [f"{names[key]}: {state_dict[key]!r} in the checkpoint, {value!r} now"
                       for key, value in now.items() if key in state_dict and state_dict[key] != value]
            if changed:
                raise DataConfigError(
                    f"the checkpoint was saved {state_dict['batches_trained']} batches into epoch "
                    f"{state_dict['epoch']}, whose order depends on settings this run changes ({'; '.join(changed)}):"
                    " resume with the checkpoint's settings, or from a checkpoint saved at the end of an epoch"
                )
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches_trained"]))
        # Lightning warns that a plain DataLoader restarts a checkpoint's epoch from its beginning; this one does not
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

    def _eval_dataloaders(self, split: EvalStage) -> list[DataLoader]:
        collate = self._collate()
        loaders = []
        for reader, examples in zip(self.readers[split], self.examples(split)):
            batch_size = self.eval_batch_size or self._task_batch_size(reader.task)
            dataset = ExampleDataset(
                examples, load_media=self._needs_media, on_error=self._policy(reader), **self._frame_options()
            )
            loaders.append(
                DataLoader(
                    dataset,
                    batch_size=batch_size,
                    shuffle=False,
                    num_workers=self.num_workers,
                    collate_fn=collate,
                    persistent_workers=self.num_workers > 0,
                )
            )
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_dataloaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_dataloaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_dataloaders("predict")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Count and report samples dropped by the collate wrapper; a batch left empty becomes None."""
        if isinstance(batch, MutableMapping) and SKIPPED_KEY in batch:
            skipped = batch.pop(SKIPPED_KEY)
            for sample in skipped:
                self.media_skips.add(sample.reason, sample.message)
            stage = self.trainer.state.stage if self.trainer is not None else None
            if stage is not None and stage.value in _EVAL_STAGE_NAMES:
                self.eval_skips[(_EVAL_STAGE_NAMES[stage.value], dataloader_idx)] += len(skipped)
            log.warning(
                "skipped %d sample(s) whose media could not be decoded or used (%d so far), e.g. %s",
                len(skipped),
                self.media_skips.total,
                skipped[0].message,
            )
            if not batch:
                return None
        return batch

    def pop_eval_skips(self, stage: EvalStage) -> dict[int, int]:
        """Samples of each ``stage`` dataloader skipped for bad media since the last call (the model shows them beside
        its scores: n scored of n total)."""
        popped = {idx: n for (s, idx), n in self.eval_skips.items() if s == stage}
        for idx in popped:
            del self.eval_skips[(stage, idx)]
        return popped

    def teardown(self, stage: str) -> None:
        if self.media_skips.total:
            log.warning("%s", self.media_skips.summary())

