"""The ``mmft`` CLI end to end on the tiny DoRA config, in subprocesses as a user runs it: fit (every output in the
run folder), resume with --ckpt_path (the next losses equal an uninterrupted run's), test (metrics table; the
LLaVA-1.5 benchmark table and its JSON file) and predict (JSON lines) from the checkpoint alone, a second run in its
own folder, export, and the checkpoint loaded from plain Python."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import ROOT, make_workdir, run_command, run_mmft

pytestmark = pytest.mark.slow  # end-to-end runs of the CLI

# A short run: 2 epochs of 3 batches; checkpoints after every validation, all kept (resume from epoch 0's). No output
# path is set: every file lands in the run folder, runs/tiny_llava_dora.
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
             "init_args": {"save_top_k": -1, "save_last": True, "save_on_train_epoch_end": False}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",  # mid-epoch: after steps 2 and 4
             "init_args": {"every_n_train_steps": 2, "save_top_k": -1, "filename": "{step}"}},
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
            {"class_path": "mmft.callbacks.Throughput"},
            {"class_path": "mmft.callbacks.CPUThreads", "init_args": {"num_threads": 1}},
            {"class_path": "mmft.callbacks.PeftExport"},
            {"class_path": "mmft.callbacks.AnswerWriter"},
            {"class_path": "mmft.callbacks.WeightUpdates",
             "init_args": {"modules": ["q_proj", "v_proj"], "every_n_train_steps": 2}},
        ],
    }
}
RUN = Path("runs") / "tiny_llava_dora"
LAST = str(RUN / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def workdir(sample_data, tmp_path_factory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("cli"), sample_data, SHORT_RUN)


def mmft(workdir: Path, subcommand: str, *args: str) -> str:
    return run_mmft(workdir, subcommand, "configs/tiny/llava_dora.yaml", *args)


def train_losses(version_dir: Path) -> dict[int, float]:
    with (version_dir / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]}


def mmft_fails(workdir: Path, subcommand: str, *args: str) -> str:
    """``mmft <subcommand>`` on the tiny config, expected to stop with mmft's one-line error; returns stderr."""
    command = [sys.executable, "-m", "mmft.cli", subcommand, "--config", "configs/tiny/llava_dora.yaml", "--config",
               "short.yaml", *args]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr


def mmft_alone(workdir: Path, *args: str) -> str:
    """``mmft <args>`` with no ``--config``."""
    return run_command(workdir, [sys.executable, "-m", "mmft.cli", *args])


@pytest.fixture(scope="module")
def fitted(workdir) -> Path:
    mmft(workdir, "fit")
    return workdir / RUN / "csv" / "version_0"


def test_fit_writes_every_output_in_the_run_folder(workdir, fitted):
    run = workdir / RUN
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "checkpoints", "csv", "wandb", "weight_updates.json"]
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["tiny_llava_dora"]
    assert (fitted / "config.yaml").is_file()
    losses = train_losses(fitted)
    assert sorted(losses) == list(range(6))
    with (fitted / "metrics.csv").open() as file:
        columns = next(csv.reader(file))
    assert {"val/vqav2/VQAAccuracy", "val/average", "perf/samples_per_s", "perf/tokens_per_s",
            "perf/peak_cpu_rss_gib", "lr-AdamW/projector", "lr-AdamW/default"} <= set(columns)
    hparams = yaml.safe_load((fitted / "hparams.yaml").read_text())
    assert hparams["adapter"]["method"] == "dora" and 0 < hparams["trainable_percent"] < 100
    assert hparams["config"]["model"]["class_path"] == "mmft.models.VisionLanguageModule"
    assert hparams["config"]["trainer"]["default_root_dir"] == str(RUN)

    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["use_dora"] is True and adapter["r"] == 16


def test_checkpoints_hold_trainable_parameters_and_describe_themselves(workdir, fitted):
    checkpoint = torch.load(workdir / LAST, weights_only=True, map_location="cpu")
    keys = list(checkpoint["state_dict"])
    assert keys and all(("lora_" in k or "multi_modal_projector" in k) for k in keys)
    hparams = checkpoint["hyper_parameters"]  # the model's config, as LightningCLI saves it
    assert hparams["_class_path"] == "mmft.models.VisionLanguageModule" and hparams["adapter"]["method"] == "dora"
    run_config = yaml.safe_load(checkpoint["mmft_run_config"])
    assert list(run_config) == ["seed_everything", "trainer", "model", "data"]
    assert run_config["trainer"]["default_root_dir"] == str(RUN) and run_config["trainer"]["max_epochs"] == 2
    assert run_config["model"]["init_args"]["adapter"] == hparams["adapter"]


def test_weight_updates_are_tracked_over_training(workdir, fitted):
    """Every 2 steps and at each epoch end (steps 2, 3, 4, 6; 6 once), for the 2 layers' q_proj and v_proj."""
    updates = json.loads((workdir / RUN / "weight_updates.json").read_text())
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
    uninterrupted_updates = json.loads((workdir / RUN / "weight_updates.json").read_text())["points"]
    # a second run in the same folder: the saved config is overwritten, not an abort
    mmft(workdir, "fit", "--ckpt_path", str(RUN / "checkpoints" / "epoch=0-step=3.ckpt"))
    resumed = train_losses(fitted.parent / "version_1")
    assert sorted(resumed) == [3, 4, 5]
    assert resumed == {step: uninterrupted[step] for step in resumed}  # exact
    # the weight-update record came back with the checkpoint and goes on as the uninterrupted run's did
    resumed_updates = json.loads((workdir / RUN / "weight_updates.json").read_text())["points"]
    assert [(p["step"], p["module"]) for p in resumed_updates] == [(p["step"], p["module"])
                                                                   for p in uninterrupted_updates]
    for mine, reference in zip(resumed_updates, uninterrupted_updates):
        assert mine["delta_magnitude"] == pytest.approx(reference["delta_magnitude"], rel=1e-5)
        assert mine["delta_direction"] == pytest.approx(reference["delta_direction"], rel=1e-4)


def test_resume_from_the_middle_of_an_epoch_replays_the_uninterrupted_run(workdir, fitted):
    """A checkpoint after step 2 of epoch 0 (of 3 steps): the resumed run trains batch 3 of that epoch, not its
    first batch again, then epoch 1, with the uninterrupted run's losses."""
    uninterrupted = train_losses(fitted)
    (checkpoint,) = (workdir / RUN / "checkpoints").glob("step*2.ckpt")
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert state["MultitaskDataModule"] == {"epoch": 0, "batches_trained": 2, "batch_size": 16, "seed": 0,
                                            "sampling": "proportional", "group_by_modality_length": False,
                                            "world_size": 1, "packing": False, "max_tokens": None}
    for option, value in (("--data.init_args.batch_size", "8"), ("--data.init_args.seed", "1")):
        refused = mmft_fails(workdir, "fit", "--ckpt_path", str(checkpoint.relative_to(workdir)), option, value)
        assert "saved 2 batches into epoch 0" in refused and option[2:] in refused
    out = mmft(workdir, "fit", "--ckpt_path", str(checkpoint.relative_to(workdir)))
    assert "resuming from a checkpoint that ended before the epoch ended" not in out
    version = max((fitted.parent).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    resumed = train_losses(version)
    assert sorted(resumed) == [2, 3, 4, 5]
    assert resumed == {step: uninterrupted[step] for step in resumed}  # exact


def test_test_prints_the_metrics_table_from_the_checkpoint_alone(workdir, fitted):
    before = {p.name for p in fitted.parent.iterdir()}
    out = mmft_alone(workdir, "test", "--ckpt_path", LAST)
    table = out[out.index("task  "):].splitlines()[:4]
    assert table[0].split() == ["task", "metric", "value", "scored"]
    assert [row.split()[:2] for row in table[1:3]] == [["vqav2", "VQAAccuracy"], ["gqa", "ExactMatchAccuracy"]]
    assert [row.split()[3] for row in table[1:3]] == ["32/32", "32/32"]  # one test batch each, nothing skipped
    scores = [float(row.split()[2]) for row in table[1:3]] + [float(table[3].split()[1])]
    assert table[3].split()[0] == "average" and scores[2] == pytest.approx((scores[0] + scores[1]) / 2, abs=1e-4)
    (added,) = {p.name for p in fitted.parent.iterdir()} - before  # the test's log joins the run's
    with (fitted.parent / added / "metrics.csv").open() as file:
        logged = next(row for row in csv.DictReader(file) if row.get("test/vqav2/VQAAccuracy"))
    assert float(logged["test/vqav2/VQAAccuracy"]) == pytest.approx(scores[0], abs=1e-4)


PAPER_ORDER = ["vqav2", "gqa", "vizwiz", "scienceqa", "textvqa", "pope", "mmbench"]


def test_llava15_benchmarks_table_and_json(workdir, fitted):
    # the recipe, then the benchmark sets: their metrics win over the checkpoint's stored hyperparameters
    out = run_mmft(workdir, "test", "configs/tiny/llava_dora.yaml", "--config",
                   "configs/eval/llava15_benchmarks.yaml", "--trainer.limit_test_batches", "1.0", "--ckpt_path", LAST)
    table = out[out.index("task  "):].splitlines()[1:9]
    assert [row.split()[0] for row in table] == [*PAPER_ORDER, "average"]
    scores = [float(row.split()[2]) for row in table[:-1]] + [float(table[-1].split()[1])]
    assert scores[-1] == pytest.approx(sum(scores[:-1]) / 7, abs=1e-4)
    # every example scored (sample sizes: VQAv2 161, GQA 80, VizWiz 40, SQA-IMG 19, TextVQA 30, POPE 3 x 20,
    # MMBench 16 questions in 42 rotations)
    assert [row.split()[3] for row in table[:-1]] == ["161/161", "80/80", "40/40", "19/19", "30/30", "60/60", "42/42"]

    saved = json.loads((workdir / RUN / "test_metrics.json").read_text())
    assert saved["checkpoint"] == LAST
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


def test_predict_writes_json_lines_from_the_checkpoint_alone(workdir, fitted):
    mmft_alone(workdir, "predict", "--ckpt_path", LAST)
    lines = (workdir / RUN / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 32  # one eval batch
    assert all(r.keys() == {"id", "task", "answer"} and r["task"] == "vqav2" for r in records)
    assert len({r["id"] for r in records}) == 32


def test_a_checkpoint_without_a_run_config_asks_for_one(workdir, fitted, tmp_path):
    checkpoint = torch.load(workdir / LAST, weights_only=True, map_location="cpu")
    del checkpoint["mmft_run_config"]
    torch.save(checkpoint, tmp_path / "bare.ckpt")
    command = [sys.executable, "-m", "mmft.cli", "test", "--ckpt_path", str(tmp_path / "bare.ckpt")]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=200,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert f"--ckpt_path {tmp_path / 'bare.ckpt'} holds no run config" in done.stderr and "--config" in done.stderr


def edited_checkpoint(workdir: Path, folder: Path, edit) -> Path:
    """A copy of the run's last checkpoint, in the run's checkpoint folder, whose stored run config ``edit`` changed
    as someone handing it over could."""
    checkpoint = torch.load(workdir / LAST, weights_only=True, map_location="cpu")
    config = yaml.safe_load(checkpoint["mmft_run_config"])
    edit(config)
    checkpoint["mmft_run_config"] = yaml.safe_dump(config)
    path = workdir / RUN / "checkpoints" / f"edited-{folder.name}.ckpt"
    torch.save(checkpoint, path)
    return path


def test_a_checkpoints_stored_config_runs_no_code_and_writes_nowhere_else(workdir, fitted, tmp_path):
    """The edits of an untrusted checkpoint: a callback that runs a shell command, an answer file outside the run
    folder. Each is refused by name before anything runs; nothing is written."""
    outside = tmp_path / "outside.jsonl"

    def shell_callback(config):
        config["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.LambdaCallback",
                                               "init_args": {"on_predict_start": "os.system"}})

    def answers_elsewhere(config):
        writer = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("AnswerWriter"))
        writer["init_args"]["path"] = str(outside)

    for edit, message in ((shell_callback, "names class 'lightning.pytorch.callbacks.LambdaCallback'"),
                          (answers_elsewhere, f".init_args.path = {outside} outside its run folder")):
        path = edited_checkpoint(workdir, tmp_path / edit.__name__, edit)
        command = [sys.executable, "-m", "mmft.cli", "predict", "--ckpt_path", str(path)]
        done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=200,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
        path.unlink()
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert message in done.stderr and "--config FILE" in done.stderr
    assert not outside.exists()


def test_a_given_run_folder_moves_every_output_of_a_checkpoint_alone(workdir, fitted):
    before = sorted(p.name for p in (workdir / RUN / "csv").iterdir())
    mmft_alone(workdir, "predict", "--ckpt_path", LAST, "--trainer.default_root_dir", "runs/evaluated")
    moved = workdir / "runs" / "evaluated"
    assert (moved / "predictions.jsonl").is_file() and (moved / "csv" / "version_0").is_dir()
    assert sorted(p.name for p in (workdir / RUN / "csv").iterdir()) == before  # no log added to the trained run


def test_a_second_run_gets_its_own_complete_folder(workdir, fitted):
    first = {p: p.read_bytes() for p in (workdir / RUN).rglob("*") if p.is_file()}
    mmft(workdir, "fit", "--trainer.default_root_dir", "runs/exp2", "--trainer.max_epochs", "1")
    second = workdir / "runs" / "exp2"
    assert sorted(p.name for p in second.iterdir()) == ["adapter", "checkpoints", "csv", "wandb",
                                                        "weight_updates.json"]
    assert sorted(p.name for p in (second / "checkpoints").iterdir()) == ["epoch=0-step=3.ckpt", "last.ckpt",
                                                                          "step=2.ckpt"]
    assert (second / "csv" / "version_0" / "metrics.csv").is_file()
    assert (second / "adapter" / "adapter_model.safetensors").is_file()
    # the first run's folder is untouched, every file of it (checkpoints, logs, W&B, exports), none added
    assert {p: p.read_bytes() for p in (workdir / RUN).rglob("*") if p.is_file()} == first


PLAIN_SCRIPT = """
import json, sys
import torch
from mmft.models import VisionLanguageModule
from data_modules import ExampleDataset, VQAv2

module = VisionLanguageModule.load_from_checkpoint(sys.argv[1]).eval()
wanted = {r["id"]: r["answer"] for r in map(json.loads, open(sys.argv[2]))}
reader = VQAv2(questions="data/sample/vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
               image_folder="data/sample/coco/val2014", split="val2014")
examples = [e for e in reader.read() if e.id in wanted]
dataset = ExampleDataset(examples)
with torch.no_grad():
    answers = module.generate_answers(module.collate([dataset[i] for i in range(len(dataset))]))
print(json.dumps({"same": sum(a == wanted[e.id] for a, e in zip(answers, examples)), "of": len(examples)}))
"""


def test_the_checkpoint_loads_from_plain_python(workdir, fitted):
    """``VisionLanguageModule.load_from_checkpoint(path)`` in a script that imports only mmft rebuilds the trained
    model: its answers equal those ``mmft predict`` wrote from the same checkpoint."""
    mmft_alone(workdir, "predict", "--ckpt_path", LAST)
    out = run_command(workdir, [sys.executable, "-c", PLAIN_SCRIPT, LAST, str(RUN / "predictions.jsonl")])
    (result,) = [json.loads(line) for line in out.splitlines() if line.startswith('{"same"')]
    assert result == {"same": 32, "of": 32}


def test_export_writes_the_checkpoints_adapter_as_a_peft_folder(workdir, fitted):
    """``mmft export`` from the second run's last checkpoint gives the folder PeftExport wrote when that fit ended."""
    from safetensors.torch import load_file

    second = workdir / "runs" / "exp2"
    if not (second / "checkpoints" / "last.ckpt").is_file():
        mmft(workdir, "fit", "--trainer.default_root_dir", "runs/exp2", "--trainer.max_epochs", "1")
    out = mmft_alone(workdir, "export", "--ckpt_path", "runs/exp2/checkpoints/last.ckpt", "--out", "exported")
    assert "wrote the adapter (PEFT format) of runs/exp2/checkpoints/last.ckpt" in out
    exported, written = load_file(workdir / "exported" / "adapter_model.safetensors"), \
        load_file(second / "adapter" / "adapter_model.safetensors")
    assert exported.keys() == written.keys() and all(torch.equal(exported[k], written[k]) for k in written)
    assert json.loads((workdir / "exported" / "adapter_config.json").read_text()) == \
        json.loads((second / "adapter" / "adapter_config.json").read_text())
    done = subprocess.run([sys.executable, "-m", "mmft.cli", "export", "--ckpt_path", LAST, "--out", "exported"],
                          cwd=workdir, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "--out exported exists" in done.stderr
    # --merged: the folder mmft.models.export.export_merged writes (its contents are tested in test_export.py)
    mmft_alone(workdir, "export", "--ckpt_path", "runs/exp2/checkpoints/last.ckpt", "--merged", "--out", "merged")
    assert {"config.json", "model.safetensors", "mmft_merged.yaml"} <= {p.name for p in (workdir / "merged").iterdir()}
