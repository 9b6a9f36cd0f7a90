"""``mmft sweep``: the grid's trials, one run folder each, the table with the best trial per method, and a sweep
killed mid-way that resumes where it stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from cli_helpers import ROOT, make_workdir

from mmft.tools import sweep

SHORT = {"trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0,
                     "log_every_n_steps": 1}}
GRID = {"recipe": "configs/tiny/llava.yaml", "methods": ["lora", "full"],
        "grid": {"model.init_args.optimizer.init_args.lr": [1.0e-3]}}


def test_the_grid_crosses_every_method_with_every_value_and_bad_grids_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**GRID, "grid": {"model.init_args.optimizer.init_args.lr": [1e-3, 1e-2],
                                                      "model.init_args.adapter.init_args.r": [4, 8]}}))
    recipe, trials = sweep.read_grid(path)
    assert recipe == "configs/tiny/llava.yaml" and len(trials) == 2 * 2 * 2
    assert trials[0].name == "lora_r=4_lr=0.001"
    args = trials[0].fit_args(recipe, tmp_path / "t")
    assert args[:5] == ["fit", "--config", "configs/tiny/llava.yaml", "--config", "configs/methods/lora.yaml"]
    assert args[5:9] == ["--model.init_args.adapter.init_args.r", "4", "--model.init_args.optimizer.init_args.lr",
                         "0.001"]
    for spec, message in [({**GRID, "methods": ["lorra"]}, r"method 'lorra' has no configs/methods/lorra.yaml"),
                          ({**GRID, "recipe": "configs/none.yaml"}, r"recipe='configs/none.yaml' is not a config"),
                          ({**GRID, "grid": {"lr": 1e-3}}, r"grid must map config keys to non-empty lists"),
                          ({**GRID, "extra": 1}, r"expected a mapping with recipe, methods and grid")]:
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(sweep.SweepError, match=message):
            sweep.read_grid(path)


@pytest.mark.slow
def test_a_killed_sweep_resumes_where_it_stopped_and_tabulates_every_trial(tmp_path, sample_data):
    workdir = make_workdir(tmp_path, sample_data, SHORT)
    (workdir / "grid.yaml").write_text(yaml.safe_dump(GRID))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mmft.cli", "sweep", "grid.yaml", "--out", "runs/sweep", "--",
               "--config", "short.yaml"]
    out = workdir / "runs" / "sweep"
    first = out / "lora_lr=0.001" / sweep.TRIAL_FILE
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not first.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first.is_file(), "the first trial never finished"
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and the second trial's fit with it
    process.wait()
    assert not (out / "sweep.md").exists()

    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    records = {name: json.loads((out / name / sweep.TRIAL_FILE).read_text()) for name in ("lora_lr=0.001",
                                                                                         "full_lr=0.001")}
    assert all(r["status"] == "done" for r in records.values())
    assert "trial 1/2 lora_lr=0.001 (done)" in done.stdout  # skipped, not run again
    assert (out / "lora_lr=0.001" / "csv" / "version_0").is_dir() and not (out / "lora_lr=0.001" / "csv" /
                                                                           "version_1").exists()
    table = json.loads((out / "sweep.json").read_text())
    assert [row["trial"] for row in table["trials"]] == ["lora_lr=0.001", "full_lr=0.001"]
    for row in table["trials"]:
        assert row["target (best val)"] is not None and row["forgetting (source loss rise)"] is not None
        assert row["rank at 90% (median)"] >= 1
    assert set(table["best"]) == {"lora", "full"}
    assert "Best trial per method" in (out / "sweep.md").read_text()


def test_a_trial_with_a_last_checkpoint_is_resumed_from_it_and_a_failed_one_is_recorded(tmp_path, monkeypatch):
    trial = sweep.Trial("lora", (("model.init_args.optimizer.init_args.lr", 0.001),))
    folder = tmp_path / trial.name
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1)  # the fit fails

    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    assert sweep.trial_state(folder) == "resume"
    record = sweep.run_trial(trial, "configs/tiny/llava.yaml", tmp_path, ["--seed_everything", "1"], gpu=None)
    assert calls[0][-2:] == ["--ckpt_path", str(folder / "checkpoints" / "last.ckpt")]
    assert calls[0][calls[0].index("--seed_everything") + 1] == "1"
    assert record["status"] == "failed" and record["exit_code"] == 1 and record["resumed"]
    assert sweep.trial_state(folder) == "resume"  # a failed trial is tried again by the next sweep
    assert sweep.trial_row(record, tmp_path) == {"trial": trial.name, "method": "lora",
                                                 "model.init_args.optimizer.init_args.lr": 0.001, "status": "failed"}


@pytest.mark.slow
def test_two_workers_share_an_optuna_study_and_run_each_trial_once(tmp_path, sample_data):
    """Two worker processes on one study (SQLite): the grid's two trials each run once, by one worker or the other,
    and both workers write the whole table."""
    workdir = make_workdir(tmp_path, sample_data, SHORT)
    (workdir / "grid.yaml").write_text(yaml.safe_dump(GRID))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mmft.cli", "sweep", "grid.yaml", "--out", "runs/sweep", "--engine", "optuna",
               "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--", "--config", "short.yaml"]
    workers = [subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=400)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    out = workdir / "runs" / "sweep"
    for name in ("lora_lr=0.001", "full_lr=0.001"):
        assert json.loads((out / name / sweep.TRIAL_FILE).read_text())["status"] == "done"
        assert not (out / name / "csv" / "version_1").exists()  # fitted once
    started = [line for output in outputs for line in output.splitlines() if "(new)" in line]
    assert sorted(line.split()[4] for line in started) == ["full_lr=0.001", "lora_lr=0.001"]
    table = json.loads((out / "sweep.json").read_text())
    assert {row["trial"] for row in table["trials"]} == {"lora_lr=0.001", "full_lr=0.001"}


def test_a_damaged_trial_record_is_named_not_a_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    (tmp_path / "out" / "lora_lr=0.001").mkdir(parents=True)
    (tmp_path / "out" / "lora_lr=0.001" / sweep.TRIAL_FILE).write_text("{not json")
    assert sweep.main([str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "trial.json: not a trial record" in capsys.readouterr().err
