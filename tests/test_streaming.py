"""Streaming shards: `mmft optimize` writes a config's readers to litdata shards and their index, and StreamingShards
trains from them: the same Examples and pixels as the in-memory readers, the same bad-sample handling, and the very
batches of the in-memory path for every sampling (so DDP padding across ranks and workers, and an exact mid-epoch
resume from the DataModule's state, as in memory)."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import socket
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import make_workdir
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
from data_modules.sampler import modality_length
from data_modules.shard_index import INDEX_NAME, ShardIndexError, read_shard_index
from data_modules.shards import example_to_item, item_to_example
from data_modules.streaming import DAMAGED_SHARD, DamagedShardError
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
    sample with the videos, written by the same library code, and (``odd``) the same but one video question, whose
    odd count makes DDP pad."""
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
    optimize.write_shards(llava(sample_data).read() + msrvtt(sample_data).read()[:-1], str(folder / "odd"), 1, "64MB")
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
    """A collate that reads no pixels (as VL-BART's on feature files): samples come without media (a
    :class:`data_modules.collate.Collate` whose every example fits)."""

    needs_media = False
    video_frames = None

    def __call__(self, samples: list[Sample]) -> dict:
        return samples_of(samples)

    def check_length(self, example, training: bool) -> LengthCheck:
        return LengthCheck()


def test_shard_item_round_trip_keeps_the_example_and_the_file_bytes(sample_data: Path) -> None:
    video = msrvtt(sample_data).read()[0]
    image = llava(sample_data).read()[0]
    for example in (video, image):
        back, images, video_bytes = item_to_example(example_to_item(example))
        assert back == example
        assert images == [path.read_bytes() for path in example.images]
        assert video_bytes == (example.video.read_bytes() if example.video is not None else None)


def test_optimize_writes_every_task_and_counts_bad_records(shards: Path, sample_data: Path) -> None:
    """The shards hold exactly the Examples the in-memory readers give (checked field by field), in reader order,
    their index each one's task, id and modality length, and the malformed record was counted in the printed
    report, never written."""
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
    index = read_shard_index(str(shards / "all"))
    assert index.ids == [e.id for e in expected] and index.tasks == [e.task for e in expected]
    assert index.lengths == [modality_length(e) for e in expected]
    assert {n > 0 for n in index.lengths} == {True, False}  # images, video and text-only examples


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

    needs_media = True
    video_frames = None

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


def test_eval_shards_and_shards_without_or_with_a_foreign_index_are_refused(shards: Path, tmp_path: Path) -> None:
    stream = StreamingShards(str(shards / "mixed"))
    with pytest.raises(DataConfigError, match="data.val: StreamingShards readers serve training only"):
        MultitaskDataModule(train=[stream], val=[stream])
    bare = tmp_path / "bare"
    shutil.copytree(shards / "mixed", bare)
    (bare / INDEX_NAME).unlink()
    with pytest.raises(ShardIndexError, match=rf"{bare}: no shard index .*`mmft optimize --config .* --out {bare}`"):
        MultitaskDataModule(train=[StreamingShards(str(bare))], collate_fn=ids_of).train_dataloader()
    shutil.copy(shards / "odd" / INDEX_NAME, bare / INDEX_NAME)  # one item fewer
    with pytest.raises(ShardIndexError, match=rf"{bare}: the shards hold 232 items, their index 231"):
        list(MultitaskDataModule(train=[StreamingShards(str(bare))], collate_fn=ids_of).train_dataloader())
    index = json.loads((shards / "mixed" / INDEX_NAME).read_text())
    index["id"] = index["id"][::-1]
    (bare / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ShardIndexError, match=rf"{bare}: item \d+ is '[\w-]+', its index says '[\w-]+'"):
        list(MultitaskDataModule(train=[StreamingShards(str(bare))], collate_fn=ids_of).train_dataloader())


@pytest.fixture(scope="module")
def chunked(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LLaVA sample in shards of about 100 kB: several chunk files."""
    folder = tmp_path_factory.mktemp("chunked") / "shards"
    optimize.write_shards(llava(sample_data).read(), str(folder), 1, "100KB")
    return folder


def damage(chunked: Path, to: Path, how: str) -> tuple[Path, str, list[str]]:
    """A copy of ``chunked`` with its second chunk file missing, truncated or overwritten in the middle; returns the
    copy, the chunk's name and the ids of the items it holds."""
    shutil.copytree(chunked, to)
    chunks = json.loads((to / "index.json").read_text())["chunks"]
    first, second = chunks[0]["chunk_size"], chunks[1]["chunk_size"]
    ids = read_shard_index(str(to)).ids[first:first + second]
    chunk = to / chunks[1]["filename"]
    if how == "missing":
        chunk.unlink()
    elif how == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:1000])
    else:  # garbled bytes where the item offsets are, the file's size unchanged
        data = bytearray(chunk.read_bytes())
        data[4:64] = b"\xfe" * 60
        chunk.write_bytes(bytes(data))
    return to, chunk.name, ids


@pytest.mark.parametrize("how", ["missing", "truncated", "corrupt"])
def test_a_damaged_chunk_is_a_named_error_or_a_counted_skip(chunked: Path, tmp_path: Path, how: str) -> None:
    """Never a wait on a chunk that will not come nor a bare decoding error: the error names the chunk file, the
    item and its id; under on_error: skip the chunk's items are left out and counted, every other item is read."""
    folder, name, lost = damage(chunked, tmp_path / how, how)

    def data(on_error: str) -> MultitaskDataModule:
        module = MultitaskDataModule(train=[StreamingShards(str(folder))], batch_size=4, sampling="concat",
                                     on_error=on_error, collate_fn=samples_of)
        module.setup("fit")
        return module

    with pytest.raises(DamagedShardError, match=rf"{folder}: item \d+ \(id '\w+'\): its chunk {name} "
                                                r"(is missing|holds 1000 bytes, not the \d+ written|cannot be read)"):
        list(data("raise").train_dataloader())
    skipping = data("skip")
    batches = [skipping.on_before_batch_transfer(batch, 0) for batch in skipping.train_dataloader()]
    read = [sample.example.id for batch in batches if batch is not None for sample in batch["samples"]]
    everything = read_shard_index(str(folder)).ids
    assert sorted(read) == sorted(set(everything) - set(lost))
    assert skipping.media_skips.counts == {DAMAGED_SHARD: len(lost)}


def ids_of(samples: list[Sample]) -> list[str]:
    return [s.example.id for s in samples]


class IdCollate:
    """Ids and tasks of a batch, reading no pixels (ordering tests need no decoding)."""

    needs_media = False

    def __call__(self, samples: list[Sample]) -> dict:
        return {"id": [s.example.id for s in samples], "task": [s.example.task for s in samples]}


SAMPLINGS = {
    "round_robin, batch size per task": {"sampling": "round_robin", "batch_size": {"llava_instruct": 8,
                                                                                  "msrvtt_qa": 3, "extra": 5}},
    "proportional, grouped by modality and length": {"sampling": "proportional", "batch_size": 8,
                                                     "group_by_modality_length": True},
    "concat": {"sampling": "concat", "batch_size": 8},
}


@pytest.mark.parametrize("settings", SAMPLINGS.values(), ids=SAMPLINGS.keys())
def test_batches_from_shards_are_the_in_memory_batches(shards: Path, sample_data: Path, settings: dict) -> None:
    """Shards (one set of two tasks, and the LLaVA file again in memory as a third task beside it) give, epoch by
    epoch, the batches of the same readers held in memory: the ids batch by batch, for the same seed."""
    def epochs(train: list) -> list[list[list[str]]]:
        data = MultitaskDataModule(train=train, seed=7, collate_fn=IdCollate(), **settings)
        data.setup("fit")
        loader = data.train_dataloader()
        batches = []
        for epoch in (0, 1):
            loader.batch_sampler.set_epoch(epoch)
            batches.append([batch["id"] for batch in loader])
        return batches

    extra = llava(sample_data, task="extra")
    in_memory = epochs([llava(sample_data), msrvtt(sample_data), extra])
    assert in_memory[0] != in_memory[1] and sum(map(len, in_memory[0])) == 432
    assert epochs([StreamingShards(str(shards / "mixed")), extra]) == in_memory


def rank_fits(rank: int, port: int, input_dir: str, queue) -> None:
    """One DDP rank of a Lightning fit (gloo, processes started here: Lightning launches none) with two DataLoader
    workers: the ids of each batch of two epochs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      LOCAL_RANK=str(rank), RANK=str(rank))
    data = MultitaskDataModule(train=[StreamingShards(input_dir)], batch_size=8, num_workers=2, seed=3,
                               collate_fn=IdCollate())
    model = IdRecorder()
    Trainer(accelerator="cpu", strategy="ddp", devices=2, max_epochs=2, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=data)
    queue.put((rank, model.ids))


class IdRecorder(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.ids: dict[int, list[list[str]]] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.ids.setdefault(self.current_epoch, []).append(batch["id"])
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_two_ranks_with_two_workers_read_every_example_once_plus_the_documented_padding(shards: Path) -> None:
    """A DDP fit over 2 gloo ranks x 2 workers from shards of 200 LLaVA and 31 MSRVTT-QA examples: each epoch, the
    ranks' ids together are the whole dataset, plus one duplicate: the odd task is padded by repeating the first
    example of its shuffled order (DistributedSampler's rule, per task); both ranks run the same task at each step."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("fork")  # the parent has imported everything already
    queue = context.Queue()
    ranks = [context.Process(target=rank_fits, args=(r, port, str(shards / "odd"), queue)) for r in range(2)]
    for process in ranks:
        process.start()
    results = dict(queue.get(timeout=180) for _ in ranks)
    for process in ranks:
        process.join(timeout=60)
    index = read_shard_index(str(shards / "odd"))
    videos = [i for i, task in zip(index.ids, index.tasks) if task == "msrvtt_qa"]
    assert len(index) == 231 and len(videos) == 31
    for epoch in (0, 1):
        batches = [results[rank][epoch] for rank in (0, 1)]
        assert len(batches[0]) == len(batches[1]) == 13 + 2  # ceil(100 / 8) + ceil(16 / 8)
        for left, right in zip(*batches):
            assert (left[0] in videos) == (right[0] in videos)
        seen = Counter(i for rank in batches for batch in rank for i in batch)
        assert set(seen) == set(index.ids) and sum(seen.values()) == 232
        (padding,) = [i for i, n in seen.items() if n == 2]
        assert padding in videos
    assert results[0][0] != results[0][1]


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
    """Each sample's mean RGB (of its image, or of its video's frames; 0 without media) plus a small offset from its
    id and question, as a float32 batch: every sample, video and text-only ones included, gives its own input, so a
    resumed run that replayed another batch would log other losses."""
    rows = []
    for sample in samples:
        if sample.images:
            pixels = np.asarray(sample.images[0], dtype=np.float32).reshape(-1, 3)
        elif sample.frames is not None:
            pixels = sample.frames.numpy().astype(np.float32).reshape(-1, 3)
        else:
            pixels = np.zeros((1, 3), np.float32)
        text = zlib.crc32(f"{sample.example.id}\n{sample.example.prompt}".encode()) / 2**32
        rows.append(pixels.mean(axis=0) / 255 + np.float32(0.01 * text))
    return torch.from_numpy(np.stack(rows).astype(np.float32))


def test_every_sample_of_the_resume_test_gives_its_own_input(shards: Path) -> None:
    """What makes the resume test able to fail: no two samples (videos and text-only ones included) look alike."""
    samples = streamed_samples(shards / "mixed")
    assert sum(s.frames is not None for s in samples) == 32  # the MSRVTT-QA questions
    rows = mean_colours(samples)
    assert len({tuple(row.tolist()) for row in rows}) == len(samples)


def test_resume_mid_epoch_gives_the_losses_of_an_uninterrupted_run(shards: Path, tmp_path: Path) -> None:
    """Two tasks in one shard set, one task per batch, two workers: resumed from a checkpoint saved mid-epoch or at
    the epoch's end, a run logs the uninterrupted run's losses, in the resumed epoch and in the next one."""
    def fit(max_steps: int, ckpt_path: str | None = None, **kwargs) -> list[float]:
        data = MultitaskDataModule(train=[StreamingShards(str(shards / "mixed"))], batch_size=8,
                                   sampling="proportional", num_workers=2, seed=5, num_frames=1,
                                   collate_fn=mean_colours)
        model = PixelRegression()
        Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                max_steps=max_steps, **kwargs).fit(model, datamodule=data, ckpt_path=ckpt_path)
        return model.losses

    epoch = 200 // 8 + 32 // 8  # 200 LLaVA examples and 32 MSRVTT-QA questions
    uninterrupted = fit(epoch + 3, enable_checkpointing=False)
    saved = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    assert fit(epoch, callbacks=[saved]) == uninterrupted[:epoch]
    for step in (3, epoch):
        resumed = fit(epoch + 3, ckpt_path=str(tmp_path / f"epoch=0-step={step}.ckpt"), enable_checkpointing=False)
        assert resumed == uninterrupted[step:]  # exact: the same batches, in order, on the same weights


def test_mmft_fit_names_a_shard_set_without_index_and_prints_no_traceback(sample_data, tmp_path, monkeypatch, capsys):
    """A user's mistake through the CLI: the message naming the folder and the command to run, not a traceback."""
    from mmft.cli import main

    workdir = make_workdir(tmp_path, sample_data, {"trainer": {"logger": False, "max_steps": 1}})
    (workdir / "no_index").mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("WANDB_MODE", "offline")
    shards = [{"class_path": "data_modules.StreamingShards", "init_args": {"input_dir": "no_index"}}]
    monkeypatch.setattr("sys.argv", ["mmft", "fit", "--config", "configs/tiny/llava_dora.yaml", "--config",
                                     "short.yaml", f"--data.init_args.train={json.dumps(shards)}"])
    with pytest.raises(SystemExit, match=r"^mmft fit: no_index: no shard index \(mmft_index\.json\).*"
                                         r"`mmft optimize --config <your configs> --out no_index`"):
        main()
    assert "Traceback" not in capsys.readouterr().err
