"""The ``mmft`` CLI end to end on the tiny DoRA config, in subprocesses as a user runs it: fit, resume with
--ckpt_path (the next losses equal an uninterrupted run's), test (metrics table; the LLaVA-1.5 benchmark table and
its JSON file) and predict (JSON lines)."""

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
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",  # mid-epoch: after steps 2 and 4
             "init_args": {"dirpath": "runs/ckpt_steps", "every_n_train_steps": 2, "save_top_k": -1,
                           "filename": "step{step}"}},
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
            {"class_path": "mmft.callbacks.Throughput"},
            {"class_path": "mmft.callbacks.CPUThreads", "init_args": {"num_threads": 1}},
            {"class_path": "mmft.callbacks.PeftExport", "init_args": {"dirpath": "runs/adapter"}},
            {"class_path": "mmft.callbacks.AnswerWriter", "init_args": {"path": "runs/predictions.jsonl"}},
            {"class_path": "mmft.callbacks.WeightUpdates",
             "init_args": {"modules": ["q_proj", "v_proj"], "every_n_train_steps": 2, "path": "runs/updates.json"}},
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


def test_weight_updates_are_tracked_over_training(workdir, fitted):
    """Every 2 steps and at each epoch end (steps 2, 3, 4, 6; 6 once), for the 2 layers' q_proj and v_proj."""
    updates = json.loads((workdir / "runs" / "updates.json").read_text())
    assert updates["method"] == "dora"
    steps = sorted({p["step"] for p in updates["points"]})
    assert steps == [2, 3, 4, 6]
    modules = {p["module"] for p in updates["points"]}
    assert len(modules) == 4 and all(m.endswith(("q_proj", "v_proj")) for m in modules)
    assert len(updates["points"]) == 16 and set(updates["module_trends"]) == modules
    assert all(p["delta_magnitude"] > 0 and p["delta_direction"] > 0 for p in updates["points"])
    with (fitted / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row["updates/delta_magnitude"]]
    assert [int(row["step"]) for row in rows] == steps
    assert float(rows[-1]["updates/slope"]) == pytest.approx(updates["trend"]["slope"])


def test_resume_replays_the_uninterrupted_run(workdir, fitted):
    uninterrupted = train_losses(fitted)
    uninterrupted_updates = json.loads((workdir / "runs" / "updates.json").read_text())["points"]
    # a second run in the same folder: the saved config is overwritten, not an abort
    mmft(workdir, "fit", "--ckpt_path", "runs/ckpt/epoch=0-step=3.ckpt")
    resumed = train_losses(fitted.parent / "version_1")
    assert sorted(resumed) == [3, 4, 5]
    assert resumed == pytest.approx({step: uninterrupted[step] for step in resumed}, rel=1e-6, abs=0)
    # the weight-update record came back with the checkpoint and goes on as the uninterrupted run's did
    resumed_updates = json.loads((workdir / "runs" / "updates.json").read_text())["points"]
    assert [(p["step"], p["module"]) for p in resumed_updates] == [(p["step"], p["module"])
                                                                   for p in uninterrupted_updates]
    for mine, reference in zip(resumed_updates, uninterrupted_updates):
        assert mine["delta_magnitude"] == pytest.approx(reference["delta_magnitude"], rel=1e-5)
        assert mine["delta_direction"] == pytest.approx(reference["delta_direction"], rel=1e-4)


def test_resume_from_the_middle_of_an_epoch_replays_the_uninterrupted_run(workdir, fitted):
    """A checkpoint after step 2 of epoch 0 (of 3 steps): the resumed run trains batch 3 of that epoch, not its
    first batch again, then epoch 1, with the uninterrupted run's losses."""
    uninterrupted = train_losses(fitted)
    (checkpoint,) = (workdir / "runs" / "ckpt_steps").glob("step*2.ckpt")
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert state["MultitaskDataModule"] == {"epoch": 0, "batches_trained": 2}
    out = mmft(workdir, "fit", "--ckpt_path", str(checkpoint.relative_to(workdir)))
    assert "resuming from a checkpoint that ended before the epoch ended" not in out
    version = max((fitted.parent).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    resumed = train_losses(version)
    assert sorted(resumed) == [2, 3, 4, 5]
    assert resumed == pytest.approx({step: uninterrupted[step] for step in resumed}, rel=1e-6, abs=0)


def test_test_prints_the_metrics_table(workdir, fitted):
    out = mmft(workdir, "test", "--ckpt_path", "runs/ckpt/last.ckpt")
    table = out[out.index("task  "):].splitlines()[:4]
    assert table[0].split() == ["task", "metric", "value", "scored"]
    assert [row.split()[:2] for row in table[1:3]] == [["vqav2", "VQAAccuracy"], ["gqa", "ExactMatchAccuracy"]]
    assert [row.split()[3] for row in table[1:3]] == ["32/32", "32/32"]  # one test batch each, nothing skipped
    scores = [float(row.split()[2]) for row in table[1:3]] + [float(table[3].split()[1])]
    assert table[3].split()[0] == "average" and scores[2] == pytest.approx((scores[0] + scores[1]) / 2, abs=1e-4)


PAPER_ORDER = ["vqav2", "gqa", "vizwiz", "scienceqa", "textvqa", "pope", "mmbench"]


def test_llava15_benchmarks_table_and_json(workdir, fitted):
    out = run_mmft(
        workdir, "test", "configs/tiny/llava_dora.yaml", "--config", "configs/eval/llava15_benchmarks.yaml",
        "--trainer.limit_test_batches", "1.0", "--ckpt_path", "runs/ckpt/last.ckpt",
    )
    table = out[out.index("task  "):].splitlines()[1:9]
    assert [row.split()[0] for row in table] == [*PAPER_ORDER, "average"]
    scores = [float(row.split()[2]) for row in table[:-1]] + [float(table[-1].split()[1])]
    assert scores[-1] == pytest.approx(sum(scores[:-1]) / 7, abs=1e-4)
    # every example scored (sample sizes: VQAv2 161, GQA 80, VizWiz 40, SQA-IMG 19, TextVQA 30, POPE 3 x 20,
    # MMBench 16 questions in 42 rotations)
    assert [row.split()[3] for row in table[:-1]] == ["161/161", "80/80", "40/40", "19/19", "30/30", "60/60", "42/42"]

    saved = json.loads((workdir / "runs" / "tiny_llava_dora" / "test_metrics.json").read_text())
    assert saved["checkpoint"] == "runs/ckpt/last.ckpt"
    numbers = saved["metrics"]
    headline = [numbers[key] for key in numbers if key.count("/") == 2 and key.split("/")[1] in PAPER_ORDER]
    assert headline == pytest.approx(scores[:-1], abs=1e-4)
    assert numbers["test/average"] == pytest.approx(scores[-1], abs=1e-4)
    pope = [numbers[f"test/pope/POPE/{split}_f1"] for split in ("random", "popular", "adversarial")]
    assert numbers["test/pope/POPE"] == pytest.approx(sum(pope) / 3)
    assert {f"test/pope/POPE/{split}_{name}" for split in ("random", "popular", "adversarial")
            for name in ("accuracy", "precision", "recall", "f1", "yes_ratio")} <= set(numbers)
    assert numbers["test/vizwiz/VizWizAccuracy"] == numbers["test/vizwiz/VizWizAccuracy/accuracy"]
    assert "test/vizwiz/VizWizAccuracy/unanswerable_f1" in numbers
    assert numbers["test/mmbench/CircularAccuracy"] == numbers["test/mmbench/CircularAccuracy/circular"]
    assert numbers["test/mmbench/CircularAccuracy"] <= numbers["test/mmbench/CircularAccuracy/first_pass"]


def test_predict_writes_json_lines(workdir, fitted):
    mmft(workdir, "predict", "--ckpt_path", "runs/ckpt/last.ckpt")
    lines = (workdir / "runs" / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 32  # one eval batch
    assert all(r.keys() == {"id", "task", "answer"} and r["task"] == "vqav2" for r in records)
    assert len({r["id"] for r in records}) == 32
