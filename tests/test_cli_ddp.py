"""One process to many by configuration only: the tiny config under DDP on two CPU processes (gloo), through the CLI
in a subprocess (Lightning's DDP re-executes the command line)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from cli_helpers import make_workdir
from test_cli import LAST, RUN, SHORT_RUN, mmft

pytestmark = pytest.mark.slow  # end-to-end runs of the CLI

VAL_EXAMPLES = 161  # the sample VQAv2 val split


@pytest.fixture(scope="module")
def ddp_workdir(sample_data, tmp_path_factory) -> Path:
    # enough steps (20 per rank) for the answers to be scored above zero, so the comparison means something
    trainer = {**SHORT_RUN["trainer"], "max_epochs": 1, "limit_train_batches": 20, "limit_val_batches": 1.0}
    return make_workdir(tmp_path_factory.mktemp("cli_ddp"), sample_data, {"trainer": trainer})


def last_val_accuracy(version_dir: Path) -> float:
    with (version_dir / "metrics.csv").open() as file:
        values = [row["val/vqav2/VQAAccuracy"] for row in csv.DictReader(file) if row.get("val/vqav2/VQAAccuracy")]
    return float(values[-1])


def test_ddp_fit_on_two_processes_scores_like_one_process(ddp_workdir):
    out = mmft(ddp_workdir, "fit", "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu")
    assert "Starting with 2 processes" in out and "distributed_backend=gloo" in out
    csv_root = ddp_workdir / RUN / "csv"
    ddp_accuracy = last_val_accuracy(csv_root / "version_0")
    assert (ddp_workdir / RUN / "adapter" / "adapter_model.safetensors").is_file()

    # the same checkpoint validated by one process: the two ranks' metric states were reduced into the same score
    # (DistributedSampler pads 161 examples to 162, so one example may count twice)
    mmft(ddp_workdir, "validate", "--ckpt_path", LAST)
    single_accuracy = last_val_accuracy(csv_root / "version_1")
    assert 0.0 < single_accuracy
    assert ddp_accuracy == pytest.approx(single_accuracy, abs=1.0 / VAL_EXAMPLES + 1e-6)
