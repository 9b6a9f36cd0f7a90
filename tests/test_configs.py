"""Configs as recipes plus method overlays, read with the CLI's own parser (without building any model): the few
named configs equal their recipe + overlay, a LoRA and a DoRA run of one recipe differ only in the adapter block and
the run folder, every output path lies in the run folder, the evaluation configs and other overlays compose after a
recipe, and the real recipes fail with an error naming the key to set."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import yaml

from mmft.cli import main, resolve_config
from mmft.run_folder import run_name

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["tiny/llava", "tiny/llava_ocr", "tiny/vlbart_image", "tiny/vlbart_video", "tiny/qwen2_5_vl",
           "tiny/smolvlm", "tiny/llava_onevision_video", "tiny/qwen2_vl", "tiny/llava_next", "tiny/llava_next_video",
           "tiny/idefics3", "tiny/qwen3_vl", "tiny/qwen3_vl_moe", "tiny/gemma3", "tiny/internvl", "tiny/mistral3",
           "tiny/paligemma", "tiny/minicpmv4_6", "tiny/glm4v", "llava", "vlbart_image", "vlbart_video", "qwen2_5_vl_7b",
           "llava_onevision_7b_video", "qwen3_vl_8b"]
METHODS = ["lora", "dora", "vera", "dvora", "full"]
# the only pre-composed configs: the quickstart's run and the DoRA paper's two VL-BART LoRA rows
NAMED = {"tiny/llava_dora": ("tiny/llava", "dora"), "vlbart_image_lora": ("vlbart_image", "lora"),
         "vlbart_video_lora": ("vlbart_video", "lora")}
# where a named config departs from recipe + overlay on purpose, with the reason in its header
DEPARTURES = {
    "vlbart_image_lora": {("model", "init_args", "adapter", "alpha"): 32.0},
    "vlbart_video_lora": {("model", "init_args", "adapter", "alpha"): 32.0},
}
# overlays compose after a recipe (tiny/overlays/ after the tiny DoRA recipe), and so do the evaluation
# configs (configs/eval/)
OVERLAYS = sorted((ROOT / "configs").rglob("overlays/*.yaml"))
EVAL_CONFIGS = sorted((ROOT / "configs" / "eval").glob("*.yaml"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.chdir(ROOT)


@cache
def resolved(*configs: str) -> dict:
    return resolve_config([arg for config in configs for arg in ("--config", f"configs/{config}.yaml")])


def differences(a, b, path=()) -> dict[tuple, tuple]:
    """Every leaf where two nested configs differ, by key path."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: v for key in a.keys() | b.keys()
                for k, v in differences(a.get(key), b.get(key), (*path, key)).items()}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return {k: v for i, (x, y) in enumerate(zip(a, b)) for k, v in differences(x, y, (*path, i)).items()}
    return {} if a == b else {path: (a, b)}


def mmft(monkeypatch, *args: str) -> None:
    """Run the ``mmft`` entry point in this process, as the console script would."""
    monkeypatch.setattr("sys.argv", ["mmft", *args])
    main()


def test_there_are_recipes_overlays_and_the_named_configs():
    names = {p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert set(RECIPES) <= names and {f"methods/{m}" for m in METHODS} <= names and set(NAMED) <= names
    folders = ("methods/", "overlays/", "tiny/overlays/", "eval/", "data/", "sweeps/", "tiny/tokenizer/")
    others = {n for n in names - set(RECIPES) - set(NAMED) if not n.startswith(folders)}
    assert others == {"tiny/qwen3_vl_moe_experts"}  # a recipe variant, not a composition


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_config_is_its_recipe_plus_the_method_overlay(name):
    recipe, method = NAMED[name]
    named = resolved(name)
    composed = resolved(recipe, f"methods/{method}")
    expected = {path: (composed_value, value) for path, value in DEPARTURES.get(f"{recipe}_{method}", {}).items()
                for composed_value in [composed["model"]["init_args"]["adapter"][path[-1]]]}
    assert differences(composed, named) == expected
    assert named["model"]["init_args"]["adapter"]["method"] == method
    assert named["trainer"]["default_root_dir"] == f"runs/{recipe.replace('/', '_')}_{method}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_lora_and_dora_of_one_recipe_differ_only_in_the_adapter_and_the_run_folder(recipe):
    lora, dora = resolved(recipe, "methods/lora"), resolved(recipe, "methods/dora")
    changed = differences(lora, dora)
    assert changed[("model", "init_args", "adapter", "method")] == ("lora", "dora")
    root = ("trainer", "default_root_dir")
    assert changed[root] == tuple(f"runs/{recipe.replace('/', '_')}_{m}" for m in ("lora", "dora"))
    lora_root, dora_root = (Path(folder).name for folder in changed.pop(root))
    # everything else that differs is a path in the run folder, or W&B's run name, which is the folder's name
    for path, (lora_value, dora_value) in changed.items():
        if path[:3] != ("model", "init_args", "adapter"):
            assert lora_root in str(lora_value) and str(lora_value).replace(lora_root, dora_root) == dora_value, path


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_output_path_lies_in_the_run_folder(recipe):
    config = resolved(recipe, "methods/dora")
    trainer = config["trainer"]
    root = trainer["default_root_dir"]
    assert [(logger["class_path"].rsplit(".", 1)[1], logger["init_args"]["save_dir"]) for logger in trainer["logger"]] \
        == [("CSVLogger", root), ("WandbLogger", root)]
    checkpoints = [c for c in trainer["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert checkpoints and all(c["init_args"]["dirpath"] == f"{root}/checkpoints" for c in checkpoints)
    for callback in trainer["callbacks"]:  # mmft's callbacks default to the run folder: no config spells a path
        if callback["class_path"].startswith("mmft.callbacks."):
            init_args = callback.get("init_args") or {}
            assert init_args.get("path") is None and init_args.get("dirpath") is None, callback["class_path"]


def test_an_explicit_run_folder_and_paths_win():
    config = resolve_config(["--config", "configs/tiny/llava_dora.yaml", "--trainer.default_root_dir", "runs/exp2"])
    assert config["trainer"]["default_root_dir"] == "runs/exp2"
    (checkpoint,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert checkpoint["init_args"]["dirpath"] == "runs/exp2/checkpoints"
    assert config["trainer"]["logger"][1]["init_args"]["name"] == "exp2"


@pytest.mark.parametrize("method", ["vera", "dvora"])
def test_vera_overlays_set_the_papers_rank_and_learning_rate(method):
    """DoRA paper (DVoRA): r 1024, lr 4e-3; everything else stays the recipe's."""
    config = resolved("tiny/llava", f"methods/{method}")
    lora = resolved("tiny/llava", "methods/lora")
    changed = {path for path in differences(lora, config) if path[:3] != ("model", "init_args", "adapter")}
    assert ("model", "init_args", "optimizer", "init_args", "lr") in changed
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 4e-3
    assert config["model"]["init_args"]["adapter"]["r"] == 1024
    assert config["model"]["init_args"]["adapter"]["method"] == method


def test_run_name_follows_the_recipe_and_method():
    assert run_name([Path("/repo/configs/tiny/llava.yaml"), Path("/repo/configs/methods/dora.yaml")], "dora") \
        == "tiny_llava_dora"
    assert run_name([Path("configs/tiny/llava_dora.yaml")], "dora") == "tiny_llava_dora"
    assert run_name([Path("elsewhere/my_recipe.yaml")], "lora") == "my_recipe_lora"
    assert run_name([], None) == "run"


def test_print_config_shows_the_composed_config_without_the_linked_collate(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        mmft(monkeypatch, "fit", "--config", "configs/tiny/llava.yaml", "--config", "configs/methods/dora.yaml",
             "--print_config")
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "mmft.models.VisionLanguageModule"
    assert printed["model"]["init_args"]["adapter"]["method"] == "dora"
    assert printed["data"]["init_args"].get("collate_fn", None) is None  # linked from the model at run time


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


@pytest.mark.parametrize("name", ["llava", "qwen2_5_vl_7b", "llava_onevision_7b_video", "qwen3_vl_8b"])
def test_real_recipe_asks_for_the_checkpoint_path(name, monkeypatch):
    """The message alone, naming the key, not a traceback."""
    with pytest.raises(SystemExit, match=r"^mmft fit: model\.init_args\.backbone\.init_args\.path is not set"):
        mmft(monkeypatch, "fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), "--config",
             str(ROOT / "configs" / "methods" / "dora.yaml"))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_recipe_numbers_match_the_llava_lora_recipe(method):
    """LLaVA-1.5's finetune_lora.sh: r 128, alpha 256, dropout 0.05, lr 2e-4 / projector 2e-5, cosine, 3% warmup,
    wd 0."""
    config = resolved("llava", f"methods/{method}")
    model = config["model"]["init_args"]
    assert model["adapter"].items() >= {"method": method, "r": 128, "alpha": 256, "dropout": 0.05}.items()
    assert model["optimizer"]["init_args"].items() >= {"lr": 2.0e-4, "weight_decay": 0.0}.items()
    assert model["scheduler"]["init_args"]["warmup_ratio"] == 0.03
    assert [{k: v for k, v in group.items() if v is not None} for group in model["param_groups"]] == \
        [{"name": "projector", "pattern": "multi_modal_projector", "lr": 2.0e-5}]
    assert model["max_length"] == 2048 and config["trainer"]["max_epochs"] == 1
    assert config["data"]["init_args"]["batch_size"] * config["trainer"]["accumulate_grad_batches"] == 128
    assert config["data"]["init_args"]["group_by_modality_length"] is True


# The published settings each full recipe follows, written out from the sources its header names: Qwen's
# qwen-vl-finetune (sft_7b.sh, its README's launch, argument.py defaults) and LLaVA-NeXT's finetune_ov.sh for the
# schedule, batch, length, resolution and frames; LLaMA-Factory's qwen2_5vl_lora_sft.yaml for the adapter.
PUBLISHED = {
    "qwen2_5_vl_7b": {
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0}, "lr": 1.0e-4, "weight_decay": 0.0, "warmup_ratio": 0.03,
        "projector": {"name": "projector", "pattern": "merger", "lr": 1.0e-5}, "epochs": 3, "global_batch": 128,
        "per_device": 4, "devices": 8, "max_length": 8192, "clip": 1.0,
        "frames": {"video_fps": 0.5, "max_frames": 8},
        "processors": {"image_processor": {"min_pixels": 784, "max_pixels": 50176},
                       "video_processor": {"min_pixels": 4 * 28 * 28, "max_pixels": 32 * 28 * 28}},
    },
    "llava_onevision_7b_video": {
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0}, "lr": 1.0e-4, "weight_decay": 0.0, "warmup_ratio": 0.03,
        "projector": {"name": "projector", "pattern": "multi_modal_projector", "lr": 1.0e-5}, "epochs": 1,
        "global_batch": 256, "per_device": 1, "devices": 8, "max_length": 32768, "clip": 1.0,
        "frames": {"video_fps": 1, "max_frames": 32}, "processors": {},
    },
}


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_full_recipe_numbers_are_the_published_ones(recipe, method):
    want = PUBLISHED[recipe]
    config = resolved(recipe, f"methods/{method}")
    model, trainer, data = config["model"]["init_args"], config["trainer"], config["data"]["init_args"]
    assert model["adapter"].items() >= {"method": method, **want["adapter"]}.items()
    assert model["adapter"]["target_modules"].startswith(".*language_model.*")  # the language model's linears only
    assert model["optimizer"]["init_args"].items() >= {"lr": want["lr"], "weight_decay": want["weight_decay"]}.items()
    assert model["scheduler"]["class_path"].endswith("WarmupCosine")
    assert model["scheduler"]["init_args"]["warmup_ratio"] == want["warmup_ratio"]
    assert [{k: v for k, v in group.items() if v is not None} for group in model["param_groups"]] == [want["projector"]]
    assert (model["max_length"], trainer["max_epochs"], trainer["gradient_clip_val"]) == \
        (want["max_length"], want["epochs"], want["clip"])
    assert (data["batch_size"], trainer["devices"]) == (want["per_device"], want["devices"])
    assert data["batch_size"] * trainer["accumulate_grad_batches"] * trainer["devices"] == want["global_batch"]
    assert {k: data[k] for k in want["frames"]} == want["frames"]
    backbone = model["backbone"]["init_args"]
    assert {k: backbone[k] for k in want["processors"]} == want["processors"]
    assert backbone["path"] is None and trainer["precision"] == "bf16-mixed"


TINY_VLMS = [r for r in RECIPES if r.startswith("tiny/") and
             resolved(r, "methods/dora")["model"]["class_path"].endswith("VisionLanguageModule")]


@pytest.mark.parametrize("recipe", TINY_VLMS)
def test_tiny_vision_language_recipe_builds_its_model_and_adapters(recipe):
    """The recipe's sizes build the family's model and its adapter targets and projector match modules of it."""
    from mmft.adapters import AdapterConfig
    from mmft.models import VisionLanguageFromConfig, VisionLanguageModule

    model = resolved(recipe, "methods/dora")["model"]["init_args"]
    backbone = VisionLanguageFromConfig(**model["backbone"]["init_args"])
    module = VisionLanguageModule(backbone, AdapterConfig(**model["adapter"]), max_length=model["max_length"])
    assert module.adapter_report.adapted and module.adapter_report.modules_to_save


def test_tiny_moe_experts_recipe_adapts_the_expert_weights_too():
    """The experts recipe differs from the MoE LoRA recipe only by the expert targets (and no dropout)."""
    from mmft.adapters import AdapterConfig
    from mmft.models import VisionLanguageFromConfig, VisionLanguageModule

    experts, lora = resolved("tiny/qwen3_vl_moe_experts"), resolved("tiny/qwen3_vl_moe", "methods/lora")
    adapter = ("model", "init_args", "adapter")
    changed = differences(experts, lora)
    assert {k: v for k, v in changed.items() if k[:3] == adapter} == {(*adapter, "target_parameters"): (
        ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], None), (*adapter, "dropout"): (0.0, 0.05)}
    assert all(k[0] == "trainer" for k in changed if k[:3] != adapter)  # and the run folder's name
    model = experts["model"]["init_args"]
    module = VisionLanguageModule(VisionLanguageFromConfig(**model["backbone"]["init_args"]),
                                  AdapterConfig(**model["adapter"]), max_length=model["max_length"])
    assert len(module.adapter_report.adapted_parameters) == 4  # two expert tensors in each of two layers


def test_the_cli_adds_the_default_callbacks_a_recipe_does_not_list_itself():
    """Recipes list only the callbacks they add; a recipe's own ModelCheckpoint replaces the default one."""
    def by_class(config):
        return {c["class_path"].rsplit(".", 1)[1]: c.get("init_args") or {} for c in config["trainer"]["callbacks"]}

    tiny, real = by_class(resolved("tiny/llava", "methods/dora")), by_class(resolved("llava", "methods/dora"))
    defaults = {"ModelCheckpoint", "LearningRateMonitor", "Throughput", "PeftExport", "AnswerWriter"}
    assert defaults | {"CPUThreads", "WeightUpdates", "UpdateSpectra", "SourceForgetting"} == set(tiny)
    assert defaults | {"WeightUpdates"} == set(real)
    assert tiny["ModelCheckpoint"]["save_on_train_epoch_end"] is False and tiny["ModelCheckpoint"]["save_last"]
    assert real["ModelCheckpoint"]["every_n_train_steps"] == 500  # the recipe's own, not a second one
    listed = resolved("llava", "methods/dora")["trainer"]["callbacks"]
    assert sum(c["class_path"].endswith("ModelCheckpoint") for c in listed) == 1
