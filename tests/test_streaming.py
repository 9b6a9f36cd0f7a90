"""Streaming shards: `mmft optimize` writes a config's readers to litdata shards and StreamingShards trains from
them: the same Examples and pixels as the in-memory readers, the same bad-sample handling, litdata's sharding across
ranks and workers, and an exact mid-epoch resume through Lightning's dataloader state."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from data_modules import (
    MSRVTTQA,
    DataConfigError,
    DataFormatError,
    LlavaInstruct,
    MediaError,
    MultitaskDataModule,
    Sample,
    StreamingShards,
    load_image,
    load_video_frames,
)
from data_modules.formats.base import TOO_LONG
from data_modules.records import LengthCheck
from data_modules.shards import example_to_item, item_to_example
from mmft.tools import optimize

ROOT = Path(__file__).resolve().parents[1]


def llava(root: Path, **kwargs) -> LlavaInstruct:
    return LlavaInstruct(root / "llava" / "llava_instruct_sample.json", root, **kwargs)


def msrvtt(root: Path) -> MSRVTTQA:
    return MSRVTTQA(root / "msrvtt_qa" / "val_qa.json", root / "msrvtt_qa" / "videos")


def write_broken_llava(folder: Path) -> Path:
    """Three records: one whose image is not an image (found when decoded), one malformed (no answer), one good."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bad.png").write_bytes(b"not a png")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "good.png")
    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    records = [
        {"id": "undecodable", "image": "bad.png", "conversations": turns},
        {"id": "malformed", "image": "good.png", "conversations": turns[:1]},
        {"id": "good", "image": "good.png", "conversations": turns},
    ]
    path = folder / "broken.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def shards(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mmft optimize` (the tool's main, in process) over the tiny LLaVA recipe with its training readers replaced
    by the LLaVA sample, the MSRVTT-QA videos and a broken file, under on_error: skip; and (``mixed``) the LLaVA
    sample with the videos, written by the same library code."""
    folder = tmp_path_factory.mktemp("streaming")
    broken = write_broken_llava(folder / "broken")
    overlay = {"data": {"init_args": {"on_error": "skip", "train": [
        {"class_path": "data_modules.LlavaInstruct",
         "init_args": {"json_path": str(sample_data / "llava" / "llava_instruct_sample.json"),
                       "image_folder": str(sample_data)}},
        {"class_path": "data_modules.MSRVTTQA",
         "init_args": {"json_path": str(sample_data / "msrvtt_qa" / "val_qa.json"),
                       "video_folder": str(sample_data / "msrvtt_qa" / "videos")}},
        {"class_path": "data_modules.LlavaInstruct",
         "init_args": {"json_path": str(broken), "image_folder": str(broken.parent), "task": "broken"}},
    ]}}}
    (folder / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    argv = ["--config", str(ROOT / "configs/tiny/llava.yaml"), "--config", str(folder / "overlay.yaml"),
            "--stage", "train", "--out", str(folder / "all"), "--num-workers", "2"]
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
        assert optimize.main(argv) == 0
    (folder / "printed.txt").write_text(printed.getvalue())
    optimize.write_shards(llava(sample_data).read() + msrvtt(sample_data).read(), str(folder / "mixed"), 1, "64MB")
    return folder


def streamed_samples(input_dir: Path, load_media: bool = True) -> list:
    """Every sample of one shard folder through the DataModule's streaming loader, in the order read."""
    collate = samples_of if load_media else FeatureCollate()
    data = MultitaskDataModule(train=[StreamingShards(str(input_dir))], batch_size=4, sampling="concat",
                               on_error="skip", collate_fn=collate)
    data.setup("fit")
    return [sample for batch in data.train_dataloader() for sample in batch["samples"]]


def samples_of(samples: list[Sample]) -> dict:
    return {"samples": samples}


class FeatureCollate:
    """A collate that reads no pixels (as VL-BART's on feature files): samples come without media."""

    needs_media = False

    def __call__(self, samples: list[Sample]) -> dict:
        return samples_of(samples)


def test_shard_item_round_trip_keeps_the_example_and_the_file_bytes(sample_data: Path) -> None:
    video = msrvtt(sample_data).read()[0]
    image = llava(sample_data).read()[0]
    for example in (video, image):
        back, images, video_bytes = item_to_example(example_to_item(example))
        assert back == example
        assert images == [path.read_bytes() for path in example.images]
        assert video_bytes == (example.video.read_bytes() if example.video is not None else None)


def test_optimize_writes_every_task_and_counts_bad_records(shards: Path, sample_data: Path) -> None:
    """The shards hold exactly the Examples the in-memory readers give (checked field by field), tasks mixed in every
    chunk, and the malformed record was counted in the printed report, never written."""
    printed = (shards / "printed.txt").read_text()
    assert "broken.json): skipped 1 of 3 (1 malformed record)" in printed and "broken.json#1 (id malformed)" in printed
    assert f"wrote {shards / 'all'}: 234 examples (llava_instruct 200, msrvtt_qa 32, broken 2)" in printed
    assert not list(shards.glob(".*.partial"))
    streamed = [sample.example for sample in streamed_samples(shards / "all", load_media=False)]
    expected = llava(sample_data).read() + msrvtt(sample_data).read()
    expected += LlavaInstruct(shards / "broken" / "broken.json", shards / "broken", task="broken",
                              on_error="skip").read()
    assert len(streamed) == len(expected) == 234
    assert sorted(streamed, key=lambda e: (e.task, e.id)) == sorted(expected, key=lambda e: (e.task, e.id))
    assert len({e.task for e in streamed[:40]}) > 1  # written in a shuffled order


def test_streamed_media_decode_to_the_same_pixels_as_the_files(shards: Path) -> None:
    samples = streamed_samples(shards / "mixed")
    with_image = [s for s in samples if s.example.images][:5]
    assert with_image and len(with_image[0].images) == 1
    for sample in with_image:
        assert np.array_equal(np.asarray(sample.images[0]), np.asarray(load_image(sample.example.images[0])))
    videos = [s for s in samples if s.example.video is not None][:3]
    assert videos
    for sample in videos:
        expected = load_video_frames(sample.example.video, 8, span=sample.example.video_span)
        assert torch.equal(sample.frames, expected.frames) and sample.frame_times == expected.times


class FlagLong:
    """A stand-in for a model's collate with a token budget: examples with a ``too_long`` id exceed it."""

    def __init__(self, too_long: set[str]) -> None:
        self.too_long = too_long

    def __call__(self, samples: list[Sample]) -> dict:
        return {"id": [s.example.id for s in samples], "task": [s.example.task for s in samples]}

    def check_length(self, example, training: bool) -> LengthCheck:
        too_long = example.id in self.too_long
        return LengthCheck(problem=f"{example.source}: 999 tokens > max_length 9" if too_long else None)


def test_bad_samples_are_raised_or_skipped_and_counted_as_in_memory(shards: Path) -> None:
    def data(on_error: str, collate) -> MultitaskDataModule:
        module = MultitaskDataModule(train=[StreamingShards(str(shards / "all"), task="mine")], batch_size=1,
                                     sampling="concat", on_error=on_error, collate_fn=collate)
        module.setup("fit")
        return module

    with pytest.raises(MediaError, match=r"broken\.json#0 \(id undecodable\).*bad\.png: corrupt"):
        list(data("raise", samples_of).train_dataloader())
    skipping = data("skip", FlagLong({"good"}))
    batches = [skipping.on_before_batch_transfer(batch, 0) for batch in skipping.train_dataloader()]
    assert batches.count(None) == 2 and len(batches) == 234  # dropped: one undecodable, one too long
    assert skipping.media_skips.counts == {"corrupt media": 1, TOO_LONG: 1}
    assert {task for batch in batches if batch is not None for task in batch["task"]} == {"mine"}
    too_long = data("raise", FlagLong({"good", "undecodable"}))
    with pytest.raises(DataFormatError, match=r"broken\.json#\d \(id \w+\): 999 tokens > max_length 9"):
        list(too_long.train_dataloader())


def test_streaming_arguments_that_cannot_work_are_refused(shards: Path, sample_data: Path) -> None:
    stream = StreamingShards(str(shards / "mixed"))
    with pytest.raises(DataConfigError, match="mixes StreamingShards with in-memory readers"):
        MultitaskDataModule(train=[stream, llava(sample_data)], sampling="concat")
    with pytest.raises(DataConfigError, match="data.sampling: round_robin does not work with StreamingShards"):
        MultitaskDataModule(train=[stream], sampling="round_robin")
    with pytest.raises(DataConfigError, match="data.batch_size per task"):
        MultitaskDataModule(train=[stream], sampling="concat", batch_size={"llava_instruct": 4})
    with pytest.raises(DataConfigError, match="data.group_by_modality_length: true"):
        MultitaskDataModule(train=[stream], sampling="concat", group_by_modality_length=True)
    with pytest.raises(DataConfigError, match="data.val: StreamingShards readers serve training only"):
        MultitaskDataModule(train=[stream], val=[stream], sampling="concat")


def ids_of(samples: list[Sample]) -> list[str]:
    return [s.example.id for s in samples]


def rank_reads(rank: int, port: int, input_dir: str, queue) -> None:
    """One DDP rank (gloo) with two DataLoader workers: the ids of each of two epochs."""
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    data = MultitaskDataModule(train=[StreamingShards(input_dir)], batch_size=8, sampling="concat", num_workers=2,
                               collate_fn=ids_of)
    loader = data.train_dataloader()
    queue.put((rank, len(loader), [[i for batch in loader for i in batch] for _ in range(2)]))
    torch.distributed.destroy_process_group()


def test_two_ranks_with_two_workers_read_each_example_at_most_once(shards: Path, sample_data: Path) -> None:
    """litdata shards the examples across 2 ranks x 2 workers: no example twice in an epoch, the same number of
    batches on every rank, and only the documented remainder dropped (drop_last under DDP: floor(floor(N / batch) /
    ranks) batches per rank)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("fork")  # the parent has imported everything already
    queue = context.Queue()
    ranks = [context.Process(target=rank_reads, args=(r, port, str(shards / "mixed"), queue))
             for r in range(2)]
    for process in ranks:
        process.start()
    results = sorted(queue.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    dataset = {e.id for e in llava(sample_data).read() + msrvtt(sample_data).read()}
    per_rank = (len(dataset) // 8) // 2 * 8
    assert [length for _, length, _ in results] == [per_rank // 8] * 2
    for epoch in range(2):
        seen = Counter(i for _, _, epochs in results for i in epochs[epoch])
        assert [len(epochs[epoch]) for _, _, epochs in results] == [per_rank, per_rank]
        assert max(seen.values()) == 1 and set(seen) <= dataset and len(seen) == 2 * per_rank


class PixelRegression(LightningModule):
    """A model whose every loss depends on the batch's pixels and on every earlier step: a resumed run that read
    another batch, or restarted its epoch, would log other losses."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)
        self.losses: list[float] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = (self.layer(batch) - 1).pow(2).mean()
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def mean_colours(samples: list[Sample]) -> torch.Tensor:
    """Each sample's mean RGB (0 for text-only ones), as a float32 batch."""
    rows = [np.asarray(s.images[0], dtype=np.float32).mean(axis=(0, 1)) / 255 if s.images else np.zeros(3, np.float32)
            for s in samples]
    return torch.from_numpy(np.stack(rows))


def test_resume_mid_epoch_gives_the_losses_of_an_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    """Two tasks in one shard set, two workers: resumed from a checkpoint saved mid-epoch or at the epoch's end, a run
    logs the uninterrupted run's losses, in the resumed epoch and in the next one (which litdata alone replays)."""
    def fit(max_steps: int, ckpt_path: str | None = None, **kwargs) -> list[float]:
        data = MultitaskDataModule(train=[StreamingShards(str(shards / "mixed"))], batch_size=8, sampling="concat",
                                   num_workers=2, seed=5, num_frames=1, collate_fn=mean_colours)
        model = PixelRegression()
        Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                max_steps=max_steps, **kwargs).fit(model, datamodule=data, ckpt_path=ckpt_path)
        return model.losses

    epoch = 232 // 8  # 200 LLaVA examples and 32 MSRVTT-QA questions
    uninterrupted = fit(epoch + 3, enable_checkpointing=False)
    saved = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    assert fit(epoch, callbacks=[saved]) == uninterrupted[:epoch]
    for step in (3, epoch):
        resumed = fit(epoch + 3, ckpt_path=str(tmp_path / f"epoch=0-step={step}.ckpt"), enable_checkpointing=False)
        assert resumed == uninterrupted[step:]  # exact: the same batches, in order, on the same weights
