"""Write a config's readers to litdata shards for streaming: one shard folder holding every task's examples.

    mmft optimize --config configs/tiny/llava.yaml --stage train --out shards/tiny_llava
    mmft optimize --config configs/llava_dora.yaml --config my_paths.yaml --out s3://bucket/llava665k --num-workers 32

The readers are ``data.init_args.<stage>`` of the configs as the CLI composes them (``--config`` files compose as
for ``mmft fit``), read with the config's ``data.init_args.on_error``: bad records are dropped and counted under
``skip`` (the report is printed), or stop the run under ``raise``, naming the file and record. Each shard item is an
Example and its media files' bytes (:mod:`data_modules.shards`), written by litdata's ``optimize`` in parallel
workers with its progress bar, in reader order, with the shard index beside them (each item's task, id and length:
:mod:`data_modules.shard_index`). A local folder is written beside its final name and renamed into place; an
object-store URI goes to litdata (and the index to fsspec) unchanged. Train on the shards with a
``data_modules.StreamingShards`` reader (README: Streaming): its examples keep their tasks and are batched exactly
as the same readers' examples in memory.
"""

from __future__ import annotations

import argparse
import importlib
import math
import multiprocessing
import shutil
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_modules.formats.base import DataFormatError, Reader, SkipReport
from data_modules.multitask import modality_length
from data_modules.records import Example
from data_modules.shard_index import ShardIndex, is_uri, write_shard_index
from data_modules.shards import example_to_item
from data_modules.streaming import litdata

STAGES = ("train", "val", "test", "predict")


def readers_from_config(config_files: Sequence[Path], stage: str) -> tuple[list[Reader], dict[str, Any]]:
    """The readers of ``data.init_args.<stage>`` built from the configs as the CLI composes them, and the
    DataModule's other arguments (``on_error``, ``allow_outside_paths``)."""
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
    return readers, data


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

    litdata costs tens of milliseconds per input, so each input is a run of examples, not one."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = examples

    def __call__(self, indices: range) -> Iterator[dict[str, Any]]:
        for index in indices:
            yield example_to_item(self.examples[index])


def write_shards(examples: Sequence[Example], output_dir: str, num_workers: int, chunk_bytes: str) -> None:
    """``examples`` as litdata shards in ``output_dir``, in order (litdata keeps it: ``keep_data_ordered``), with
    their shard index; a local folder is replaced only once whole. The order does not shape training: the
    DataModule's sampler shuffles by index."""
    optimize = litdata().optimize
    index = ShardIndex.of(examples, modality_length)
    run = max(1, min(256, math.ceil(len(examples) / (4 * num_workers))))
    inputs = [range(start, min(start + run, len(examples))) for start in range(0, len(examples), run)]
    # fork where there is one: spawned workers would import torch again, seconds each
    start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    options = {"chunk_bytes": chunk_bytes, "num_workers": num_workers, "reorder_files": False,
               "keep_data_ordered": True, "start_method": start_method}
    if is_uri(output_dir):
        optimize(ShardItems(examples), inputs, output_dir, mode="overwrite", **options)
        write_shard_index(output_dir, index)
        return
    target = Path(output_dir)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        optimize(ShardItems(examples), inputs, str(partial), **options)
        write_shard_index(str(partial), index)
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def optimize_config(config_files: Sequence[Path], stage: str, out: str, num_workers: int = 1,
                    chunk_bytes: str = "64MB") -> tuple[dict[str, int], list[SkipReport]]:
    """Write the ``stage`` readers of the configs to ``out``; returns the examples written per task and the readers'
    skip reports."""
    readers, data = readers_from_config(config_files, stage)
    examples, reports = read_all(readers, data.get("on_error") or "raise", bool(data.get("allow_outside_paths")))
    write_shards(examples, out.rstrip("/"), num_workers, chunk_bytes)
    return dict(Counter(example.task for example in examples)), reports


def main(argv: Sequence[str] | None = None) -> int:
    """``mmft optimize``."""
    parser = argparse.ArgumentParser(prog="mmft optimize", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, action="append", required=True, help="mmft config(s), composed")
    parser.add_argument("--stage", choices=STAGES, default="train", help="whose readers to write (data.<stage>)")
    parser.add_argument("--out", required=True, help="a local folder or an object-store URI")
    parser.add_argument("--num-workers", type=int, default=1, help="parallel writer processes")
    parser.add_argument("--chunk-bytes", default="64MB", help="the size of each chunk file")
    args = parser.parse_args(argv)
    try:
        counts, reports = optimize_config(args.config, args.stage, args.out, args.num_workers, args.chunk_bytes)
    except (DataFormatError, FileNotFoundError) as error:
        print(f"mmft optimize: {error}", file=sys.stderr)
        return 2
    for report in reports:
        if report.total:
            print(report.summary(), file=sys.stderr)
    tasks = ", ".join(f"{task} {count}" for task, count in counts.items())
    print(f"wrote {args.out}: {sum(counts.values())} examples ({tasks})")
    return 0
