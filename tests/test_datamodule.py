"""ExampleDataset, the multitask batch sampler and MultitaskDataModule (alone, under a Trainer, from YAML)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from PIL import Image
from torch.utils.data import DistributedSampler

from data_modules import (
    GQA,
    MSRVTTQA,
    NLVR2,
    SKIPPED_KEY,
    DataConfigError,
    DataFormatError,
    ExampleDataset,
    LlavaInstruct,
    MediaError,
    MultitaskBatchSampler,
    MultitaskDataModule,
    Sample,
    SkipFilteringCollate,
    SkippedSample,
    VQAv2,
)
from data_modules.records import LengthCheck
from data_modules.sampler import deal_by_length
from mmft.metrics import VQAAccuracy


def collate_ids(samples: list[Sample]) -> dict:
    """A stand-in for a model's collate: what the tests need to see (module level, so workers can pickle it)."""
    return {
        "task": [s.example.task for s in samples],
        "id": [s.example.id for s in samples],
        "sizes": [[image.size for image in s.images] for s in samples],
    }


def llava(root: Path, **kwargs) -> LlavaInstruct:
    return LlavaInstruct(root / "llava" / "llava_instruct_sample.json", root, **kwargs)


def vqav2(root: Path, split: str = "val2014", answered: bool = True, **kwargs) -> VQAv2:
    folder = root / "vqav2"
    annotations = folder / f"v2_mscoco_{split}_annotations.json" if answered else None
    questions = folder / f"v2_OpenEnded_mscoco_{split}_questions.json"
    return VQAv2(questions, root / "coco" / split, split, annotations=annotations, **kwargs)


def gqa(root: Path, split: str = "testdev") -> GQA:
    return GQA(root / "gqa" / f"{split}_balanced_questions.json", root / "gqa" / "images")


def broken_image_reader(tmp_path: Path, n_good: int = 2, n_bad: int = 1) -> LlavaInstruct:
    """A LLaVA file whose first ``n_bad`` images exist but are not images (found only when decoded)."""
    records = []
    for k in range(n_bad + n_good):
        name = f"img{k}.png"
        if k < n_bad:
            (tmp_path / name).write_bytes(b"garbage")
        else:
            Image.new("RGB", (4, 4)).save(tmp_path / name)
        turns = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
        records.append({"id": f"r{k}", "image": name, "conversations": turns})
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(records))
    return LlavaInstruct(path, tmp_path, task="broken")


# ------------------------------------------------------------------------------------------------ dataset


def test_example_dataset_decodes_images_and_videos(sample_data: Path) -> None:
    examples = llava(sample_data).read()
    dataset = ExampleDataset(examples)
    samples = [dataset[i] for i in range(len(dataset))]
    with_image = [s for s in samples if s.example.images]
    assert all(len(s.images) == 1 and s.images[0].mode == "RGB" and s.images[0].size == (64, 64) for s in with_image)
    assert all(s.images == [] and s.frames is None for s in samples if not s.example.images)

    nlvr2 = NLVR2(sample_data / "nlvr2" / "dev.json", sample_data / "nlvr2" / "images" / "dev").read()
    assert len(ExampleDataset(nlvr2)[0].images) == 2

    videos = MSRVTTQA(sample_data / "msrvtt_qa" / "val_qa.json", sample_data / "msrvtt_qa" / "videos").read()
    sample = ExampleDataset(videos, num_frames=4)[0]
    assert sample.frames.dtype == torch.uint8 and tuple(sample.frames.shape) == (4, 64, 64, 3)

    assert ExampleDataset(examples, load_media=False)[0].images == []


def test_corrupt_image_raises_or_is_skipped(tmp_path: Path) -> None:
    examples = broken_image_reader(tmp_path).read()  # the garbage file exists, so reading succeeds
    with pytest.raises(MediaError, match=r"broken\.json#0 \(id r0\): .*img0\.png: corrupt or unreadable image"):
        ExampleDataset(examples)[0]
    skipped = ExampleDataset(examples, on_error="skip")[0]
    assert isinstance(skipped, SkippedSample) and skipped.source.endswith("#0 (id r0)")
    assert skipped.reason == "corrupt media" and "img0.png" in skipped.message

    collate = SkipFilteringCollate(collate_ids)
    batch = collate([ExampleDataset(examples, on_error="skip")[i] for i in range(3)])
    assert batch["id"] == ["r1", "r2"] and batch[SKIPPED_KEY] == [skipped]
    assert collate([skipped]) == {SKIPPED_KEY: [skipped]}
    with pytest.raises(TypeError, match="must return a dict"):
        SkipFilteringCollate(lambda samples: [s.example.id for s in samples])([skipped, ExampleDataset(examples)[1]])


def test_worker_errors_keep_their_type(tmp_path: Path) -> None:
    reader = broken_image_reader(tmp_path)
    data = MultitaskDataModule(train=[reader], batch_size=3, collate_fn=collate_ids, num_workers=1)
    data.setup("fit")
    with pytest.raises(MediaError, match=r"img0\.png: corrupt or unreadable image"):
        next(iter(data.train_dataloader()))


# ------------------------------------------------------------------------------------------------ sampler


def sampler(sizes, batch_sizes, sampling="round_robin", seed=0, rank=0, world=1, epoch=0,
            modality_lengths=None) -> MultitaskBatchSampler:
    inner = DistributedSampler(range(sum(sizes)), num_replicas=world, rank=rank, shuffle=False)
    batch_sampler = MultitaskBatchSampler(inner, sizes, batch_sizes, sampling=sampling, seed=seed,
                                          modality_lengths=modality_lengths)
    batch_sampler.set_epoch(epoch)
    return batch_sampler


def task_of(index: int, sizes: list[int]) -> int:
    return next(t for t in range(len(sizes)) if index < sum(sizes[: t + 1]))


@pytest.mark.parametrize("sampling", ["round_robin", "proportional"])
def test_sampler_one_task_per_batch_every_example_once(sampling: str) -> None:
    sizes, batch_sizes = [10, 3, 7], [4, 2, 3]
    batches = list(sampler(sizes, batch_sizes, sampling))
    # per task ceil(size / batch): 3 + 2 + 3 batches
    assert len(batches) == len(sampler(sizes, batch_sizes, sampling)) == 8
    assert sorted(i for b in batches for i in b) == list(range(20))
    tasks = []
    for batch in batches:
        (task,) = {task_of(i, sizes) for i in batch}
        assert len(batch) <= batch_sizes[task]
        tasks.append(task)
    if sampling == "round_robin":
        assert tasks == [0, 1, 2, 0, 1, 2, 0, 2]  # task 1 runs out after two rounds
    assert Counter(tasks) == {0: 3, 1: 2, 2: 3}


def test_sampler_is_deterministic_per_seed_and_epoch() -> None:
    def order(**kwargs) -> list[list[int]]:
        return list(sampler([30, 20], [4, 4], "proportional", **kwargs))

    assert order(seed=1, epoch=2) == order(seed=1, epoch=2)
    assert order(seed=1, epoch=2) != order(seed=1, epoch=3)
    assert order(seed=1, epoch=2) != order(seed=2, epoch=2)


def test_sampler_shards_ranks_like_distributed_sampler() -> None:
    sizes, batch_sizes = [11, 4], [3, 2]
    ranks = [list(sampler(sizes, batch_sizes, rank=r, world=2, epoch=5)) for r in (0, 1)]
    # each rank: ceil(11 / 2) = 6 examples of task 0 (2 batches of 3), 2 of task 1 (1 batch)
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert [[task_of(b[0], sizes) for b in batches] for batches in ranks] == [[0, 1, 0], [0, 1, 0]]
    everything = [i for batches in ranks for b in batches for i in b]
    assert sorted(set(everything)) == list(range(15))
    assert len(everything) == 16  # task 0 padded from 11 to 12 by repeating one index
    shared = {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}
    assert len(shared) == 1  # only the padding index is on both ranks


def test_grouping_by_modality_length_keeps_batches_pure_and_ranks_balanced() -> None:
    """LLaVA's group_by_modality_length: task 0 has 13 image examples (lengths 1..13) and 7 text-only ones (-1..-7);
    task 1 is text-only. Two ranks, batch 3: megabatches of 6."""
    sizes, batch_sizes = [20, 5], [3, 2]
    lengths = list(range(1, 14)) + [-n for n in range(1, 8)] + [-4] * 5
    ranks = [list(sampler(sizes, batch_sizes, "proportional", rank=r, world=2, epoch=3, modality_lengths=lengths))
             for r in (0, 1)]
    # task 0: images ceil(13 / 6) = 3 megabatches, text ceil(7 / 6) = 2; task 1: ceil(5 / 4) = 2
    assert len(ranks[0]) == len(ranks[1]) == len(sampler(sizes, batch_sizes, world=2, modality_lengths=lengths)) == 7
    for left, right in zip(*ranks):
        step = left + right
        assert {task_of(i, sizes) for i in step} in ({0}, {1})  # one task per step
        assert len({lengths[i] > 0 for i in step}) == 1  # one modality per step, on both ranks
        if len(left) == len(right) == 3:  # a full megabatch: dealt longest first to the shorter rank
            totals = sorted(abs(sum(lengths[i] for i in batch)) for batch in (left, right))
            assert totals[1] - totals[0] <= max(abs(lengths[i]) for i in step)
    assert sorted({i for batches in ranks for b in batches for i in b}) == list(range(25))
    one = list(sampler(sizes, batch_sizes, "proportional", epoch=3, modality_lengths=lengths))
    assert one != list(sampler(sizes, batch_sizes, "proportional", epoch=4, modality_lengths=lengths))
    assert sorted(i for b in one for i in b) == list(range(25))  # one process: every example once, no padding


def test_resumed_sampler_skips_the_trained_batches_of_its_epoch_only() -> None:
    full = {epoch: list(sampler([10, 7], [3, 2], "proportional", epoch=epoch)) for epoch in (2, 3)}
    resumed = MultitaskBatchSampler(DistributedSampler(range(17), num_replicas=1, rank=0, shuffle=False), [10, 7],
                                    [3, 2], sampling="proportional", resume=(2, 3))
    assert len(resumed) == len(full[2]) == 8  # Lightning counts the epoch's batches from the restored position
    resumed.set_epoch(2)
    assert list(resumed) == full[2][3:]
    resumed.set_epoch(3)
    assert list(resumed) == full[3]


def test_deal_by_length_balances_by_hand() -> None:
    """Lengths 9 8 5 4 3 1 into 2 groups of 3: 9 -> A, 8 -> B, 5 -> B (13), 4 -> A (13), 3 -> A (16), 1 -> B (14)."""
    groups = deal_by_length(np.array([10, 11, 12, 13, 14, 15]), np.array([4, 9, 1, 8, 5, 3]), 2)
    assert [sorted(g.tolist()) for g in groups] == [[10, 11, 15], [12, 13, 14]]


def test_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="needs a DistributedSampler"):
        MultitaskBatchSampler(range(3), [3], [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        sampler([3, 4], [1])
    with pytest.raises(ValueError, match="one non-zero length per example"):
        sampler([3], [1], modality_lengths=[1, -2])


# ------------------------------------------------------------------------------------------------ DataModule


def test_datamodule_train_and_eval_loaders(sample_data: Path) -> None:
    data = MultitaskDataModule(
        train=[llava(sample_data), vqav2(sample_data, "train2014")],
        val=[vqav2(sample_data), gqa(sample_data)],
        test=[vqav2(sample_data, answered=False, task="vqav2_test")],
        batch_size={"llava_instruct": 16, "vqav2": 32, "gqa": 8},
        eval_batch_size=50,
        collate_fn=collate_ids,
    )
    data.setup("fit")
    assert data.train_tasks == ["llava_instruct", "vqav2"]
    batches = list(data.train_dataloader())
    tasks = [b["task"][0] for b in batches]
    assert all(len(set(b["task"])) == 1 for b in batches)
    # round robin until llava's 200 / 16 = 13 batches run out, then the rest of vqav2's 422 / 32 = 14
    assert tasks == ["llava_instruct", "vqav2"] * 13 + ["vqav2"]
    assert max(len(b["id"]) for b in batches if b["task"][0] == "vqav2") == 32

    assert data.eval_tasks("val") == ["vqav2", "gqa"]
    val = data.val_dataloader()
    assert [len(loader) for loader in val] == [4, 2]  # 161 and 80 questions in batches of 50
    first = next(iter(val[0]))
    assert first["task"] == ["vqav2"] * 50 and first["sizes"][0] == [(64, 64)]

    data.setup("test")
    assert data.eval_tasks("test") == ["vqav2_test"]
    assert len(data.test_dataloader()) == 1 and data.predict_dataloader() == []


def test_datamodule_concat_mixes_tasks(sample_data: Path) -> None:
    readers = [llava(sample_data), gqa(sample_data, "train")]
    data = MultitaskDataModule(train=readers, batch_size=64, sampling="concat", collate_fn=collate_ids)
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) == 7  # (200 + 240) / 64, rounded up
    assert any(len(set(b["task"])) == 2 for b in batches)


def test_datamodule_argument_errors(sample_data: Path) -> None:
    readers = [llava(sample_data)]
    with pytest.raises(DataConfigError, match=r"data\.batch_size has no entry for task 'llava_instruct'"):
        MultitaskDataModule(train=readers, batch_size={"vqav2": 4})
    with pytest.raises(DataConfigError, match=r"data\.batch_size or data\.eval_batch_size has no entry for .*'gqa'"):
        MultitaskDataModule(train=readers, val=[gqa(sample_data)], batch_size={"llava_instruct": 4})
    MultitaskDataModule(train=readers, val=[gqa(sample_data)], batch_size={"llava_instruct": 4}, eval_batch_size=2)
    with pytest.raises(DataConfigError, match="one int with sampling: concat"):
        MultitaskDataModule(train=readers, batch_size={"llava_instruct": 4}, sampling="concat")
    with pytest.raises(DataConfigError, match=r"data\.sampling"):
        MultitaskDataModule(train=readers, sampling="random")  # type: ignore[arg-type]
    with pytest.raises(DataConfigError, match="batch sizes must be positive"):
        MultitaskDataModule(train=readers, batch_size=0)

    data = MultitaskDataModule(train=readers)
    data.setup("fit")
    with pytest.raises(DataConfigError, match="no collate_fn.*collate_fn=model.collate"):
        data.train_dataloader()

    unanswered = MultitaskDataModule(train=[vqav2(sample_data, answered=False)], collate_fn=collate_ids)
    with pytest.raises(DataFormatError, match=r"data\.train: VQAv2\(task='vqav2', .*\.json\) has 161 examples with"):
        unanswered.setup("fit")


def test_datamodule_reports_empty_readers(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    path.write_text(json.dumps([{"id": "x", "conversations": []}]))
    data = MultitaskDataModule(val=[LlavaInstruct(path, tmp_path)], on_error="skip", collate_fn=collate_ids)
    with pytest.raises(DataFormatError, match=r"data\.val: LlavaInstruct.* yielded no examples .*malformed record"):
        data.setup("validate")


def test_datamodule_counts_media_skipped_in_workers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reader = broken_image_reader(tmp_path, n_good=3, n_bad=2)
    data = MultitaskDataModule(train=[reader], batch_size=2, on_error="skip", collate_fn=collate_ids, num_workers=2)
    data.setup("fit")
    kept = []
    with caplog.at_level(logging.WARNING, logger="data_modules"):
        for batch in data.train_dataloader():
            batch = data.on_before_batch_transfer(batch, 0)
            if batch is not None:
                assert SKIPPED_KEY not in batch
                kept += batch["id"]
        data.teardown("fit")
    assert sorted(kept) == ["r2", "r3", "r4"]
    assert data.media_skips.total == 2 and data.media_skips.counts == {"corrupt media": 2}
    assert "img0.png" in caplog.text and "img1.png" in caplog.text
    assert "skipped 2 (2 corrupt media)" in caplog.text


# ------------------------------------------------------------------------------------------------ with Lightning


class Recorder(LightningModule):
    """Records which examples each step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_ids: dict[int, list[str]] = {}
        self.val_tasks: dict[int, set[str]] = {}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.train_ids.setdefault(self.current_epoch, []).extend(batch["id"])
        return (self.weight - 1).pow(2).sum()

    def validation_step(self, batch: dict | None, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch is not None:
            self.val_tasks.setdefault(dataloader_idx, set()).update(batch["task"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(**kwargs) -> Trainer:
    quiet = {"enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    return Trainer(accelerator="cpu", devices=1, logger=False, **quiet, **kwargs)


def expected_epoch_ids(data: MultitaskDataModule, epoch: int) -> list[str]:
    loader = data.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    examples = loader.dataset.examples
    return [examples[i].id for batch in loader.batch_sampler for i in batch]


def test_fit_replays_the_seeded_order_of_each_epoch(sample_data: Path) -> None:
    def datamodule() -> MultitaskDataModule:
        return MultitaskDataModule(
            train=[llava(sample_data), gqa(sample_data, "train")],
            val=[vqav2(sample_data), gqa(sample_data)],
            batch_size=40,
            seed=3,
            sampling="proportional",
            collate_fn=collate_ids,
        )

    data, model = datamodule(), Recorder()
    trainer(max_epochs=2, limit_val_batches=1).fit(model, datamodule=data)
    assert model.val_tasks == {0: {"vqav2"}, 1: {"gqa"}}  # dataloader_idx -> data.eval_tasks("val")
    fresh = datamodule()
    fresh.setup("fit")
    for epoch in (0, 1):
        assert model.train_ids[epoch] == expected_epoch_ids(fresh, epoch)
    assert model.train_ids[0] != model.train_ids[1]


def test_fit_skips_a_batch_whose_samples_all_failed(tmp_path: Path) -> None:
    reader = broken_image_reader(tmp_path, n_good=2, n_bad=1)
    data = MultitaskDataModule(train=[reader], batch_size=1, on_error="skip", collate_fn=collate_ids)
    model = Recorder()
    trainer(max_epochs=1).fit(model, datamodule=data)
    assert sorted(model.train_ids[0]) == ["r1", "r2"] and data.media_skips.total == 1


def test_lightning_injects_its_distributed_sampler(sample_data: Path) -> None:
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    readers = [llava(sample_data), vqav2(sample_data, "train2014")]
    data = MultitaskDataModule(train=readers, batch_size=8, collate_fn=collate_ids)
    data.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):  # as Lightning does
        loader = data.train_dataloader()
    ranks = []
    for rank in (0, 1):
        injected = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ranked = _update_dataloader(loader, injected)
        assert isinstance(ranked.batch_sampler, MultitaskBatchSampler) and ranked.batch_sampler.sampler is injected
        assert isinstance(ranked.collate_fn, SkipFilteringCollate)
        _set_sampler_epoch(ranked, 4)  # what the fit loop calls every epoch
        ranks.append(list(ranked.batch_sampler))
    # per rank: llava ceil(200 / 2 / 8) = 13 batches, vqav2 ceil(422 / 2 / 8) = 27; one process: 25 + 53
    assert len(ranks[0]) == len(ranks[1]) == 13 + 27 and len(loader) == 25 + 53
    sizes = [200, 422]
    assert [task_of(b[0], sizes) for b in ranks[0]] == [task_of(b[0], sizes) for b in ranks[1]]
    assert sorted({i for batches in ranks for b in batches for i in b}) == list(range(622))
    assert ranks[0] == list(sampler(sizes, [8, 8], rank=0, world=2, epoch=4))


def test_datamodule_groups_llava_batches_by_modality_under_ddp(sample_data: Path) -> None:
    """The LLaVA sample mixes image and text-only conversations: with group_by_modality_length every batch on every
    rank holds one kind, also after Lightning re-creates the batch sampler for DDP."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    data = MultitaskDataModule(train=[llava(sample_data)], batch_size=8, collate_fn=collate_ids,
                               group_by_modality_length=True)
    data.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = data.train_dataloader()
    has_image = [bool(e.images) for e in loader.dataset.examples]
    assert 0 < sum(has_image) < len(has_image)
    steps = []
    for rank in (0, 1):
        ranked = _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=rank))
        _set_sampler_epoch(ranked, 1)
        steps.append(list(ranked.batch_sampler))
    assert len(steps[0]) == len(steps[1])
    for left, right in zip(*steps):
        assert len({has_image[i] for i in left + right}) == 1
    assert sorted({i for batches in steps for b in batches for i in b}) == list(range(len(has_image)))


# ------------------------------------------------------------------------------------------------ config, data


def test_datamodule_from_yaml_like_the_cli(sample_data: Path) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(MultitaskDataModule, "data")
    config = f"""
data:
  train:
    - class_path: data_modules.formats.LlavaInstruct
      init_args: {{json_path: {sample_data}/llava/llava_instruct_sample.json, image_folder: {sample_data}}}
    - class_path: VQAv2
      init_args:
        questions: {sample_data}/vqav2/v2_OpenEnded_mscoco_train2014_questions.json
        annotations: {sample_data}/vqav2/v2_mscoco_train2014_annotations.json
        image_folder: {sample_data}/coco/train2014
        split: train2014
        on_error: skip
  val:
    - class_path: data_modules.formats.GQA
      init_args:
        questions: {sample_data}/gqa/testdev_balanced_questions.json
        image_folder: {sample_data}/gqa/images
  batch_size: {{llava_instruct: 4, vqav2: 8}}
  eval_batch_size: 16
  sampling: proportional
"""
    data = parser.instantiate_classes(parser.parse_string(config)).data
    assert isinstance(data, MultitaskDataModule) and data.sampling == "proportional"
    assert [type(r).__name__ for r in data.readers["train"]] == ["LlavaInstruct", "VQAv2"]
    assert data.readers["train"][1].on_error == "skip" and data.eval_tasks("val") == ["gqa"]
    data.setup("fit")
    assert [len(e) for e in data.examples("train")] == [200, 422]


def test_vqav2_sample_majority_baseline_is_far_below_100(sample_data: Path) -> None:
    train = vqav2(sample_data, "train2014").read()
    val = vqav2(sample_data).read()
    majority, _ = Counter(e.target for e in train).most_common(1)[0]
    metric = VQAAccuracy()
    metric.update([majority] * len(val), [e.references for e in val])
    baseline = metric.compute().item()
    assert 0.1 < baseline < 0.35, baseline
    oracle = VQAAccuracy()
    oracle.update([e.target for e in val], [e.references for e in val])
    assert oracle.compute().item() > 0.95
    manifest = json.loads((sample_data / "manifest.json").read_text())
    assert manifest["vqav2"]["train_majority_answer"] == majority


def test_sample_data_is_deterministic(tmp_path: Path, sample_data: Path) -> None:
    from mmft.tools.sample_data import make_sample_data

    make_sample_data(tmp_path, videos=False)
    files = [
        "vqav2/v2_mscoco_val2014_annotations.json",
        "llava/llava_instruct_sample.json",
        "coco/val2014/COCO_val2014_000000500003.jpg",
        "nlvr2/images/dev/dev-101-1-img0.png",
    ]
    for relative in files:
        assert (tmp_path / relative).read_bytes() == (sample_data / relative).read_bytes(), relative


class FeatureCollate:
    """A collate that reads pre-extracted features, as VL-BART's does: it asks for no decoded images (a
    :class:`data_modules.collate.Collate` whose every example fits)."""

    needs_media = False
    video_frames = None

    def __call__(self, samples: list[Sample]) -> dict:
        return {"id": [s.example.id for s in samples], "images": [len(s.images) for s in samples]}

    def check_length(self, example, training: bool) -> LengthCheck:
        return LengthCheck()


def test_feature_collates_need_no_image_files(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    records = [{"id": f"r{k}", "image": f"absent{k}.jpg", "conversations": turns} for k in range(3)]
    path = tmp_path / "features_only.json"
    path.write_text(json.dumps(records))
    with_pixels = MultitaskDataModule(val=[LlavaInstruct(path, tmp_path)], collate_fn=collate_ids)
    with pytest.raises(MediaError, match="absent0.jpg"):
        with_pixels.setup("validate")
    features = MultitaskDataModule(val=[LlavaInstruct(path, tmp_path)], collate_fn=FeatureCollate())
    features.setup("validate")
    batch = next(iter(features.val_dataloader()[0]))
    assert batch["id"] == ["r0", "r1", "r2"] and batch["images"] == [0, 0, 0]


class FixedFrames(FeatureCollate):
    """A collate whose model fixes its frames per video (VL-BART's ordered frame embeddings), reading pixels."""

    needs_media = True
    video_frames = 3

    def __call__(self, samples: list[Sample]) -> dict:
        return {"frames": [tuple(s.frames.shape) for s in samples]}


def test_a_model_that_fixes_its_frames_sets_the_data_frame_count(sample_data: Path) -> None:
    """The frame count lives in one setting: with no data.num_frames the DataModule samples the collate's count,
    the same count is accepted, and another count or a frame rate is refused naming both."""
    videos = MSRVTTQA(sample_data / "msrvtt_qa" / "val_qa.json", sample_data / "msrvtt_qa" / "videos")
    data = MultitaskDataModule(val=[videos], collate_fn=FixedFrames(), eval_batch_size=2)
    data.setup("validate")
    assert next(iter(data.val_dataloader()[0]))["frames"] == [(3, 64, 64, 3)] * 2
    assert MultitaskDataModule(val=[videos], collate_fn=FixedFrames(), num_frames=3).frame_sampling.num_frames == 3
    assert MultitaskDataModule(val=[videos], collate_fn=FeatureCollate()).frame_sampling.num_frames == 8
    for asked in ({"num_frames": 8}, {"video_fps": 2.0, "max_frames": 4}):
        with pytest.raises(DataConfigError, match=r"(num_frames=8|video_fps=2.0), but the model takes 3 frames"):
            MultitaskDataModule(val=[videos], collate_fn=FixedFrames(), **asked)


def long_and_short_conversations(tmp_path: Path) -> Path:
    """Text-only LLaVA records: one short, one long only by its first exchange, one whose last answer is long."""
    words = " ".join(["blue"] * 60)
    records = [
        {"id": "short", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "long_context", "conversations": [
            {"from": "human", "value": f"Describe: {words}"}, {"from": "gpt", "value": words},
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Blue."}]},
        {"id": "long_answer", "conversations": [
            {"from": "human", "value": "Say blue many times."}, {"from": "gpt", "value": words}]},
    ]
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(records))
    return path


def test_over_long_examples_are_found_when_read_not_mid_epoch(tmp_path: Path, caplog) -> None:
    from tiny_vlms import tiny_backbone

    from mmft.models.chat_collate import ChatCollate

    processor = tiny_backbone("llava").build().processor
    tokenizer = processor.tokenizer
    collate = ChatCollate(processor, video_as_images=True, max_length=64)
    path = long_and_short_conversations(tmp_path)
    raising = MultitaskDataModule(train=[LlavaInstruct(path, task="chat")], collate_fn=collate, batch_size=3)
    with pytest.raises(DataFormatError, match=r"data.train: .*conversations.json#2 \(id long_answer\): .*max_length=64"):
        raising.setup("fit")

    skipping = MultitaskDataModule(train=[LlavaInstruct(path, task="chat", on_error="skip")], collate_fn=collate,
                                   batch_size=3)
    with caplog.at_level(logging.WARNING, logger="data_modules"):
        skipping.setup("fit")
    (kept,) = skipping.examples("train")
    assert [e.id for e in kept] == ["short", "long_context"]
    assert skipping.read_reports[0].counts == {"too long for the model": 1}
    assert skipping.length_reports["train"]["chat"] == {"examples": 3, "truncated": 1, "dropped": 1}
    assert "task chat: 1 of 3 examples fit only with context cut" in caplog.text and "1 dropped" in caplog.text
    (batch,) = list(skipping.train_dataloader())
    replies = [tokenizer.decode(row[row != -100].tolist()) for row in batch["labels"]]
    assert sorted(replies) == sorted([" Hello." + tokenizer.eos_token, " Blue." + tokenizer.eos_token])


@pytest.mark.parametrize(("datamodule_policy", "reader_policy"), [("raise", "skip"), ("skip", "raise")])
def test_the_readers_on_error_governs_media_decoding(tmp_path: Path, datamodule_policy, reader_policy) -> None:
    reader = broken_image_reader(tmp_path)
    reader.on_error = reader_policy
    datamodule = MultitaskDataModule(val=[reader], collate_fn=collate_ids, batch_size=3, on_error=datamodule_policy)
    datamodule.setup("validate")
    (loader,) = datamodule.val_dataloader()
    if reader_policy == "raise":
        with pytest.raises(MediaError, match="img0.png"):
            next(iter(loader))
    else:
        batch = datamodule.on_before_batch_transfer(next(iter(loader)), 0)
        assert batch["id"] == ["r1", "r2"] and datamodule.media_skips.total == 1
    train = MultitaskDataModule(train=[reader], collate_fn=collate_ids, batch_size=3, on_error=datamodule_policy)
    train.setup("fit")
    assert train.train_dataloader().dataset.on_error == [reader_policy] * 3
