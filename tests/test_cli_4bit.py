"""The ``mmft`` CLI on the tiny LLaVA with a 4-bit language model (configs/tiny/overlays/base_4bit.yaml), in
subprocesses: fit, exact resume (the 4-bit base is rebuilt from the config, not read from the checkpoint), test and
predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import make_workdir, run_mmft
from test_cli import SHORT_RUN, train_losses

pytestmark = pytest.mark.slow  # end-to-end runs of the CLI

RECIPE = "configs/tiny/llava_dora.yaml"
OVERLAY = "configs/tiny/overlays/base_4bit.yaml"
RUN = Path("runs") / "tiny_llava_4bit"  # the overlay's run folder: every output lands there


def mmft(workdir: Path, subcommand: str, *args: str) -> str:
    # recipe, short run, overlay (quantization and its run folder), then the short run again
    return run_mmft(workdir, subcommand, RECIPE, "--config", OVERLAY, "--config", "short.yaml", *args)


@pytest.fixture(scope="module")
def workdir(sample_data, tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("cli_4bit"), sample_data, SHORT_RUN)


@pytest.fixture(scope="module")
def fitted(workdir) -> Path:
    mmft(workdir, "fit")
    return workdir / RUN / "csv" / "version_0"


def test_fit_checkpoints_hold_the_adapters_only(workdir, fitted):
    assert sorted(train_losses(fitted)) == list(range(6))
    checkpoint = torch.load(workdir / RUN / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    keys = list(checkpoint["state_dict"])
    assert keys and all(("lora_" in k or "multi_modal_projector" in k) for k in keys)
    adapter = json.loads((workdir / RUN / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True


def test_resume_replays_the_uninterrupted_run(workdir, fitted):
    uninterrupted = train_losses(fitted)
    mmft(workdir, "fit", "--ckpt_path", str(RUN / "checkpoints" / "epoch=0-step=3.ckpt"))
    resumed = train_losses(fitted.parent / "version_1")
    assert sorted(resumed) == [3, 4, 5]
    assert resumed == {step: uninterrupted[step] for step in resumed}  # exact


def test_test_and_predict_run_on_the_4bit_base(workdir, fitted):
    out = mmft(workdir, "test", "--ckpt_path", str(RUN / "checkpoints" / "last.ckpt"))
    table = out[out.index("task"):].splitlines()[:4]
    assert [row.split()[:2] for row in table[1:3]] == [["vqav2", "VQAAccuracy"], ["gqa", "ExactMatchAccuracy"]]
    mmft(workdir, "predict", "--ckpt_path", str(RUN / "checkpoints" / "last.ckpt"))
    records = [json.loads(line) for line in (workdir / RUN / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 32 and all(r.keys() == {"id", "task", "answer"} for r in records)
