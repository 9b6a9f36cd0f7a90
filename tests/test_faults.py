"""Faults during a run: a fit killed (SIGKILL) while saving a checkpoint resumes to the uninterrupted run's score;
a predict that fails midway keeps the previous answers file and its own partial one; evaluation samples skipped for
bad media show in the results (n scored / n total); evaluating without --ckpt_path warns."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import ROOT, make_workdir, run_mmft
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from mmft.callbacks import AnswerWriter
from mmft.checkpoint_io import AtomicCheckpointIO

CONFIG = "configs/tiny/llava_dora.yaml"


def short_run(*extra_callbacks: dict) -> dict:
    """2 epochs of 3 batches, validation (1 batch) and a checkpoint after each epoch."""
    return {"trainer": {
        "max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 1, "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": "runs/ckpt", "save_last": True, "save_on_train_epoch_end": False}},
            {"class_path": "mmft.callbacks.CPUThreads", "init_args": {"num_threads": 1}},
            *extra_callbacks,
        ],
    }}


def val_scores(workdir: Path) -> list[float]:
    """``val/average`` of every validation, over the run's CSV versions in order."""
    scores = []
    versions = sorted((workdir / "runs" / "tiny_llava_dora" / "csv").glob("version_*"),
                      key=lambda p: int(p.name.split("_")[1]))
    for version in versions:
        with (version / "metrics.csv").open() as file:
            scores += [float(row["val/average"]) for row in csv.DictReader(file) if row.get("val/average")]
    return scores


def train_losses(workdir: Path, version: int) -> dict[int, float]:
    """Step -> training loss, as CSV version ``version`` of the run logged them."""
    path = workdir / "runs" / "tiny_llava_dora" / "csv" / f"version_{version}" / "metrics.csv"
    with path.open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")}


@pytest.mark.slow
def test_a_fit_killed_while_saving_resumes_to_the_uninterrupted_score(sample_data, tmp_path):
    (tmp_path / "uninterrupted").mkdir()
    reference = make_workdir(tmp_path / "uninterrupted", sample_data, short_run())
    run_mmft(reference, "fit", CONFIG)
    expected = val_scores(reference)
    assert len(expected) == 2

    (tmp_path / "killed").mkdir()
    kill = {"class_path": "fault_hooks.KillDuringSave", "init_args": {"name": "last.ckpt", "occurrence": 2}}
    workdir = make_workdir(tmp_path / "killed", sample_data, short_run(kill))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mmft.cli", "fit", "--config", CONFIG, "--config", "short.yaml"]
    killed = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=400)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    folder = workdir / "runs" / "ckpt"
    (orphan,) = folder.glob("last.ckpt.tmp-*")  # the half-written new checkpoint, beside the untouched old one
    assert 0 < orphan.stat().st_size
    last = AtomicCheckpointIO().load_checkpoint(folder / "last.ckpt")
    assert last["global_step"] == 3 and last["epoch"] == 0

    (workdir / "short.yaml").write_text(json.dumps(short_run()))  # the same run, without the fault
    run_mmft(workdir, "fit", CONFIG, "--ckpt_path", "runs/ckpt/last.ckpt")
    scores = val_scores(workdir)
    assert scores[0] == expected[0]  # epoch 0, before the kill
    assert scores[-1] == expected[-1]  # epoch 1, after the resume
    # resumed, not restarted: the second process trained epoch 1's steps only, with the uninterrupted losses
    resumed, uninterrupted = train_losses(workdir, 1), train_losses(reference, 0)
    assert sorted(resumed) == [3, 4, 5]
    assert resumed == {step: uninterrupted[step] for step in resumed}
    assert not list(folder.glob("*.tmp-*"))  # the dead process's temp file was cleaned up by the next save


# ----------------------------------------------------------------------------------------------------------- predict
class AnswersThenFails(LightningModule):
    """Predicts one answer per item and fails on the batch index ``fail_at``."""

    def __init__(self, fail_at: int | None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.fail_at = fail_at

    def predict_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("out of memory (simulated)")
        return [{"id": str(int(i)), "task": "t", "answer": "new"} for i in batch]


def predict(tmp_path: Path, path: Path, fail_at: int | None) -> None:
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, callbacks=[AnswerWriter(str(path))])
    trainer.predict(AnswersThenFails(fail_at), DataLoader(list(range(6)), batch_size=2), return_predictions=False)


def test_a_failed_predict_keeps_the_previous_file_and_its_partial_answers(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "0", "task": "t", "answer": "old"}\n')
    with pytest.raises(RuntimeError, match="simulated"):
        predict(tmp_path, path, fail_at=2)
    assert path.read_text() == '{"id": "0", "task": "t", "answer": "old"}\n'
    partial = [json.loads(line) for line in (tmp_path / "predictions.jsonl.partial").read_text().splitlines()]
    assert [r["id"] for r in partial] == ["0", "1", "2", "3"]  # the two batches answered before the failure

    predict(tmp_path, path, fail_at=None)
    assert [json.loads(line)["answer"] for line in path.read_text().splitlines()] == ["new"] * 6
    assert not (tmp_path / "predictions.jsonl.partial").exists()


# -------------------------------------------------------------------------------------------------------- evaluation
def test_samples_skipped_for_bad_media_show_as_scored_of_total(tmp_path):
    from PIL import Image
    from test_checkpoints import tiny_module

    from data_modules import LlavaInstruct, MultitaskDataModule
    from mmft.cli import results_table
    from mmft.metrics import ExactMatchAccuracy

    records = []
    for k in range(3):
        if k == 0:
            (tmp_path / f"img{k}.png").write_bytes(b"not an image")
        else:
            Image.new("RGB", (8, 8), (200, 20, 20)).save(tmp_path / f"img{k}.png")
        turns = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]
        records.append({"id": f"r{k}", "image": f"img{k}.png", "conversations": turns})
    (tmp_path / "test.json").write_text(json.dumps(records))
    module = tiny_module(metrics={"colours": ExactMatchAccuracy()})
    datamodule = MultitaskDataModule(test=[LlavaInstruct(tmp_path / "test.json", tmp_path, task="colours")],
                                     collate_fn=module.collate, batch_size=2, on_error="skip")
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    assert module.eval_counts["test"] == {"colours": (2, 3)}
    table = results_table(trainer.callback_metrics, "test", module.eval_counts["test"]).splitlines()
    assert table[0].split() == ["task", "metric", "value", "scored"]
    assert table[1].split()[::3] == ["colours", "2/3"]


def test_a_task_whose_every_sample_was_skipped_shows_as_unscored(tmp_path):
    """Not left out of the table and the JSON file, and the average is not taken over the other tasks alone."""
    from PIL import Image
    from test_checkpoints import tiny_module

    from data_modules import LlavaInstruct, MultitaskDataModule
    from mmft.cli import results_table, write_results
    from mmft.metrics import ExactMatchAccuracy

    Image.new("RGB", (8, 8), (200, 20, 20)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    turns = [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]
    for task, image in (("colours", "bad.png"), ("shapes", "good.png")):
        records = [{"id": f"{task}{k}", "image": image, "conversations": turns} for k in range(3)]
        (tmp_path / f"{task}.json").write_text(json.dumps(records))
    module = tiny_module(metrics={"colours": ExactMatchAccuracy(), "shapes": ExactMatchAccuracy()})
    readers = [LlavaInstruct(tmp_path / f"{task}.json", tmp_path, task=task) for task in ("colours", "shapes")]
    datamodule = MultitaskDataModule(test=readers, collate_fn=module.collate, batch_size=2, on_error="skip")
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.warns(UserWarning, match=r"no sample of colours was scored .*average is left undefined"):
        trainer.test(module, datamodule=datamodule, verbose=False)
    assert module.eval_counts["test"] == {"colours": (0, 3), "shapes": (3, 3)}
    table = results_table(trainer.callback_metrics, "test", module.eval_counts["test"]).splitlines()
    assert table[1].split() == ["colours", "ExactMatchAccuracy", "nan", "0/3"]
    assert table[3].split() == ["average", "nan"]
    numbers = json.loads(write_results(trainer.callback_metrics, "test", tmp_path / "m.json", None).read_text())
    assert numbers["metrics"]["test/colours/ExactMatchAccuracy"] is None and numbers["metrics"]["test/average"] is None
    assert numbers["metrics"]["test/shapes/ExactMatchAccuracy"] is not None


@pytest.mark.slow
def test_evaluating_without_a_checkpoint_warns_that_the_adapters_are_untrained(sample_data, tmp_path):
    run = {"trainer": {"limit_val_batches": 1, "callbacks": [
        {"class_path": "mmft.callbacks.CPUThreads", "init_args": {"num_threads": 1}}]}}
    out = run_mmft(make_workdir(tmp_path, sample_data, run), "validate", CONFIG)
    assert "mmft validate without --ckpt_path uses the model as the config builds it, with untrained adapters" in out
