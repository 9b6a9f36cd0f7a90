"""The ``mmft`` CLI end to end on the tiny DoRA config, in subprocesses as a user runs it: fit, resume with
--ckpt_path (the next losses equal an uninterrupted run's), test (metrics table) and predict (JSON lines)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from cli_helpers import make_workdir, run_mmft

# A short run: 2 epochs of 3 batches; checkpoints after every validation, all kept (resume from epoch 0's).
SHORT_RUN = {
    "trainer": {
        "max_epochs": 2,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "limit_predict_batches": 1,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": "runs/ckpt", "save_top_k": -1, "save_last": True,
                           "save_on_train_epoch_end": False}},
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
            {"class_path": "mmft.callbacks.Throughput"},
            {"class_path": "mmft.callbacks.CPUThreads", "init_args": {"num_threads": 1}},
            {"class_path": "mmft.callbacks.PeftExport", "init_args": {"dirpath": "runs/adapter"}},
            {"class_path": "mmft.callbacks.AnswerWriter", "init_args": {"path": "runs/predictions.jsonl"}},
        ],
    }
}


@pytest.fixture(scope="module")
def workdir(sample_data, tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("cli"), sample_data, SHORT_RUN)


def mmft(workdir: Path, subcommand: str, *args: str) -> str:
    return run_mmft(workdir, subcommand, "configs/tiny/llava_dora.yaml", *args)


def train_losses(version_dir: Path) -> dict[int, float]:
    with (version_dir / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]}


@pytest.fixture(scope="module")
def fitted(workdir) -> Path:
    mmft(workdir, "fit")
    return workdir / "runs" / "tiny_llava_dora" / "csv" / "version_0"


def test_fit_writes_config_metrics_adapter_and_trainable_only_checkpoints(workdir, fitted):
    assert (fitted / "config.yaml").is_file()
    losses = train_losses(fitted)
    assert sorted(losses) == list(range(6))
    with (fitted / "metrics.csv").open() as file:
        columns = next(csv.reader(file))
    assert {"val/vqav2/VQAAccuracy", "val/average", "perf/samples_per_s", "perf/tokens_per_s",
            "perf/peak_cpu_rss_gib", "lr-AdamW/projector", "lr-AdamW/default"} <= set(columns)
    hparams = yaml.safe_load((fitted / "hparams.yaml").read_text())
    assert hparams["adapter"]["method"] == "dora" and 0 < hparams["trainable_percent"] < 100
    assert hparams["config"]["model"]["class_path"] == "mmft.models.LlavaModule"

    adapter = json.loads((workdir / "runs" / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["use_dora"] is True and adapter["r"] == 16

    checkpoint = torch.load(workdir / "runs" / "ckpt" / "last.ckpt", weights_only=True, map_location="cpu")
    keys = list(checkpoint["state_dict"])
    assert keys and all(("lora_" in k or "multi_modal_projector" in k) for k in keys)
    assert "hyper_parameters" not in checkpoint
    assert (workdir / "runs" / "tiny_llava_dora" / "wandb").is_dir()  # W&B ran, offline


def test_resume_replays_the_uninterrupted_run(workdir, fitted):
    uninterrupted = train_losses(fitted)
    # a second run in the same folder: the saved config is overwritten, not an abort
    mmft(workdir, "fit", "--ckpt_path", "runs/ckpt/epoch=0-step=3.ckpt")
    resumed = train_losses(fitted.parent / "version_1")
    assert sorted(resumed) == [3, 4, 5]
    assert resumed == pytest.approx({step: uninterrupted[step] for step in resumed}, rel=1e-6, abs=0)


def test_test_prints_the_metrics_table(workdir, fitted):
    out = mmft(workdir, "test", "--ckpt_path", "runs/ckpt/last.ckpt")
    table = out[out.index("task"):].splitlines()[:4]
    assert table[0].split() == ["task", "metric", "value"]
    assert [row.split()[:2] for row in table[1:3]] == [["vqav2", "VQAAccuracy"], ["gqa", "ExactMatchAccuracy"]]
    scores = [float(row.split()[-1]) for row in table[1:]]
    assert table[3].split()[0] == "average" and scores[2] == pytest.approx((scores[0] + scores[1]) / 2, abs=1e-4)


def test_predict_writes_json_lines(workdir, fitted):
    mmft(workdir, "predict", "--ckpt_path", "runs/ckpt/last.ckpt")
    lines = (workdir / "runs" / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 32  # one eval batch
    assert all(r.keys() == {"id", "task", "answer"} and r["task"] == "vqav2" for r in records)
    assert len({r["id"] for r in records}) == 32
