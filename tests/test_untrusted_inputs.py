"""What a file from elsewhere cannot make mmft do: a checkpoint's stored run config is data (no foreign class, no
importable name, no path outside its run folder, no remote code); a tool replaces only a folder holding its own
earlier output; a run folder is locked while a run writes to it (a stale lock from a killed run is taken over)."""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mmft.files import replace_refusal
from mmft.run_folder import LOCK_NAME, RunFolderLock, RunFolderLocked, _process_start
from mmft.stored_config import LIGHTNING_INSTANTIATOR, StoredConfigError, check_as_data, checked_stored_config
from mmft.tools import export, optimize

ROOT = Path(__file__).resolve().parents[1]
RUN = "runs/tiny_llava_dora"
CKPT = f"{RUN}/checkpoints/last.ckpt"

# the shape of the run config the CLI stores in every checkpoint (see mmft.cli.LoggingSaveConfigCallback)
STORED = {
    "seed_everything": 0,
    "trainer": {
        "default_root_dir": RUN,
        "logger": [
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": RUN, "name": "csv"}},
            {"class_path": "lightning.pytorch.loggers.WandbLogger",
             "init_args": {"save_dir": RUN, "project": "mmft", "name": "tiny_llava_dora"}},
        ],
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": f"{RUN}/checkpoints", "save_last": True}},
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
             "init_args": {"logging_interval": "step"}},
            {"class_path": "mmft.callbacks.AnswerWriter", "init_args": {"path": None}},
            {"class_path": "mmft.callbacks.WeightUpdates", "init_args": {"path": f"{RUN}/updates.json"}},
        ],
        "precision": "32-true",
    },
    "model": {
        "class_path": "mmft.models.LlavaModule",
        "init_args": {
            "backbone": {"class_path": "mmft.models.LlavaFromConfig",
                         "init_args": {"tokenizer": "configs/tiny/tokenizer", "text_config": {"hidden_size": 128}}},
            "adapter": {"method": "dora", "target_modules": r".*language_model.*\.(q_proj|v_proj)",
                        "modules_to_save": ["multi_modal_projector"]},
            "template": "vicuna_v1",
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.002}},
            "scheduler": {"class_path": "mmft.models.WarmupCosine", "init_args": {"warmup_ratio": 0.03}},
            "metrics": {"vqav2": {"class_path": "mmft.metrics.VQAAccuracy"}},
        },
    },
    "data": {
        "class_path": "data_modules.MultitaskDataModule",
        "init_args": {"val": [{"class_path": "data_modules.VQAv2",
                               "init_args": {"questions": "data/sample/vqav2/q.json", "image_folder": "data/coco"}}],
                      "batch_size": 16},
    },
}


def stored(**changes) -> dict:
    config = copy.deepcopy(STORED)
    for dotted, value in changes.items():
        node = config
        *path, last = dotted.split("/")
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return config


# ------------------------------------------------------------------------------------------------------ stored config
def test_a_stored_config_of_mmft_and_standard_classes_passes_unchanged():
    assert checked_stored_config(stored(), CKPT, None) == STORED


@pytest.mark.parametrize("key,value", [
    ("trainer/callbacks/1/class_path", "lightning.pytorch.callbacks.LambdaCallback"),
    ("model/init_args/optimizer/class_path", "os.system"),
    ("model/class_path", "mmft.cli.os.system"),  # an import path through an mmft module
    ("model/init_args/backbone/class_path", "subprocess.Popen"),
    ("data/init_args/val/0/class_path", "builtins.eval"),
])
def test_a_class_outside_mmft_and_the_allow_list_is_refused(key, value):
    where = key.replace("/", ".").replace(".1.", "[1].").replace(".0.", "[0].")
    with pytest.raises(StoredConfigError, match=rf"--ckpt_path {CKPT}: its run config names class "
                                                rf"'{re.escape(value)}' at {re.escape(where)}; .*--config FILE"):
        checked_stored_config(stored(**{key: value}), CKPT, None)


def test_an_importable_name_in_any_argument_is_refused():
    """jsonargparse imports a dotted name given to a callable argument: a stored config may hold none."""
    config = stored(**{"trainer/callbacks/1/init_args/logging_interval": "os.system"})
    with pytest.raises(StoredConfigError, match=r"names 'os\.system' at trainer\.callbacks\[1\]\.init_args\."
                                                r"logging_interval"):
        checked_stored_config(config, CKPT, None)
    # a name that only looks dotted (no installed package of that name) and a torch dtype are plain data
    config = stored(**{"model/init_args/template": "vicuna.v1", "trainer/precision": "torch.bfloat16"})
    assert checked_stored_config(config, CKPT, None)["model"]["init_args"]["template"] == "vicuna.v1"


def test_remote_code_cannot_be_turned_on_by_a_checkpoint():
    config = stored(**{"model/init_args/backbone/init_args/trust_remote_code": True})
    with pytest.raises(StoredConfigError, match=r"trust_remote_code: True, which only your own config may set"):
        checked_stored_config(config, CKPT, None)


@pytest.mark.parametrize("key,path", [
    ("trainer/callbacks/2/init_args/path", "/tmp/elsewhere/predictions.jsonl"),
    ("trainer/callbacks/0/init_args/dirpath", "runs/another_run/checkpoints"),
    ("trainer/logger/0/init_args/save_dir", "../outside"),
])
def test_an_output_path_outside_the_run_folder_is_refused(key, path):
    with pytest.raises(StoredConfigError, match=rf"writes trainer\.\w+\[\d\]\.init_args\.\w+ = {path} outside its "
                                                rf"run folder {RUN}"):
        checked_stored_config(stored(**{key: path}), CKPT, None)


def test_a_run_folder_that_neither_holds_the_checkpoint_nor_lies_below_the_working_folder_is_refused(tmp_path):
    config = stored(**{"trainer/default_root_dir": "/etc"})
    with pytest.raises(StoredConfigError, match=r"puts the run folder at /etc.*--trainer\.default_root_dir DIR"):
        checked_stored_config(config, CKPT, None)
    # an absolute run folder is fine when the checkpoint is in it (evaluating one's own run)
    root = tmp_path / "run"
    config = json.loads(json.dumps(STORED).replace(RUN, str(root)))
    assert checked_stored_config(config, root / "checkpoints" / "last.ckpt", None) == config


@pytest.mark.parametrize("key,value,message", [
    ("trainer", ["not", "a", "mapping"], "trainer section is not a mapping"),
    ("trainer/callbacks/0/init_args/dirpath", {"path": "x"}, r"dirpath = \{'path': 'x'\}, not a path"),
])
def test_a_malformed_stored_config_is_a_named_error(key, value, message):
    with pytest.raises(StoredConfigError, match=message):
        checked_stored_config(stored(**{key: value}), CKPT, None)


def test_a_given_run_folder_moves_every_output_path_with_it():
    config = checked_stored_config(stored(), CKPT, "runs/evaluation")
    trainer = config["trainer"]
    assert [logger["init_args"]["save_dir"] for logger in trainer["logger"]] == ["runs/evaluation"] * 2
    assert trainer["callbacks"][0]["init_args"]["dirpath"] == "runs/evaluation/checkpoints"
    assert trainer["callbacks"][3]["init_args"]["path"] == "runs/evaluation/updates.json"


# ------------------------------------------------------------------------------------------------- replacing folders
def test_a_folder_is_replaced_only_when_it_holds_the_same_tools_earlier_output(tmp_path):
    assert replace_refusal(tmp_path / "absent", "--out", False, "mark.json", "tool") is None
    (tmp_path / "empty").mkdir()
    assert replace_refusal(tmp_path / "empty", "--out", False, "mark.json", "tool") is None
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "mark.json").write_text("{}")
    assert "pass --overwrite" in replace_refusal(earlier, "--out", False, "mark.json", "tool")
    assert replace_refusal(earlier, "--out", True, "mark.json", "tool") is None
    (earlier / "checkpoints").mkdir()  # a run folder that happens to hold the marker
    assert "subfolders checkpoints" in replace_refusal(earlier, "--out", True, "mark.json", "tool")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert "no mark.json" in replace_refusal(other, "--out", True, "mark.json", "tool")


def run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "mine"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"the run's checkpoint")
    (run / "predictions.jsonl").write_text('{"id": "1"}\n')
    return run


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("merged", [False, True])
def test_export_overwrite_never_deletes_a_run_folder(tmp_path, capsys, merged):
    run = run_folder(tmp_path)
    before = contents(run)
    argv = ["--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--out", str(run), "--overwrite"]
    assert export.main(argv + (["--merged"] if merged else [])) == 2
    assert "is not the output of an earlier mmft export (subfolders checkpoints)" in capsys.readouterr().err
    assert contents(run) == before


def test_optimize_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    run = run_folder(tmp_path)
    before = contents(run)
    argv = ["--config", str(ROOT / "configs/tiny/llava.yaml"), "--out", str(run)]
    assert optimize.main(argv) == 2
    assert f"--out {run} exists: choose another folder, or pass --overwrite" in capsys.readouterr().err
    assert optimize.main([*argv, "--overwrite"]) == 2
    assert "is not the output of an earlier mmft optimize" in capsys.readouterr().err
    assert contents(run) == before


# ------------------------------------------------------------------------------------------------------------- lock
def holder_line(pid: int, host: str | None = None) -> str:
    return f"{pid} {_process_start(pid) or '-'} {host or socket.gethostname()}\n"


def test_a_run_folder_held_by_a_live_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(holder_line(other.pid))
        with pytest.raises(RunFolderLocked, match=rf"run folder {tmp_path} is in use by another mmft run "
                                                  rf"\(process {other.pid}\)"):
            RunFolderLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()
    with pytest.warns(UserWarning, match=rf"taking over the lock of run process {other.pid}, which has ended"):
        lock = RunFolderLock(tmp_path)
        lock.acquire()
    assert (tmp_path / LOCK_NAME).read_text() == holder_line(os.getpid())
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    """A reused pid: the holder's start time differs from the live process's, so the lock is a killed run's."""
    (tmp_path / LOCK_NAME).write_text(f"{os.getpid()} 1 {socket.gethostname()}\n")
    with pytest.warns(UserWarning, match="taking over"):
        RunFolderLock(tmp_path).acquire()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(holder_line(1, "another-host"))
    with pytest.raises(RunFolderLocked, match=r"locked by '1 .* another-host'.*delete that file"):
        RunFolderLock(tmp_path).acquire()


def test_mmft_fit_on_a_run_folder_in_use_stops_before_writing_anything(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / LOCK_NAME).write_text(holder_line(other.pid))
        command = [sys.executable, "-m", "mmft.cli", "fit", "--config", str(ROOT / "configs/tiny/llava_dora.yaml"),
                   "--trainer.default_root_dir", str(run)]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
    finally:
        other.kill()
        other.wait()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"mmft fit: run folder {run} is in use by another mmft run (process {other.pid})" in done.stderr
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]


class Payload:
    """Stands for pickled code in a checkpoint."""


@pytest.mark.parametrize("key,value", [("_instantiator", "os.system"),
                                       ("optimizer", {"class_path": "os.system", "init_args": {}})])
def test_export_builds_nothing_a_checkpoints_hyperparameters_name_outside_mmft(tmp_path, capsys, key, value):
    """``load_from_checkpoint`` builds what the stored hyperparameters name: export checks them first."""
    import torch

    hyperparameters = {"_class_path": "mmft.models.LlavaModule", "_instantiator": LIGHTNING_INSTANTIATOR,
                       "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}}
    check_as_data(hyperparameters, "stored")  # mmft's own: passes
    torch.save({"state_dict": {}, "hyper_parameters": {**hyperparameters, key: value}}, tmp_path / "model.ckpt")
    assert export.main(["--ckpt_path", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().err
    assert f"--ckpt_path {tmp_path / 'model.ckpt'}: its" in printed and "'os.system'" in printed
    assert not (tmp_path / "out").exists()


def test_export_of_a_pickle_bearing_file_refuses_without_torchs_unsafe_advice(tmp_path, capsys):
    import torch

    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "model.ckpt")
    assert export.main(["--ckpt_path", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "out")]) == 2
    printed = capsys.readouterr().err
    assert "holds pickled objects besides tensors, which are never loaded" in printed
    assert "weights_only=False" not in printed and not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool", ["export", "optimize", "extract-features", "sample-data", "compare"])
def test_each_tools_help_says_what_it_does_in_whole_sentences(tool):
    done = subprocess.run([sys.executable, "-m", "mmft.cli", tool, "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    description = done.stdout.split("\n\n")[1]
    assert done.returncode == 0 and description.rstrip().endswith("."), description


def shipped_runs() -> list[list[str]]:
    """Every shipped recipe alone, and composed with every overlay, method and evaluation config."""
    configs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))
    parts = ("/overlays/", "/methods/", "/eval/", "/tokenizer/", "/sweeps/", "/data/")
    recipes = [c for c in configs if not any(part in c for part in parts)]
    runs = [[recipe] for recipe in recipes]
    runs += [["configs/tiny/llava_dora.yaml", c] for c in configs if c.startswith("configs/tiny/overlays/")]
    runs += [["configs/llava.yaml", "configs/methods/dora.yaml", c] for c in configs
             if c.startswith("configs/overlays/")]
    runs += [["configs/tiny/llava.yaml", c] for c in configs if c.startswith("configs/methods/")]
    runs += [["configs/tiny/llava_dora.yaml", c] for c in configs if c.startswith("configs/eval/")]
    return runs


def test_every_shipped_run_config_passes_as_a_stored_config(monkeypatch):
    """What a checkpoint of any shipped recipe stores is accepted unchanged: the checks refuse only what no recipe
    asks for."""
    from mmft.cli import RUN_CONFIG_SECTIONS, resolve_config

    monkeypatch.chdir(ROOT)
    runs = shipped_runs()
    assert len(runs) > 30
    for files in runs:
        resolved = resolve_config([arg for path in files for arg in ("--config", path)])
        stored = {key: resolved[key] for key in RUN_CONFIG_SECTIONS if key in resolved}
        assert checked_stored_config(copy.deepcopy(stored), "runs/x/checkpoints/last.ckpt", None) == stored, files
