"""The ``mmft`` command: LightningCLI with fit / validate / test / predict over any mmft model and DataModule, plus
tool subcommands over mmft's library code (sample-data, compare, extract-features, export, optimize, sweep).

    mmft fit --config configs/tiny/llava_dora.yaml
    mmft fit --config configs/tiny/llava.yaml --config configs/methods/lora.yaml    # recipe + method overlay
    mmft test --ckpt_path runs/tiny_llava_dora/checkpoints/last.ckpt                 # the config comes with it
    mmft test --config configs/tiny/llava_dora.yaml --config configs/eval/llava15_benchmarks.yaml --ckpt_path ...
    mmft fit --config configs/llava.yaml --config configs/methods/dora.yaml --config my_paths.yaml --print_config

Models and DataModules are chosen by ``class_path`` in the config (subclass mode). The model's collate is handed
to the DataModule (``collate_fn``) once both exist, so a config never names it. Several ``--config`` files compose
in order, later ones overriding earlier ones. Every output of a run lands in its run folder,
``trainer.default_root_dir`` (see :mod:`mmft.run_folder`), and every checkpoint carries the run config that made it.
"""

from __future__ import annotations

import importlib
import json
import netrc
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from mmft.checkpoint_io import AtomicCheckpointIO
from mmft.errors import InputError
from mmft.files import write_json_atomic
from mmft.models.base import AdapterModule
from mmft.run_folder import RunFolderLock, fill_run_paths, is_main_process
from mmft.stored_config import checked_stored_config

RUN_CONFIG_KEY = "mmft_run_config"
RUN_CONFIG_SECTIONS = ("seed_everything", "trainer", "model", "data")
TRAINER_SUBCOMMANDS = ("fit", "validate", "test", "predict")
# name -> (module with ``main(argv) -> int``, one line for ``mmft --help``)
TOOLS = {
    "sample-data": ("mmft.tools.sample_data", "write the synthetic sample data the tiny configs and tests use"),
    "compare": ("mmft.tools.compare", "put finished runs side by side (table, JSON, --plot PNG)"),
    "extract-features": ("mmft.tools.extract_features", "pre-extract VL-BART visual features from images or videos"),
    "export": ("mmft.tools.export", "write a checkpoint's adapter as a PEFT folder, or the merged model (--merged)"),
    "optimize": ("mmft.tools.optimize", "write a config's readers to litdata shards for streaming"),
    "sweep": ("mmft.tools.sweep", "one recipe over a grid of methods and settings, a run folder per trial, a table"),
}


class RunConfigError(InputError, ValueError):
    """A checkpoint given without ``--config`` carries no run config to rebuild its run from."""


def wandb_configured() -> bool:
    """Whether the user has set W&B up: an API key in the environment or a ``wandb login`` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or Path.home() / ".netrc").authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


RESULTS_FILE = "test_metrics.json"


def results_table(
    metrics: Mapping[str, Any], stage: str, counts: Mapping[str, tuple[int, int]] | None = None
) -> str:
    """The per-task metrics ``<stage>/<task>/<Metric>`` (in the order of the dataloaders) and ``<stage>/average`` as a
    plain text table; with ``counts`` (task -> examples scored, examples in total), a column that shows samples
    skipped for bad media. The details of metrics that report several numbers (``<stage>/<task>/<Metric>/<key>``)
    are left to the JSON file."""
    counts = counts or {}
    rows = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == stage:
            scored = "{}/{}".format(*counts[parts[1]]) if parts[1] in counts else ""
            rows.append((parts[1], parts[2], f"{float(value):.4f}", scored))
    if f"{stage}/average" in metrics:
        rows.append(("average", "", f"{float(metrics[f'{stage}/average']):.4f}", ""))
    rows = [("task", "metric", "value", "scored" if counts else ""), *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        f"{t:<{widths[0]}}  {m:<{widths[1]}}  {v:>{widths[2]}}  {n:>{widths[3]}}".rstrip() for t, m, v, n in rows
    )


def write_results(metrics: Mapping[str, Any], stage: str, path: Path, checkpoint: str | None) -> Path:
    """Every ``<stage>/...`` number, in logging order, with the checkpoint it scored, as JSON (written atomically)."""
    numbers = {key: float(value) for key, value in metrics.items() if key.startswith(f"{stage}/")}
    return write_json_atomic(path, {"checkpoint": checkpoint, "metrics": numbers})


# the callbacks every run gets beside those its config lists, unless it lists one of the same class itself (its own
# ModelCheckpoint, say): recipes write only the callbacks they add
DEFAULT_CALLBACKS = [
    # saved after validation: Lightning resumes such checkpoints exactly with --ckpt_path
    {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
     "init_args": {"save_last": True, "save_on_train_epoch_end": False}},
    {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
    {"class_path": "mmft.callbacks.Throughput"},
    {"class_path": "mmft.callbacks.PeftExport"},
    {"class_path": "mmft.callbacks.AnswerWriter"},
]


def add_default_callbacks(trainer: Namespace) -> None:
    """Append to a parsed ``trainer`` section each of :data:`DEFAULT_CALLBACKS` whose class it does not list."""
    listed = trainer.get("callbacks") or []
    if not isinstance(listed, list):
        listed = [listed]
    classes = {entry.get("class_path") for entry in listed if hasattr(entry, "get")}
    added = [Namespace(class_path=entry["class_path"], init_args=Namespace(**entry.get("init_args", {})))
             for entry in DEFAULT_CALLBACKS if entry["class_path"] not in classes]
    trainer.callbacks = listed + added


class LoggingSaveConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the log dir (overwriting: a rerun in the same folder must not abort) and logs the
    whole run config to every logger (W&B shows it as the run's config)."""

    def save_config(self, trainer: Trainer, pl_module: AdapterModule, stage: str) -> None:
        config = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})

    def on_save_checkpoint(self, trainer: Trainer, pl_module: AdapterModule, checkpoint: dict[str, Any]) -> None:
        """Every checkpoint carries the resolved run config, so ``mmft test|predict --ckpt_path`` needs no
        ``--config``."""
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        checkpoint[RUN_CONFIG_KEY] = yaml.safe_dump({k: config[k] for k in RUN_CONFIG_SECTIONS if k in config},
                                                    sort_keys=False)


class MMFTCLI(LightningCLI):
    """LightningCLI for mmft: any :class:`AdapterModule` and any LightningDataModule by ``class_path``.

    The optimizer and scheduler are arguments of the model (built over trainable parameters only), not the
    CLI's automatic ``--optimizer`` (which would cover frozen parameters too).
    """

    def __init__(self, **kwargs) -> None:
        # jsonargparse 4.49+ warns about its own deprecations from inside LightningCLI: noise for mmft users
        os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
        # W&B runs offline unless the user configured it (WANDB_MODE, when set, always wins)
        if "WANDB_MODE" not in os.environ and not wandb_configured():
            os.environ["WANDB_MODE"] = "offline"
        kwargs.setdefault("model_class", AdapterModule)
        kwargs.setdefault("datamodule_class", LightningDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_callback", LoggingSaveConfigCallback)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        self.run_folder_lock: RunFolderLock | None = None
        try:
            super().__init__(**kwargs)
        finally:
            if self.run_folder_lock is not None:
                self.run_folder_lock.release()

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """As LightningCLI's, but model and data first: ``mmft fit --help`` starts with what a recipe is about."""
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.collate", "data.init_args.collate_fn", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """As LightningCLI's, but ``--ckpt_path`` without ``--config`` reads the run config stored in the
        checkpoint."""
        if args is not None and not isinstance(args, (list, tuple)):  # a dict or Namespace from Python
            super().parse_arguments(parser, args)
            return
        args = with_stored_config(list(sys.argv[1:] if args is None else args))
        self.given_configs = {Path(value).resolve() for value in _option_values(args, "--config")}
        self.config = parser.parse_args(args)

    def _parse_ckpt_path(self) -> None:
        """Nothing: LightningCLI would re-apply the checkpoint's model hyperparameters over the parsed config, so a
        ``--config`` or option given with ``--ckpt_path`` (test-time metrics, generation length) would be lost. mmft
        reads the checkpoint's whole run config only when no ``--config`` is given (:func:`with_stored_config`),
        under the options given."""

    def before_instantiate_classes(self) -> None:
        """Fill the output paths a config leaves unset from the run folder (:func:`mmft.run_folder.fill_run_paths`)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        adapter = config.model.init_args.get("adapter") if config.model.get("init_args") else None
        method = adapter.get("method") if adapter is not None else None
        # the --config files given (an include inside a file may be listed as its string; YAML text as None)
        files = [Path(os.fspath(path)) for path in config.get("config") or []
                 if path is not None and not isinstance(path, str)]
        # the run is named after the files given on the command line, not the recipes they include
        given = [f for f in files if f.resolve() in getattr(self, "given_configs", ())] or files
        add_default_callbacks(config.trainer)
        fill_run_paths(config.trainer, given, method)

    # validate / test print mmft's per-task table instead of Lightning's, which repeats epoch-level metrics under
    # every dataloader's column
    def before_validate(self) -> None:
        self.config_init["validate"]["verbose"] = False
        self._warn_if_untrained()

    def after_validate(self) -> None:
        self._print_results("val")

    def before_test(self) -> None:
        self.config_init["test"]["verbose"] = False
        self._warn_if_untrained()

    def after_test(self) -> None:
        self._print_results("test")
        if self.trainer.is_global_zero:
            path = Path(self.trainer.default_root_dir) / RESULTS_FILE
            write_results(self.trainer.callback_metrics, "test", path, self.trainer.ckpt_path)
            print(f"every test number written to {path}", flush=True)

    def before_predict(self) -> None:
        self._warn_if_untrained()

    def _warn_if_untrained(self) -> None:
        merged = getattr(self.model, "adapter_config", True) is None  # adapter: null, a merged export
        if self.config_init[self.subcommand].get("ckpt_path") is None and not merged:
            rank_zero_warn(
                f"mmft {self.subcommand} without --ckpt_path uses the model as the config builds it, with untrained "
                "adapters: pass --ckpt_path <run>/checkpoints/last.ckpt to evaluate a trained one"
            )

    def _print_results(self, stage: str) -> None:
        if self.trainer.is_global_zero:
            counts = getattr(self.model, "eval_counts", {}).get(stage)
            print(results_table(self.trainer.callback_metrics, stage, counts), flush=True)

    def instantiate_classes(self) -> None:
        """As LightningCLI's, after taking the run folder's lock for a subcommand's run (:class:`RunFolderLock`),
        and an error raised inside a model's or DataModule's ``__init__`` (such as a missing checkpoint path)
        surfaces as itself: jsonargparse would bury it in a "does not validate against any of the Union subtypes"
        message."""
        root = str(self.config[self.subcommand].trainer.default_root_dir) if self.subcommand else None
        if root is not None and "://" not in root and is_main_process():
            self.run_folder_lock = RunFolderLock(root)
            self.run_folder_lock.acquire()
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if cause is error:
                raise
            raise cause from None


class ConfigReader(MMFTCLI):
    """The CLI's own parsing (``--config`` composition, subclasses, defaults, run-folder filling) without building
    anything: what a tool needs to read a run config exactly as ``mmft fit`` would."""

    def instantiate_classes(self) -> None:
        """Nothing is built."""

    def resolved(self) -> dict[str, Any]:
        """The parsed config as plain data."""
        return yaml.safe_load(self.parser.dump(self.config, skip_none=False))


def resolve_config(args: Sequence[str]) -> dict[str, Any]:
    """The run config that ``mmft fit <args>`` would run, as plain data with every default and output path filled."""
    return ConfigReader(args=list(args), run=False, save_config_callback=None).resolved()


def _option_values(args: Sequence[str], name: str) -> list[str]:
    """Every value of ``--name value`` / ``--name=value`` among ``args``, in order."""
    return [args[i + 1] if arg == name else arg[len(name) + 1:] for i, arg in enumerate(args)
            if (arg == name and i + 1 < len(args)) or arg.startswith(name + "=")]


def _option(args: Sequence[str], *names: str) -> str | None:
    """The value of the last ``--name value`` or ``--name=value`` among ``args``; "" for a bare flag."""
    found = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                found = args[i + 1] if i + 1 < len(args) else ""
            elif arg.startswith(name + "="):
                found = arg[len(name) + 1:]
    return found


def stored_run_config(ckpt_path: str | Path) -> str:
    """The run config (YAML text) saved in an mmft checkpoint."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise RunConfigError(f"--ckpt_path {path}: no such file")
    checkpoint = AtomicCheckpointIO().load_checkpoint(path)  # says clearly when the file is not a checkpoint
    if RUN_CONFIG_KEY not in checkpoint:
        raise RunConfigError(f"--ckpt_path {path} holds no run config (it was not saved by the mmft CLI): "
                             "pass the config it was trained with, --config FILE")
    return checkpoint[RUN_CONFIG_KEY]


def with_stored_config(args: list[str]) -> list[str]:
    """``args`` of a trainer subcommand with ``--ckpt_path`` and no ``--config``: the checkpoint's run config,
    checked as data (:mod:`mmft.stored_config`), inserted as the first ``--config`` (options after it still override
    it; ``--trainer.default_root_dir`` moves every output path with the run folder). Given ``--config`` files are the
    whole config: the stored one may name classes (a test-only callback, say) that the new run cannot import."""
    if not args or args[0] not in TRAINER_SUBCOMMANDS or _option(args, "--config", "-c") is not None:
        return args
    ckpt_path = _option(args, "--ckpt_path")
    if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry"):
        return args
    text = stored_run_config(ckpt_path)
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RunConfigError(f"--ckpt_path {ckpt_path}: its stored run config is not YAML ({error})") from None
    if not isinstance(config, dict):
        raise RunConfigError(f"--ckpt_path {ckpt_path}: its stored run config is not a mapping of settings")
    config = checked_stored_config(config, ckpt_path, _option(args, "--trainer.default_root_dir") or None)
    return [args[0], "--config", yaml.safe_dump(config, sort_keys=False), *args[1:]]


def usage() -> str:
    """``mmft --help``: what mmft is and its subcommands."""
    lines = [
        "usage: mmft SUBCOMMAND [options]   (mmft SUBCOMMAND --help for its options)",
        "",
        "mmft: parameter-efficient fine-tuning (LoRA, DoRA, VeRA, DVoRA) of vision-language models (LLaVA-style,",
        "VL-BART) on PyTorch Lightning. A run is a recipe plus a method overlay, e.g.",
        "  mmft fit --config configs/tiny/llava.yaml --config configs/methods/dora.yaml",
        "and writes everything under its run folder, trainer.default_root_dir (default runs/<recipe>_<method>).",
        "",
        "training and evaluation (LightningCLI; --config FILE ..., --ckpt_path CKPT alone reuses its run config):",
    ]
    summaries = {
        "fit": "train (and validate); resume with --ckpt_path",
        "validate": "score the validation sets",
        "test": "score the test sets and print one row per task",
        "predict": "write generated answers as JSON lines",
    }
    lines += [f"  {name:<18}{text}" for name, text in summaries.items()]
    lines += ["", "tools:"] + [f"  {name:<18}{text}" for name, (_, text) in TOOLS.items()]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mmft`` console script."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] in TOOLS:
        tool = importlib.import_module(TOOLS[argv[0]][0])
        sys.exit(tool.main(argv[1:]))
    try:
        MMFTCLI(args=args)
    except InputError as error:  # the user's configs, data, checkpoint or environment: the message alone
        sys.exit(f"mmft {argv[0]}: {error}")


if __name__ == "__main__":
    main()
