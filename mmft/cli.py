"""The ``mmft`` command: LightningCLI with fit / validate / test / predict over any mmft model and DataModule.

    mmft fit --config configs/tiny/llava_dora.yaml
    mmft test --config configs/tiny/llava_dora.yaml --ckpt_path runs/tiny_llava_dora/checkpoints/last.ckpt
    mmft test --config configs/tiny/llava_dora.yaml --config configs/eval/llava15_benchmarks.yaml --ckpt_path ...
    mmft fit --config configs/llava_dora.yaml --config my_paths.yaml --print_config

Models and DataModules are chosen by ``class_path`` in the config (subclass mode). The model's collate is handed
to the DataModule (``collate_fn``) once both exist, so a config never names it. Several ``--config`` files compose
in order, later ones overriding earlier ones.
"""

from __future__ import annotations

import json
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_warn

from mmft.files import write_json_atomic
from mmft.models.base import AdapterModule


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


class LoggingSaveConfigCallback(SaveConfigCallback):
    """Saves ``config.yaml`` in the log dir (overwriting: a rerun in the same folder must not abort) and logs the
    whole run config to every logger (W&B shows it as the run's config)."""

    def save_config(self, trainer: Trainer, pl_module: AdapterModule, stage: str) -> None:
        config = json.loads(self.parser.dump(self.config, skip_none=False, format="json"))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


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
        super().__init__(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.collate", "data.init_args.collate_fn", apply_on="instantiate")

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
        """As LightningCLI's, but an error raised inside a model's or DataModule's ``__init__`` (such as a missing
        checkpoint path) surfaces as itself: jsonargparse would bury it in a "does not validate against any of the
        Union subtypes" message."""
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = error
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if cause is error:
                raise
            raise cause from None


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mmft`` console script."""
    MMFTCLI(args=args)


if __name__ == "__main__":
    main()
