"""Every YAML under configs/ parses with ``--print_config`` (without building any model; an evaluation config composed
after the tiny recipe), and the real recipes fail with an error naming the key to set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmft.cli import main
from mmft.models.llava import BackboneConfigError

ROOT = Path(__file__).resolve().parents[1]
# recipes; overlays compose after a recipe (tiny/overlays/ after the tiny DoRA recipe), and so do the evaluation
# configs (configs/eval/)
CONFIGS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml") if "overlays" not in p.parts and p.parent.name != "eval"
)
OVERLAYS = sorted((ROOT / "configs").rglob("overlays/*.yaml"))
EVAL_CONFIGS = sorted((ROOT / "configs" / "eval").glob("*.yaml"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.chdir(ROOT)


def mmft(monkeypatch, *args: str) -> None:
    """Run the ``mmft`` entry point in this process, as the console script would."""
    monkeypatch.setattr("sys.argv", ["mmft", *args])
    main()


def test_there_are_configs():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    assert {"llava_dora.yaml", "llava_lora.yaml", "tiny/llava_dora.yaml", "tiny/llava_lora.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_config_parses(config, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        mmft(monkeypatch, "fit", "--config", str(config), "--print_config")
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("mmft.models.")
    assert printed["data"]["init_args"].get("collate_fn", None) is None  # linked from the model at run time
    source = yaml.safe_load(config.read_text())
    assert printed["model"]["init_args"]["adapter"]["method"] == source["model"]["init_args"]["adapter"]["method"]


@pytest.mark.parametrize("config", EVAL_CONFIGS, ids=lambda p: p.name)
def test_eval_config_composes_after_a_recipe(config, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        mmft(monkeypatch, "test", "--config", "configs/tiny/llava_dora.yaml", "--config", str(config), "--print_config")
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    tests = [reader["class_path"].rsplit(".", 1)[1] for reader in printed["data"]["init_args"]["test"]]
    assert tests == ["VQAv2", "GQA", "VizWiz", "ScienceQA", "TextVQA", "POPE", "MMBench"]  # the paper's order
    metrics = printed["model"]["init_args"]["metrics"]
    assert {"vqav2", "gqa", "vizwiz", "scienceqa", "textvqa", "pope", "mmbench"} <= set(metrics)
    assert printed["model"]["init_args"]["adapter"]["method"] == "dora"  # the recipe's settings stay


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_overlay_composes_on_the_tiny_recipe(overlay, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        mmft(monkeypatch, "fit", "--config", str(ROOT / "configs" / "tiny" / "llava_dora.yaml"), "--config",
             str(overlay), "--print_config")
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert_overrides(printed, yaml.safe_load(overlay.read_text()), "")


def assert_overrides(printed, overlay, key: str) -> None:
    """Every value the overlay sets is in the composed config (lists: the same entries, by class_path)."""
    if isinstance(overlay, dict):
        for name, value in overlay.items():
            assert name in printed, f"{key}.{name} missing from the composed config"
            assert_overrides(printed[name], value, f"{key}.{name}")
    elif isinstance(overlay, list):
        assert [getattr(e, "get", lambda _: e)("class_path") for e in printed] == \
            [getattr(e, "get", lambda _: e)("class_path") for e in overlay], key
    else:
        assert printed == overlay, f"{key}: {printed!r} != {overlay!r}"


@pytest.mark.parametrize("name", ["llava_dora.yaml", "llava_lora.yaml"])
def test_real_recipe_asks_for_the_checkpoint_path(name, monkeypatch):
    with pytest.raises(BackboneConfigError, match=r"model\.init_args\.backbone\.init_args\.path is not set"):
        mmft(monkeypatch, "fit", "--config", str(ROOT / "configs" / name))


def test_recipe_numbers_match_the_llava_lora_recipe():
    """REFERENCE.md section 3: r 128, alpha 256, dropout 0.05, lr 2e-4 / projector 2e-5, cosine, 3% warmup, wd 0."""
    for name, method in (("llava_dora.yaml", "dora"), ("llava_lora.yaml", "lora")):
        config = yaml.safe_load((ROOT / "configs" / name).read_text())
        model = config["model"]["init_args"]
        assert model["adapter"].items() >= {"method": method, "r": 128, "alpha": 256, "dropout": 0.05}.items()
        assert model["optimizer"]["init_args"] == {"lr": 2.0e-4, "weight_decay": 0.0}
        assert model["scheduler"]["init_args"] == {"warmup_ratio": 0.03}
        assert model["param_groups"] == [{"name": "projector", "pattern": "multi_modal_projector", "lr": 2.0e-5}]
        assert model["max_length"] == 2048 and config["trainer"]["max_epochs"] == 1
        assert config["data"]["init_args"]["batch_size"] * config["trainer"]["accumulate_grad_batches"] == 128
        assert config["data"]["init_args"]["group_by_modality_length"] is True
