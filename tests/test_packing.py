"""Padding-free packed batches: per family, the packed row's loss and gradients equal the padded batch's; the
sampler's batches by token budget; the DataModule's packing settings."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_vlms import FAMILIES, lm_adapter, tiny_backbone
from torch.utils.data import DistributedSampler

from data_modules import DataConfigError, LlavaInstruct, MultitaskBatchSampler, MultitaskDataModule
from data_modules.records import Example, Sample, Turn
from data_modules.sampler import pack_by_length
from mmft.callbacks.throughput import batch_counts
from mmft.models import VisionLanguageModule
from mmft.models.packing import PACKED_LENGTHS, PACKED_TOKENS, PackingError

RED, BLUE = Image.new("RGB", (24, 16), (220, 40, 40)), Image.new("RGB", (20, 28), (40, 80, 225))


def mixed_samples() -> list[Sample]:
    """Examples of different lengths and media: one image, two exchanges, a text-only one, another image."""
    def sample(id_: str, turns: list[tuple[str, str]], images: list) -> Sample:
        return Sample(Example("vqav2", id_, tuple(Turn(role, text) for role, text in turns),
                              images=tuple(Path(f"{id_}_{k}.jpg") for k in range(len(images)))), images)
    return [
        sample("a", [("user", "What colour is it?"), ("assistant", "red")], [RED]),
        sample("b", [("user", "What is it?"), ("assistant", "a blue square with round corners"),
                     ("user", "And its size?"), ("assistant", "small")], [BLUE]),
        sample("c", [("user", "Say hello."), ("assistant", "hello there")], []),
        sample("d", [("user", "Which colour is the shape on the left?"), ("assistant", "blue")], [BLUE]),
    ]


def loss_and_grads(module: VisionLanguageModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.training_loss(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


UNPACKABLE = {"gemma3": "image blocks it looks up by token index",
              "minicpmv4_6": "linear_attention layers, which carry a state"}


def test_models_that_cannot_pack_are_named():
    """Packed rows of these models would differ from their padded batches: refused, naming why."""
    for family, reason in UNPACKABLE.items():
        module = VisionLanguageModule(tiny_backbone(family), lm_adapter(family))
        batch = module.collate(mixed_samples()[:2])
        with pytest.raises(PackingError, match=f"data.packing: .*{reason}.*train this model on padded batches"):
            module.collate.pack(batch)


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(UNPACKABLE)))
def test_packed_batch_has_the_padded_batchs_loss_and_gradients(family):
    """Images, a text-only conversation and two exchanges in one row: the same loss and adapter, projector and
    tower gradients as the padded batch (Qwen's and GLM's multimodal positions, Idefics3's per-row images and
    PaliGemma's prefix attention included)."""
    torch.manual_seed(0)
    module = VisionLanguageModule(tiny_backbone(family), lm_adapter(family), max_new_tokens=4).eval()
    for parameter in module.model.parameters():  # non-zero adapter factors: the gradients reach every factor
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.05) if parameter.dim() > 1 else None
    samples = mixed_samples()
    if family == "paligemma":
        samples = [s for s in samples if len(s.example.turns) == 2]
    padded = module.collate(samples)
    lengths = padded["attention_mask"].sum(dim=1)
    loss, grads = loss_and_grads(module, padded)
    assert len(grads) > 0
    # one row; then rows of at most the longest example's length: several rows, each padded at its end
    for row_tokens in (None, int(lengths.max())):
        packed = module.collate.pack(padded, row_tokens)
        assert "attention_mask" not in packed and not any(key.startswith("prompt_") for key in packed)
        rows = packed["input_ids"].shape[0]
        assert rows == 1 if row_tokens is None else rows > 1
        assert packed[PACKED_LENGTHS].sum() == packed["input_ids"].numel()
        assert packed[PACKED_TOKENS] == int(lengths.sum())
        # the Throughput callback counts the same examples and tokens in both forms
        assert batch_counts(packed) == batch_counts(padded) == (len(samples), int(lengths.sum()))
        assert int((packed["labels"] != -100).sum()) == int((padded["labels"][:, 1:] != -100).sum())
        packed_loss, packed_grads = loss_and_grads(module, packed)
        torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
        assert grads.keys() == packed_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=f"{row_tokens}: {name}")


# ---------------------------------------------------------------------------------------------- batches by tokens


def test_pack_by_length_is_first_fit_decreasing_by_hand():
    """Lengths 5 3 8 2 4 6, budget 10: 8 -> A (2 left), 6 -> B (4), 5 -> C (5), 4 -> B (0), 3 -> C (2), 2 -> A (0)."""
    batches = pack_by_length(np.arange(6), np.array([5, 3, 8, 2, 4, 6]), 10)
    assert [batch.tolist() for batch in batches] == [[2, 3], [5, 4], [0, 1]]
    assert [b.tolist() for b in pack_by_length(np.array([0, 1]), np.array([12, 3]), 10)] == [[0], [1]]  # over: alone


def packed_sampler(lengths, sizes, epoch=0, rank=0, world=1, resume=None, rows=1) -> MultitaskBatchSampler:
    inner = DistributedSampler(range(len(lengths)), num_replicas=world, rank=rank, shuffle=False)
    batches = MultitaskBatchSampler(inner, sizes, [rows] * len(sizes), sampling="proportional", seed=7, resume=resume,
                                    token_lengths=lengths, max_tokens=40)
    batches.set_epoch(epoch)
    return batches


def test_packed_batches_cover_each_epoch_within_the_budget_and_resume_exactly():
    """Rows of at most 40 tokens, one task each, a batch of 3 rows whose examples next-fit into 3 rows again."""
    from mmft.models.packing import next_fit_rows

    lengths = np.random.default_rng(0).integers(1, 30, size=300).tolist()
    sizes = [180, 120]
    batches = list(packed_sampler(lengths, sizes, rows=3))
    assert sorted(i for batch in batches for i in batch) == list(range(300))
    assert all(len(next_fit_rows([lengths[i] for i in batch], 40)) <= 3 for batch in batches)
    assert sum(len(next_fit_rows([lengths[i] for i in batch], 40)) == 3 for batch in batches) >= len(batches) - 2
    epochs = {epoch: list(packed_sampler(lengths, sizes, epoch)) for epoch in (0, 1)}
    for batches in epochs.values():
        assert sorted(i for batch in batches for i in batch) == list(range(300))
        assert all(sum(lengths[i] for i in batch) <= 40 for batch in batches)
        assert all(len({i < 180 for i in batch}) == 1 for batch in batches)  # one task per batch
        assert len(batches) <= math.ceil(sum(lengths) / 40) + 4  # first-fit decreasing leaves little room unused
    assert epochs[0] != epochs[1] and list(packed_sampler(lengths, sizes, 0)) == epochs[0]
    assert len(packed_sampler(lengths, sizes, 0)) == len(epochs[0])
    resumed = packed_sampler(lengths, sizes, 1, resume=(1, 5))
    assert list(resumed) == epochs[1][5:]
    ranks = [list(packed_sampler(lengths, sizes, 1, rank=rank, world=2)) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) and {i for r in ranks for b in r for i in b} == set(range(300))


def test_a_datamodule_packs_training_batches_and_leaves_evaluation_padded(sample_data: Path):
    module = VisionLanguageModule(tiny_backbone("qwen2_5_vl"), lm_adapter("qwen2_5_vl"))
    reader = LlavaInstruct(sample_data / "llava" / "llava_instruct_sample.json", sample_data)
    data = MultitaskDataModule(train=[reader], val=[reader], batch_size=2, collate_fn=module.collate, packing=True,
                               max_tokens=256)
    data.setup("fit")
    loader = data.train_dataloader()
    examples = loader.dataset.examples
    estimates = {e.id: module.collate.check_length(e, training=True).tokens for e in examples}
    for indices, batch in itertools.islice(zip(loader.batch_sampler, loader), 4):
        assert sum(estimates[examples[i].id] for i in indices) <= 2 * 256
        expected = module.collate.pack(module.collate([loader.dataset[i] for i in indices]), 256)
        assert batch["ids"] == [examples[i].id for i in indices] and batch.keys() == expected.keys()
        torch.testing.assert_close(batch["input_ids"], expected["input_ids"])
        assert batch["input_ids"].numel() == int(batch[PACKED_LENGTHS].sum()) and batch["input_ids"].shape[0] <= 3
        assert module.training_loss(batch).isfinite()
    assert "prompt_input_ids" in next(iter(data.val_dataloader()[0]))


def test_packing_settings_and_models_that_cannot_pack_are_named_errors(sample_data: Path):
    reader = LlavaInstruct(sample_data / "llava" / "llava_instruct_sample.json", sample_data)
    module = VisionLanguageModule(tiny_backbone("qwen2_5_vl"), lm_adapter("qwen2_5_vl"))
    cases = [
        ({"max_tokens": 64}, "data.max_tokens is the length of packed rows: set data.packing: true"),
        ({"packing": True}, "data.packing needs data.max_tokens"),
        ({"packing": True, "max_tokens": 64, "group_by_modality_length": True}, "leave data.group_by_modality_length"),
        ({"packing": True, "max_tokens": 64, "collate_fn": lambda samples: {}}, "cannot pack batches"),
    ]
    for settings, message in cases:
        with pytest.raises(DataConfigError, match=message):
            MultitaskDataModule(train=[reader], **{"collate_fn": module.collate, **settings})
    gemma = VisionLanguageModule(tiny_backbone("gemma3"), lm_adapter("gemma3"))
    with pytest.raises(PackingError, match="Gemma 3's sliding-window layers"):
        MultitaskDataModule(train=[reader], collate_fn=gemma.collate, packing=True, max_tokens=64)


def test_lightning_rebuilds_the_packed_sampler_for_each_rank(sample_data: Path):
    """Under DDP Lightning re-creates the batch sampler from its arguments: the packing settings survive, every
    rank gets as many packed batches and together they cover the epoch."""
    from lightning.fabric.utilities.data import _replace_dunder_methods, _set_sampler_epoch
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    module = VisionLanguageModule(tiny_backbone("qwen2_5_vl"), lm_adapter("qwen2_5_vl"))
    reader = LlavaInstruct(sample_data / "llava" / "llava_instruct_sample.json", sample_data)
    data = MultitaskDataModule(train=[reader], collate_fn=module.collate, packing=True, max_tokens=300)
    data.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = data.train_dataloader()
    ranks = []
    for rank in (0, 1):
        ranked = _update_dataloader(loader, DistributedSampler(loader.dataset, num_replicas=2, rank=rank))
        assert ranked.batch_sampler.max_tokens == 300
        _set_sampler_epoch(ranked, 2)
        ranks.append(list(ranked.batch_sampler))
    assert len(ranks[0]) == len(ranks[1]) > 1
    assert {i for batches in ranks for batch in batches for i in batch} == set(range(len(loader.dataset)))


@pytest.mark.slow
def test_compiled_decoder_layers_give_the_eager_loss_and_gradients_on_rounded_rows():
    """``compile``: the language model's decoder layers compiled in place, rows rounded up to 64 tokens (padded and
    packed alike); loss and gradients equal the eager module's on the same batches."""
    samples = mixed_samples()
    modules = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        modules[compiled] = VisionLanguageModule(tiny_backbone("qwen2_5_vl"), lm_adapter("qwen2_5_vl"),
                                                 compile=compiled).eval()
    eager, compiled = modules[False], modules[True]
    assert compiled.collate.length_multiple == 64 and eager.collate.length_multiple == 1
    layers = compiled.model.get_decoder().layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    for parameter_eager, parameter_compiled in zip(eager.parameters(), compiled.parameters()):
        if parameter_eager.requires_grad and parameter_eager.dim() > 1:
            torch.nn.init.normal_(parameter_eager, std=0.05)
            parameter_compiled.data.copy_(parameter_eager.data)
    padded = compiled.collate(samples)
    assert padded["input_ids"].shape[1] % 64 == 0
    packed = compiled.collate.pack(padded)
    assert packed["input_ids"].shape[1] % 64 == 0 and packed["labels"][0, int(packed[PACKED_LENGTHS][:-1].sum()):].eq(
        -100).all()
    for batch, reference in ((padded, eager.collate(samples)), (packed, eager.collate.pack(eager.collate(samples)))):
        loss, grads = loss_and_grads(eager, reference)
        compiled_loss, compiled_grads = loss_and_grads(compiled, batch)
        torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_packed_rows_attend_per_example_through_varlen_sdpa(family, monkeypatch):
    """A causal language model's SDPA becomes mmft_sdpa_varlen: a packed batch's attention runs once per example
    and padding segment (their lengths, in order, in every layer), a padded batch's once per layer with its mask."""
    import mmft.models.varlen_attention as varlen

    module = VisionLanguageModule(tiny_backbone(family), lm_adapter(family)).eval()
    assert module.model.config.get_text_config()._attn_implementation == varlen.VARLEN_SDPA
    calls = []
    original = varlen.sdpa_attention_forward
    monkeypatch.setattr(varlen, "sdpa_attention_forward",
                        lambda m, q, k, v, mask, **kw: calls.append((q.shape[2], mask is None)) or original(
                            m, q, k, v, mask, **kw))
    padded = module.collate(mixed_samples())
    packed = module.collate.pack(padded, int(padded["attention_mask"].sum(dim=1).max()))
    with torch.no_grad():
        module.training_loss(packed)
    layers = len(module.model.get_decoder().layers)
    assert calls == [(length, True) for length in packed[PACKED_LENGTHS].tolist()] * layers
    calls.clear()
    with torch.no_grad():
        module.training_loss(padded)
    assert len(calls) == layers and all(length == padded["input_ids"].shape[1] for length, _ in calls)


def test_a_checkpoint_loaded_with_eager_attention_packs_through_the_block_mask(tmp_path):
    """``attn_implementation`` reaches transformers; an implementation other than SDPA is kept (no varlen), and
    its packed rows still equal the padded batch (transformers' block-diagonal mask)."""
    from mmft.models import HFVisionLanguage

    built = tiny_backbone("qwen2_5_vl").build()
    built.model.save_pretrained(tmp_path)
    built.processor.save_pretrained(tmp_path)
    module = VisionLanguageModule(HFVisionLanguage(path=str(tmp_path), attn_implementation="eager"),
                                  lm_adapter("qwen2_5_vl")).eval()
    assert module.model.config.get_text_config()._attn_implementation == "eager"
    padded = module.collate(mixed_samples())
    loss, grads = loss_and_grads(module, padded)
    packed_loss, packed_grads = loss_and_grads(module, module.collate.pack(padded))
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_a_packed_fit_resumed_mid_epoch_replays_the_uninterrupted_losses(sample_data, tmp_path):
    """``mmft fit`` with data.packing on the tiny Qwen2.5-VL recipe (2 rows of 256 tokens a batch), resumed from the
    checkpoint after step 2 of epoch 0: the resumed steps' losses are the uninterrupted run's, exactly."""
    import csv

    from cli_helpers import make_workdir, run_mmft

    run = {"trainer": {"max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 1, "log_every_n_steps": 1,
                       "num_sanity_val_steps": 0,
                       "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                      "init_args": {"every_n_train_steps": 2, "save_top_k": -1, "filename": "{step}"}},
                                     {"class_path": "mmft.callbacks.CPUThreads", "init_args": {"num_threads": 1}}]},
           "data": {"init_args": {"packing": True, "max_tokens": 256, "batch_size": 2}}}
    workdir = make_workdir(tmp_path, sample_data, run)
    recipe = ("configs/tiny/qwen2_5_vl.yaml", "--config", "configs/methods/dora.yaml")
    run_mmft(workdir, "fit", *recipe)
    (folder,) = (workdir / "runs").iterdir()

    def losses(version: str) -> dict[int, float]:
        with (folder / "csv" / version / "metrics.csv").open() as file:
            return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]}

    uninterrupted = losses("version_0")
    assert sorted(uninterrupted) == list(range(6))
    (checkpoint,) = (folder / "checkpoints").glob("step*2.ckpt")
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")["MultitaskDataModule"]
    assert state["batches_trained"] == 2 and state["packing"] is True and state["max_tokens"] == 256
    run_mmft(workdir, "fit", *recipe, "--ckpt_path", str(checkpoint.relative_to(workdir)))
    resumed = losses("version_1")
    assert sorted(resumed) == [2, 3, 4, 5] and resumed == {step: uninterrupted[step] for step in resumed}
