"""The ``mmft`` CLI on the tiny VL-BART configs, in subprocesses as a user runs it (fit, then test from the checkpoint),
and the paper recipes: their numbers, and the error that asks for the BART folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import ROOT, make_workdir, run_mmft

from mmft.cli import main, resolve_config
from mmft.models.vlbart import VLBartModule

# 3 training steps, one batch per evaluation loader, files under runs/ of the work folder
SHORT_RUN = {
    "trainer": {
        "max_epochs": 1,
        "limit_train_batches": 3,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": "runs", "name": "csv"}}],
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"dirpath": "runs/ckpt", "save_last": True, "save_on_train_epoch_end": False}},
            {"class_path": "mmft.callbacks.CPUThreads", "init_args": {"num_threads": 1}},
            {"class_path": "mmft.callbacks.PeftExport", "init_args": {"dirpath": "runs/adapter"}},
        ],
    }
}
TASK_METRICS = {"vqav2": "VQAAccuracy", "gqa": "ExactMatchAccuracy", "nlvr2": "ExactMatchAccuracy",
                "coco_caption": "CIDErD"}
VIDEO_TASK_METRICS = {"tvqa": "ExactMatchAccuracy", "how2qa": "ExactMatchAccuracy", "tvc": "CIDErD",
                      "yc2c": "CIDErD"}


def mmft(workdir: Path, subcommand: str, config: str, *args: str) -> str:
    return run_mmft(workdir, subcommand, config, *args)


def logged_columns(run: Path) -> set[str]:
    with (run / "csv" / "version_0" / "metrics.csv").open() as file:
        return set(next(csv.reader(file)))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dora", "lora"])
def test_tiny_config_fits_end_to_end(method, sample_data, tmp_path, monkeypatch):
    workdir = make_workdir(tmp_path, sample_data, SHORT_RUN)
    config, overlay = "configs/tiny/vlbart_image.yaml", ("--config", f"configs/methods/{method}.yaml")
    mmft(workdir, "fit", config, *overlay)
    runs = workdir / "runs"
    columns = logged_columns(runs)
    assert "train/loss" in columns and "val/average" in columns
    assert {f"val/{task}/{metric}" for task, metric in TASK_METRICS.items()} <= columns

    # the checkpoint holds exactly the trainable parameters; the adapter folder is PEFT's
    state = torch.load(runs / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.endswith("v_proj.lora_A.weight") for k in state)
    assert any(k.startswith("model.visual_embedding.") for k in state)
    assert not any(k.startswith("visual_encoder.") or k.endswith("fc1.weight") for k in state)
    adapter = json.loads((runs / "adapter" / "adapter_config.json").read_text())
    assert adapter["use_dora"] == (method == "dora") and adapter["bias"] == "all"
    assert (runs / "adapter" / "adapter_model.safetensors").is_file()

    # the checkpoint describes itself: load_from_checkpoint rebuilds the module with the trained parameters
    monkeypatch.chdir(workdir)  # the stored config's paths are relative to where mmft ran
    module = VLBartModule.load_from_checkpoint(runs / "ckpt" / "last.ckpt")
    assert module.adapter_config.method == method
    trained = module.state_dict()
    assert all(torch.equal(trained[key], value) for key, value in state.items())

    if method == "dora":  # test from the trainable-only checkpoint: the frozen weights are rebuilt from the config
        output = mmft(workdir, "test", config, *overlay, "--ckpt_path", "runs/ckpt/last.ckpt")
        table = [row.split() for row in output[output.index("task  "):].splitlines()[1:6]]
        assert [row[:2] for row in table[:4]] == [list(item) for item in TASK_METRICS.items()]
        scores = [float(row[2]) for row in table[:4]] + [float(table[4][1])]
        # the paper's average of the four scores (it prints them x100)
        assert table[4][0] == "average" and scores[4] == pytest.approx(sum(scores[:4]) / 4, abs=1e-4)


@pytest.mark.slow
def test_tiny_video_config_fits_and_tests_end_to_end(sample_data, tmp_path):
    """Frames decoded from the sample videos (a caption's span for TVC), one token per frame, QA and captions."""
    workdir = make_workdir(tmp_path, sample_data, SHORT_RUN)
    config, dora = "configs/tiny/vlbart_video.yaml", ("--config", "configs/methods/dora.yaml")
    mmft(workdir, "fit", config, *dora, "--trainer.check_val_every_n_epoch", "1")
    columns = logged_columns(workdir / "runs")
    assert {"train/loss", "val/average", "val/tvqa/ExactMatchAccuracy", "val/tvc/CIDErD"} <= columns
    output = mmft(workdir, "test", config, *dora, "--ckpt_path", "runs/ckpt/last.ckpt")
    table = [row.split() for row in output[output.index("task  "):].splitlines()[1:4]]
    assert [row[:2] for row in table[:2]] == [["tvqa", "ExactMatchAccuracy"], ["tvc", "CIDErD"]]
    assert table[2][0] == "average"


# ---------------------------------------------------------------------------------------------- paper recipes
def resolved(*names: str) -> dict:
    """Configs composed as the CLI reads them (includes and defaults resolved)."""
    return resolve_config([arg for name in names for arg in ("--config", str(ROOT / "configs" / f"{name}.yaml"))])


def test_recipe_numbers_match_the_paper(monkeypatch):
    """DoRA paper section 5.2 / VL-Adapter: r 128 on q_proj, v_proj of every attention, visual embedding + biases +
    LayerNorms trained, AdamW lr 1e-3, 20 epochs, warmup 0.1, gradient clipping 5, batch 300, beam search 5."""
    monkeypatch.chdir(ROOT)
    tiny = resolved("tiny/vlbart_image")["model"]["init_args"]["adapter"]
    for method in ("dora", "lora"):
        config = resolved("vlbart_image", "methods/dora") if method == "dora" else resolved("vlbart_image_lora")
        model = config["model"]["init_args"]
        adapter = model["adapter"]
        assert adapter["method"] == method and adapter["r"] == 128 and adapter["bias"] == "all"
        assert adapter["alpha"] == {"dora": 128, "lora": 32}[method]
        assert "visual_embedding" in adapter["modules_to_save"]
        assert model["optimizer"]["init_args"]["lr"] == 1.0e-3
        assert model["scheduler"]["class_path"] == "mmft.models.WarmupLinear"
        assert model["scheduler"]["init_args"]["warmup_ratio"] == 0.1
        assert model["num_beams"] == 5
        assert model["visual"]["encoder"] == "resnet101_clip" and model["visual"]["grid"] == 6
        assert config["trainer"]["max_epochs"] == 20 and config["trainer"]["gradient_clip_val"] == 5.0
        assert config["data"]["init_args"]["batch_size"] * config["trainer"]["accumulate_grad_batches"] == 300
        assert tiny["target_modules"] == adapter["target_modules"]
        assert tiny["modules_to_save"] == adapter["modules_to_save"]


def test_video_recipe_numbers_match_the_paper(monkeypatch):
    """DoRA paper table 4 / VL-Adapter's video setting: the image recipe's adapters, lr 2.4e-4, 7 epochs, batch 40,
    64 frames per clip (one visual token each)."""
    monkeypatch.chdir(ROOT)
    config, image = resolved("vlbart_video"), resolved("vlbart_image")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert model["adapter"] == image["model"]["init_args"]["adapter"]
    assert model["optimizer"]["init_args"]["lr"] == 2.4e-4
    assert config["trainer"]["max_epochs"] == 7 and config["trainer"]["gradient_clip_val"] == 5.0
    assert data["batch_size"] * config["trainer"]["accumulate_grad_batches"] == 40
    assert data["num_frames"] is None and model["max_images"] == 64 and model["visual"]["grid"] == 1  # one setting
    assert {reader["init_args"].get("task", "tvqa") for reader in data["train"]} == set(VIDEO_TASK_METRICS)
    assert model["num_beams"] == 5


@pytest.mark.parametrize("name", ["vlbart_image", "vlbart_image_lora", "vlbart_video", "vlbart_video_lora"])
def test_recipe_asks_for_the_bart_folder(name, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["mmft", "fit", "--config", str(ROOT / "configs" / f"{name}.yaml")])
    with pytest.raises(SystemExit, match=r"^mmft fit: model\.init_args\.bart='/path/to/facebook/bart-base': no such"):
        main()


# the recipes, real and tiny (the named configs equal recipe + overlay: tests/test_configs.py)
VLBART_CONFIGS = sorted(ROOT / "configs" / folder / f"vlbart_{kind}.yaml" for folder in ("", "tiny")
                        for kind in ("image", "video"))


@pytest.mark.parametrize("config", VLBART_CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_config_prints(config, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["mmft", "fit", "--config", str(config), "--print_config"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["model"]
    assert printed["class_path"] == "mmft.models.VLBartModule"
    video = "video" in config.name
    assert printed["init_args"]["visual"]["grid"] == (1 if video else 6)
    expected = VIDEO_TASK_METRICS if video else TASK_METRICS
    if video and "tiny" in config.parts:
        expected = {task: expected[task] for task in ("tvqa", "tvc")}
    assert set(printed["init_args"]["metrics"]) == set(expected)


def test_all_configs_exist():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("vlbart_*.yaml")}
    assert names == {f"{folder}vlbart_{kind}.yaml" for folder in ("", "tiny/", "data/")
                     for kind in ("image", "video")} | {"vlbart_image_lora.yaml", "vlbart_video_lora.yaml"}
