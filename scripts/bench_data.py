"""Data pipeline throughput (read, decode, collate) in memory and streaming, against what training consumes.

For each tiny recipe (images: the tiny LLaVA; video: the tiny VL-BART video recipe) it builds the model and the
DataModule as `mmft fit` does, writes the training readers to shards (`mmft optimize`'s library code), then times
the training DataLoader of each source at each worker count (samples per second over a number of batches after the
first, so worker start-up is left out) and the model's training steps (forward, backward, AdamW) on batches
collated beforehand. Loading is not the bottleneck when the loader's samples/s exceed the step's. The shards are
timed twice: in the training order (random access by index, as training reads them) and in the order they were
written (sequential reads), to show what chunk locality is worth on local shards. The video recipe is also streamed
from shards holding pre-extracted frames (``mmft optimize --video-frames png|jpeg``); each shard set's size on disk
is reported beside it.

    .venv/bin/mmft sample-data --out data/sample          # the tiny recipes read it
    .venv/bin/python scripts/bench_data.py --workers 0 2 --batches 12 --json bench_data.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data_modules import MultitaskDataModule, StreamingShards
from mmft.cli import MMFTCLI
from mmft.tools.optimize import optimize_config

RECIPES = {"image": "configs/tiny/llava_dora.yaml", "video": "configs/tiny/vlbart_video.yaml"}


def build(config: str) -> tuple[torch.nn.Module, MultitaskDataModule]:
    """The model and DataModule of a recipe, built by the CLI's own parser (nothing is trained or written)."""
    cli = MMFTCLI(args=["--config", config, "--trainer.logger", "false"], run=False)
    return cli.model, cli.datamodule


def samples_per_second(batches: Iterable, count: int) -> float:
    """Samples per second over ``count`` batches after the first (the first pays for worker start-up)."""
    iterator = iter(batches)
    next(iterator)
    start, samples = time.perf_counter(), 0
    for _, batch in zip(range(count), iterator):
        samples += len(batch["ids"])
    return samples / (time.perf_counter() - start)


def streaming_twin(data: MultitaskDataModule, shards: Path, workers: int) -> MultitaskDataModule:
    """A DataModule like ``data`` whose training reader is the shard set of its own training readers."""
    return MultitaskDataModule(train=[StreamingShards(str(shards))], batch_size=data.batch_size,
                               sampling=data.sampling, group_by_modality_length=data.group_by_modality_length,
                               num_workers=workers, seed=data.seed, num_frames=data.num_frames,
                               video_fps=data.video_fps, max_frames=data.max_frames, collate_fn=data.collate_fn)


def in_written_order(loader: DataLoader) -> DataLoader:
    """The training loader's dataset read from its first item to its last, in batches of its largest batch size."""
    return DataLoader(loader.dataset, batch_size=loader.batch_sampler.batch_size, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn)


def step_samples_per_second(model: torch.nn.Module, batches: Sequence[dict]) -> float:
    """Training steps (forward, backward, AdamW) per second on collated batches, in samples; the first is warm-up."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    start, samples = 0.0, 0
    for number, batch in enumerate(batches):
        if number == 1:
            start, samples = time.perf_counter(), 0
        model.training_step(batch, number).backward()
        optimizer.step()
        optimizer.zero_grad()
        samples += len(batch["ids"])
    return samples / (time.perf_counter() - start)


def folder_megabytes(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def bench(kind: str, config: str, workers: Sequence[int], count: int, folder: Path,
          video_frames: Sequence[str]) -> list[dict]:
    model, data = build(config)
    shard_sets = {"shards": None, **{f"shards of {codec} frames": codec for codec in video_frames
                                     if kind == "video"}}
    sizes = {}
    for source, codec in shard_sets.items():
        shards = folder / kind / (codec or "bytes")
        optimize_config([Path(config)], "train", str(shards), num_workers=2, video_frames=codec)
        sizes[source] = folder_megabytes(shards)
    rows = []
    for number in workers:
        data.num_workers = number
        data.setup("fit")
        rows.append({"kind": kind, "source": "in memory", "workers": number,
                     "samples_per_s": samples_per_second(data.train_dataloader(), count)})
        for source, codec in shard_sets.items():
            streaming = streaming_twin(data, folder / kind / (codec or "bytes"), number).train_dataloader()
            rows.append({"kind": kind, "source": f"{source}, random", "workers": number, "shard_mb": sizes[source],
                         "samples_per_s": samples_per_second(streaming, count)})
            rows.append({"kind": kind, "source": f"{source}, in order", "workers": number, "shard_mb": sizes[source],
                         "samples_per_s": samples_per_second(in_written_order(streaming), count)})
    data.num_workers = 0
    batches = [batch for _, batch in zip(range(min(count, 6) + 1), data.train_dataloader())]
    rows.append({"kind": kind, "source": "training step", "workers": None,
                 "samples_per_s": step_samples_per_second(model, batches)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time")
    parser.add_argument("--batches", type=int, default=12, help="batches timed per loader (after the first)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    parser.add_argument("--video-frames", nargs="*", choices=("png", "jpeg"), default=["png", "jpeg"],
                        help="also stream the video recipe from shards of pre-extracted frames in these codecs")
    parser.add_argument("--json", type=Path, help="write every row here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_") as folder:
        for kind in args.kinds:
            rows += bench(kind, RECIPES[kind], args.workers, args.batches, Path(folder), args.video_frames)
    print(f"{'kind':<6} {'source':<32} {'workers':>7} {'samples/s':>10} {'shards MB':>10}")
    for row in rows:
        workers = "-" if row["workers"] is None else row["workers"]
        size = f"{row['shard_mb']:.2f}" if "shard_mb" in row else "-"
        print(f"{row['kind']:<6} {row['source']:<32} {workers:>7} {row['samples_per_s']:>10.1f} {size:>10}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
