"""Write a config's readers to litdata shards for streaming: one shard folder holding every task's examples.

    mmft optimize --config configs/tiny/llava.yaml --stage train --out shards/tiny_llava
    mmft optimize --config configs/llava.yaml --config my_paths.yaml --out s3://bucket/llava665k --num-workers 32
    mmft optimize --config configs/tiny/vlbart_video.yaml --out shards/tiny_video --video-frames jpeg

The readers are ``data.init_args.<stage>`` of the configs as the CLI composes them (``--config`` files compose as
for ``mmft fit``), read with the config's ``data.init_args.on_error``: bad records are dropped and counted under
``skip`` (the report is printed), or stop the run under ``raise``, naming the file and record. Each shard item is an
Example and its media files' bytes (:mod:`data_modules.shards`), written by litdata's ``optimize`` in parallel
workers with its progress bar, in reader order, with the shard index beside them (each item's task, id and length:
:mod:`data_modules.shard_index`). ``--video-frames png|jpeg`` stores each video as its frames instead, decoded once
in those workers with the config's frame sampling (``data.init_args.num_frames`` or ``video_fps`` + ``max_frames``,
inside the example's span): training then decodes small images rather than a video, and refuses a config that
samples frames otherwise. A video that cannot be decoded then is found here, raised or skipped and counted under its
reader's ``on_error`` as a bad record is. A local folder is written beside its final name and renamed into place; an
object-store URI goes to litdata (and the index to fsspec) unchanged. Train on the shards with a
``data_modules.StreamingShards`` reader (README: Streaming): its examples keep their tasks and are batched exactly
as the same readers' examples in memory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from data_modules.formats.base import DataFormatError, OnError, Reader, SkipReport
from data_modules.media import FrameSampling, MediaError, frame_sampling_for
from data_modules.records import Example
from data_modules.sampler import modality_length
from data_modules.shard_index import INDEX_NAME, ShardIndex, is_uri, write_shard_index
from data_modules.shards import FrameCodec, FrameExtraction, example_to_item
from data_modules.streaming import litdata
from mmft.files import replace_refusal

STAGES = ("train", "val", "test", "predict")


def readers_from_config(config_files: Sequence[Path], stage: str) -> tuple[list[Reader], dict[str, Any],
                                                                          dict[str, Any]]:
    """The readers of ``data.init_args.<stage>`` built from the configs as the CLI composes them, the
    DataModule's other arguments (``on_error``, ``allow_outside_paths``, frame sampling) and the model's config."""
    from mmft.cli import resolve_config

    for path in config_files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
    config = resolve_config([arg for path in config_files for arg in ("--config", str(path))])
    data = (config.get("data") or {}).get("init_args") or {}
    specs = data.get(stage) or []
    if not specs:
        raise DataFormatError(f"{', '.join(map(str, config_files))}: data.init_args.{stage} has no readers")
    readers = []
    for number, spec in enumerate(specs):
        module, _, name = spec["class_path"].rpartition(".")
        reader = getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {}))
        if not isinstance(reader, Reader):
            raise DataFormatError(f"data.init_args.{stage}[{number}]: {spec['class_path']} is not a reader of dataset "
                                  "files (streaming shards are written already)")
        readers.append(reader)
    return readers, data, config.get("model") or {}


def frame_sampling(data: dict[str, Any], model: dict[str, Any]) -> FrameSampling:
    """The frame sampling that training with this data and model config uses (the model may fix the count, as
    :attr:`data_modules.MultitaskDataModule.frame_sampling` decides)."""
    fixed = None
    if model.get("class_path"):  # a module of mmft's says whether it fixes the count; another model does not
        module, _, name = model["class_path"].rpartition(".")
        frames_of = getattr(getattr(importlib.import_module(module), name), "fixed_video_frames", None)
        fixed = frames_of(model.get("init_args") or {}) if frames_of is not None else None
    try:
        return frame_sampling_for(data.get("num_frames"), data.get("video_fps"), data.get("max_frames"), fixed)
    except ValueError as error:
        raise DataFormatError(f"data.init_args.num_frames / video_fps / max_frames: {error}") from None


def read_all(readers: Sequence[Reader], on_error: str, allow_outside_paths: bool) -> tuple[
        list[Example], list[SkipReport]]:
    """Every reader's Examples (in reader order), and each reader's skip report."""
    examples: list[Example] = []
    reports = []
    for reader in readers:
        read = reader.read(on_error, check_media=True, allow_outside_paths=allow_outside_paths)
        reports.append(reader.skipped)
        if not read:
            raise DataFormatError(f"{reader!r} yielded no examples ({reader.skipped!r})")
        examples += read
    return examples, reports


class ShardItems:
    """The shard items of a run of ``examples`` (given as a ``range`` of their indices), for litdata's workers.

    litdata costs tens of milliseconds per input, so each input is a run of examples, not one. An example whose
    media cannot be read (or, with ``frames``, decoded) is noted in ``notes`` (a folder: one JSON-lines file per
    worker process, read back by the parent) and left out; under a ``raise`` policy the worker then writes nothing
    more and the parent raises (an exception inside a litdata worker leaves litdata 0.2.76 waiting forever)."""

    def __init__(self, examples: Sequence[Example], policies: Sequence[OnError], notes: str,
                 frames: FrameExtraction | None = None) -> None:
        self.examples = examples
        self.policies = policies
        self.notes = notes
        self.frames = frames
        self.failed = False

    def __call__(self, indices: range) -> Iterator[dict[str, Any]]:
        for index in indices:
            if self.failed:
                return
            example = self.examples[index]
            try:
                item = example_to_item(example, self.frames)
            except MediaError as error:
                raised = self.policies[index] == "raise"
                note = {"index": index, "task": example.task, "reason": error.reason, "message": str(error),
                        "raised": raised}
                with open(os.path.join(self.notes, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as file:
                    file.write(json.dumps(note) + "\n")
                self.failed = raised
                continue
            yield item


def read_notes(folder: str) -> list[dict[str, Any]]:
    """The media failures :class:`ShardItems` noted in ``folder``."""
    return [json.loads(line) for path in sorted(Path(folder).glob("*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines()]


class OutputFolderError(ValueError):
    """``--out`` is in the way: it exists and is not an earlier shard set the user asked to replace."""


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse a local ``output_dir`` that exists, unless ``overwrite`` and it holds an earlier shard set (its
    ``mmft_index.json``, no subfolder); an object-store URI is left to litdata, which refuses a non-empty one
    without ``overwrite``."""
    if not is_uri(output_dir):
        refusal = replace_refusal(Path(output_dir), "--out", overwrite, INDEX_NAME, "mmft optimize")
        if refusal is not None:
            raise OutputFolderError(refusal)


def write_shards(examples: Sequence[Example], output_dir: str, num_workers: int, chunk_bytes: str,
                 policies: Sequence[OnError] | None = None,
                 frames: FrameExtraction | None = None, overwrite: bool = False) -> list[dict[str, Any]]:
    """``examples`` as litdata shards in ``output_dir``, in order (litdata keeps it: ``keep_data_ordered``), with
    the shard index of those written; an existing folder is replaced only with ``overwrite`` and only if it holds
    an earlier shard set (:func:`check_output_dir`), and only once the new one is whole. The order does not shape
    training: the DataModule's sampler shuffles by index. ``policies``: each example's ``on_error`` for media that
    cannot be read or decoded (default ``raise``: a MediaError naming the file and record). Returns the skipped
    examples' index, task, reason and message."""
    check_output_dir(output_dir, overwrite)
    policies = ["raise"] * len(examples) if policies is None else list(policies)
    run = max(1, min(256, math.ceil(len(examples) / (4 * num_workers))))
    inputs = [range(start, min(start + run, len(examples))) for start in range(0, len(examples), run)]
    # fork where there is one: spawned workers would import torch again, seconds each
    start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    options = {"chunk_bytes": chunk_bytes, "num_workers": num_workers, "reorder_files": False,
               "keep_data_ordered": True, "start_method": start_method}
    with tempfile.TemporaryDirectory(prefix="mmft_optimize_notes_") as notes:
        items = ShardItems(examples, policies, notes, frames)

        def finish(folder: str) -> None:
            """Raise a noted error, or write the index of the examples that were written."""
            noted = read_notes(notes)
            raised = [note for note in noted if note["raised"]]
            if raised:
                raise MediaError(raised[0]["message"], reason=raised[0]["reason"])
            skipped = {note["index"] for note in noted}
            written = [example for i, example in enumerate(examples) if i not in skipped]
            write_shard_index(folder, ShardIndex.of(written, modality_length))

        if is_uri(output_dir):
            litdata().optimize(items, inputs, output_dir, mode="overwrite" if overwrite else None, **options)
            finish(output_dir)
        else:
            write_local(items, inputs, Path(output_dir), options, finish)
        return read_notes(notes)


def write_local(items: ShardItems, inputs: list[range], target: Path, options: dict[str, Any],
                finish: Callable[[str], None]) -> None:
    """litdata's ``optimize`` into a folder beside ``target``, renamed into place once whole and ``finish`` (given
    that folder) passes."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        litdata().optimize(items, inputs, str(partial), **options)
        finish(str(partial))
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def optimize_config(config_files: Sequence[Path], stage: str, out: str, num_workers: int = 1,
                    chunk_bytes: str = "64MB", video_frames: FrameCodec | None = None,
                    overwrite: bool = False) -> tuple[dict[str, int], list[SkipReport]]:
    """Write the ``stage`` readers of the configs to ``out`` (with ``video_frames``, videos as frames in that
    codec, sampled as the config's ``data.init_args`` says); returns the examples written per task and the skip
    reports: the readers', then the media that could not be read or decoded."""
    check_output_dir(out, overwrite)  # before reading anything
    readers, data, model = readers_from_config(config_files, stage)
    on_error = data.get("on_error") or "raise"
    examples, reports, policies = [], [], []
    for reader in readers:  # one at a time, to give each example its reader's own on_error
        read, report = read_all([reader], on_error, bool(data.get("allow_outside_paths")))
        examples += read
        reports += report
        policies += [reader.on_error or on_error] * len(read)
    frames = None
    if video_frames is not None:
        frames = FrameExtraction(frame_sampling(data, model), video_frames)
    skipped = write_shards(examples, out.rstrip("/"), num_workers, chunk_bytes, policies=policies, frames=frames,
                           overwrite=overwrite)
    media = SkipReport(f"media read by mmft optimize ({len(examples)} examples)")
    for note in skipped:
        media.add(note["reason"], note["message"])
    counts = Counter(example.task for example in examples)
    counts.subtract(Counter(note["task"] for note in skipped))
    return dict(counts), [*reports, media]


def main(argv: Sequence[str] | None = None) -> int:
    """``mmft optimize``."""
    parser = argparse.ArgumentParser(prog="mmft optimize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, action="append", required=True, help="mmft config(s), composed")
    parser.add_argument("--stage", choices=STAGES, default="train", help="whose readers to write (data.<stage>)")
    parser.add_argument("--out", required=True, help="a local folder or an object-store URI")
    parser.add_argument("--num-workers", type=int, default=1, help="parallel writer processes")
    parser.add_argument("--chunk-bytes", default="64MB", help="the size of each chunk file")
    parser.add_argument("--video-frames", choices=("png", "jpeg"),
                        help="store videos as frames decoded now with the config's sampling, in this codec (png: "
                             "exact pixels; jpeg: lossy, often smaller on camera footage); default: the video files' "
                             "bytes, for any sampling")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it holds an earlier shard set (never another folder)")
    args = parser.parse_args(argv)
    try:
        counts, reports = optimize_config(args.config, args.stage, args.out, args.num_workers, args.chunk_bytes,
                                          args.video_frames, args.overwrite)
    except (DataFormatError, MediaError, FileNotFoundError, OutputFolderError) as error:
        print(f"mmft optimize: {error}", file=sys.stderr)
        return 2
    for report in reports:
        if report.total:
            print(report.summary(), file=sys.stderr)
    tasks = ", ".join(f"{task} {count}" for task, count in counts.items())
    print(f"wrote {args.out}: {sum(counts.values())} examples ({tasks})")
    return 0
