"""SourceForgetting: the language model's loss on held-out source-domain text, before training (equal to the base
model's own loss, as transformers computes it text by text) and after every validation, kept across a resume."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tiny_vlms import lm_adapter, tiny_backbone
from torch.utils.data import DataLoader

from mmft.callbacks import SourceForgetting
from mmft.callbacks.forgetting import SourceTextError, read_source_texts
from mmft.metrics import VQAAccuracy
from mmft.models import VisionLanguageModule

TEXTS = ["a red circle on a white background.", "Two blue squares against a plain black backdrop",
         "simple drawing of a green triangle", "there are three yellow circles on gray"]


def source_file(tmp_path):
    path = tmp_path / "source.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in TEXTS) + "\n")
    return path


def module() -> VisionLanguageModule:
    return VisionLanguageModule(tiny_backbone("qwen2_5_vl"), lm_adapter("qwen2_5_vl", "lora"), max_new_tokens=3,
                                metrics={"vqav2": VQAAccuracy()},
                                optimizer=lambda params: torch.optim.AdamW(params, lr=5e-2))


def base_loss(model, tokenizer) -> float:
    """transformers' own loss, one text at a time, weighted by its scored tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_source_loss_before_training_is_the_base_models_own(tmp_path):
    subject = module()
    callback = SourceForgetting(str(source_file(tmp_path)), batch_size=3)  # padded batches of 3, then 1
    assert callback.source_loss(subject) == pytest.approx(base_loss(subject.model, subject.tokenizer), rel=1e-5)


def logged(folder) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("source/loss")]


def test_forgetting_is_logged_at_step_0_and_every_validation_and_survives_a_resume(tmp_path):
    from test_vlm import vqa_samples

    data = vqa_samples(4)

    def fit(subject, root, **kwargs):
        loader = DataLoader(data, batch_size=2, collate_fn=subject.collate)
        trainer = Trainer(default_root_dir=root, max_steps=4, accelerator="cpu", enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                          logger=CSVLogger(root, name="csv"), callbacks=kwargs.pop("callbacks"))
        trainer.fit(subject, loader, loader, **kwargs)
        return trainer

    seed_everything(0)
    subject = module()
    before = base_loss(subject.model, subject.tokenizer)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, save_on_train_epoch_end=False)
    fit(subject, tmp_path / "a", callbacks=[SourceForgetting(str(source_file(tmp_path))), checkpoints])
    rows = logged(tmp_path / "a" / "csv" / "version_0")
    assert [int(row["step"]) for row in rows] == [0, 2, 4]  # before training, then after each of 2 validations
    assert float(rows[0]["source/loss"]) == pytest.approx(before, rel=1e-5)
    assert float(rows[0]["source/forgetting"]) == 0.0
    for row in rows[1:]:
        # the loggers keep float32: compare to its rounding
        assert float(row["source/forgetting"]) == pytest.approx(float(row["source/loss"]) - before, abs=1e-5)
        assert float(row["source/perplexity"]) == pytest.approx(math.exp(float(row["source/loss"])), rel=1e-4)
    assert float(rows[-1]["source/loss"]) != pytest.approx(before)  # training moved it

    seed_everything(0)
    resumed = module()
    fit(resumed, tmp_path / "b", callbacks=[SourceForgetting(str(source_file(tmp_path)))],
        ckpt_path=tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    again = logged(tmp_path / "b" / "csv" / "version_0")
    assert [int(row["step"]) for row in again] == [4]  # the score before training came with the checkpoint
    assert float(again[0]["source/forgetting"]) == pytest.approx(float(rows[-1]["source/forgetting"]), abs=1e-5)


def test_a_bad_source_file_is_named_by_file_and_line(tmp_path):
    with pytest.raises(SourceTextError, match=r"missing.jsonl does not exist"):
        read_source_texts(tmp_path / "missing.jsonl")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(SourceTextError, match=r"bad.jsonl:2: expected an object with a non-empty string"):
        read_source_texts(path)
    path.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(SourceTextError, match=r"bad.jsonl:2: not JSON"):
        read_source_texts(path)
    assert read_source_texts(source_file(tmp_path)) == TEXTS
