"""AdapterModule: what every mmft model family shares, whatever its backbone.

- adapters from an `AdapterConfig` applied to the family's network (``self.model``), everything else frozen;
- optimizer and schedule over the trainable parameters only, in named groups (e.g. the projector's own lr);
- checkpoints that hold the trainable parameters only, loaded strictly against them, plus a fingerprint of the frozen
  base and the adapter config they were trained with (loading under another base is an error that names what
  differs; ``allow_base_mismatch=True`` overrides it), written atomically (:mod:`mmft.checkpoint_io`), and (built
  from a config) the model's config, so ``load_from_checkpoint(path)`` rebuilds the module;
- dropout randomness derived from (seed, rank, step), so ``fit --ckpt_path`` replays an uninterrupted run exactly;
- a generate-and-score evaluation: one metric per validation/test dataloader, chosen by the batch's task, logged as
  ``<stage>/<task>/<MetricClass>`` plus ``<stage>/average``.

A family subclass builds its network and collate, calls :meth:`attach_model`, and implements
:meth:`training_loss` and :meth:`generate_answers`. Its collate returns dicts that carry, besides its tensors,
``ids``, ``tasks``, ``references`` and ``categories`` (one entry per example); evaluation batches hold one task each.

A metric's ``update(preds, references)`` also receives ``ids`` and ``categories`` when its signature names them
(MMBench's circular groups come from the ids, POPE's splits from the categories). A metric whose ``compute`` returns
a dict (several numbers, e.g. per split) names its headline number in ``headline``: that one is logged as
``<stage>/<task>/<MetricClass>`` and averaged, every entry as ``<stage>/<task>/<MetricClass>/<key>``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torchmetrics import Metric

from data_modules.records import Example
from mmft.adapters import AdapterConfig, AdapterReport, apply_adapters, frozen_weights_hash
from mmft.checkpoint_io import install_atomic_checkpoint_io
from mmft.errors import InputError
from mmft.fsdp import is_sharded, shard_model
from mmft.tasks import default_metric

from .optim import ParamGroup, SchedulerCallable, build_param_groups


def batch_metadata(examples: list[Example]) -> dict[str, list]:
    """The keys every family's collate returns beside its tensors: what the base module scores and writes."""
    return {
        "ids": [e.id for e in examples],
        "tasks": [e.task for e in examples],
        "references": [list(e.references) for e in examples],
        "categories": [e.category for e in examples],
        "prompts": [e.prompt for e in examples],
    }


def metric_context(metric: Metric, batch: dict[str, Any]) -> dict[str, list]:
    """The per-example lists among ``ids``, ``categories`` and ``prompts`` that ``metric.update`` takes by name."""
    parameters = inspect.signature(metric.update).parameters
    return {name: batch[name] for name in ("ids", "categories", "prompts") if name in parameters}


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW without weight decay (LLaVA-1.5's setting), lr 2e-4 (its adapter lr)."""
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)


FINGERPRINT_KEY = "mmft"
# adapter settings that change how training runs, not what the trained tensors mean: they may differ on load
TRAINING_ONLY_FIELDS = ("dropout", "detach_norm", "dora_recompute")
# config entries that say how or where a model was loaded, not what it is
VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "use_cache"}


def no_split_layers(root: nn.Module) -> list[nn.Module]:
    """The layers inside ``root`` that its transformers models name in ``_no_split_modules`` (decoder and encoder
    layers): the natural FSDP units."""
    names = {name for module in root.modules() for name in getattr(module, "_no_split_modules", None) or ()}
    return [module for module in root.modules() if type(module).__name__ in names]


def compile_layers(layers: list[nn.Module]) -> None:
    """``torch.compile`` each layer in place (regional compilation): same-class layers share one compiled graph, and
    the cache is large enough that training, evaluation and a few row lengths each keep theirs."""
    if not layers:
        raise ValueError("compile: the model has no decoder layers to compile")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in layers:
        layer.compile()


def require_embedding_grads(model: nn.Module) -> None:
    """Make the input embeddings' output need a gradient (transformers' ``enable_input_require_grads``), so that
    FSDP reduces the first decoder layer's gradients at the same point of backward on every rank: on a rank whose
    batch has no image the layer's input comes from frozen weights only, FSDP then reduces it at the end of backward,
    after the root unit, and the ranks' collectives no longer match (gloo: "Received data size doesn't match")."""
    transformers_model = next((m for m in model.modules() if hasattr(m, "enable_input_require_grads")), None)
    if transformers_model is not None:
        transformers_model.enable_input_require_grads()


class ExportError(ValueError):
    """The module cannot be exported as a merged model; the message says why and what to do instead."""


class CheckpointMismatchError(InputError, RuntimeError):
    """A checkpoint's parameters, base model or adapter config are not those of the configured model."""


def _stable(config: Any) -> Any:
    """A config dict without the entries in VOLATILE_CONFIG_KEYS, recursively (sub-configs are dicts too)."""
    if isinstance(config, dict):
        return {k: _stable(v) for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}
    return config


def config_hash(model: nn.Module) -> str | None:
    """SHA-256 of a transformers-style ``model.config`` (its ``to_dict()``); None for a model without one."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    text = json.dumps(_stable(config.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"field (checkpoint X, this model Y)"`` for each base or adapter field that differs; the base's
    ``name_or_path`` is informative only (a moved folder holds the same model)."""
    differences = []
    for field in ("model_class", "config_sha256", "weights_sha256"):
        old, new = saved.get("base", {}).get(field), current["base"][field]
        if old != new:
            differences.append(f"base.{field} (checkpoint {old}, this model {new})")
    old_adapter, new_adapter = saved.get("adapter", {}), current["adapter"]
    for field in sorted(set(old_adapter) | set(new_adapter)):
        if field not in TRAINING_ONLY_FIELDS and old_adapter.get(field) != new_adapter.get(field):
            differences.append(f"adapter.{field} (checkpoint {old_adapter.get(field)!r}, this model "
                               f"{new_adapter.get(field)!r})")
    return differences


class AdapterModule(LightningModule):
    """Base LightningModule of the mmft model families (see the module docstring).

    Args:
        adapter: which adapter, where (``model.adapter`` in YAML). ``None`` (``adapter: null``) builds the network
            without adapters and trains nothing: the way to evaluate a model whose adapters are merged (an export's
            ``mmft_merged.yaml`` sets it).
        optimizer: called with the trainable parameter groups.
        scheduler: called as ``scheduler(optimizer, total_steps)``; stepped every optimizer step.
        param_groups: parameters with their own lr / weight decay; the rest use the optimizer's.
        metrics: task -> torchmetrics Metric scoring generated answers (``update(answers, references)``), e.g.
            ``{vqav2: {class_path: mmft.metrics.VQAAccuracy}}``; each eval dataloader gets its own copy. A task
            named here nowhere is scored by the task table's metric (:data:`mmft.tasks.TASKS`).
        allow_base_mismatch: load checkpoints whose base model or adapter config differ from this model's (a
            warning instead of an error), for users who mean it, e.g. adapters moved onto a re-quantised base.
    """

    def __init__(
        self,
        adapter: AdapterConfig | None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerCallable | None = None,
        param_groups: list[ParamGroup] | None = None,
        metrics: dict[str, Metric] | None = None,
        allow_base_mismatch: bool = False,
    ) -> None:
        super().__init__()
        self.adapter_config = adapter
        self.allow_base_mismatch = allow_base_mismatch
        self.base_model_name_or_path: str | None = None
        self.fingerprint: dict[str, Any] | None = None
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.param_groups = list(param_groups or [])
        self.task_metrics = dict(metrics or {})
        self.adapter_report: AdapterReport | None = None
        # frozen weights are rebuilt from the config, not read from checkpoints: loading checks keys itself
        self.strict_loading = False
        self._eval_metrics: dict[tuple[str, int], tuple[str, Metric]] = {}
        self._scored: dict[tuple[str, int], int] = {}
        self.eval_counts: dict[str, dict[str, tuple[int, int]]] = {}

    # ----------------------------------------------------------------------------------------------------------- model
    def attach_model(self, model: nn.Module) -> AdapterReport | None:
        """Adopt ``model`` as ``self.model``, apply the adapters (freezing the rest) and log the report; without an
        adapter config, freeze everything (a merged model, for evaluation)."""
        self.model = model
        if self.adapter_config is None:
            model.requires_grad_(False)
            rank_zero_info("no adapters (adapter: null): every parameter is frozen, for evaluation only")
            return None
        self.adapter_report = apply_adapters(model, self.adapter_config)
        # adapters train in fp32 even over a half-precision base (master weights, as PEFT's autocast_adapter_dtype)
        for param in model.parameters():
            if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
                param.data = param.data.float()
        rank_zero_info(str(self.adapter_report))
        self.fingerprint = None
        return self.adapter_report

    def base_fingerprint(self) -> dict[str, Any]:
        """What checkpoints record about what they were trained on: the base model (class, path, config hash, a
        hash of sampled frozen weights) and the adapter config. Computed once: the base is frozen."""
        if self.fingerprint is None:
            model = self.model
            self.fingerprint = {
                "base": {
                    "model_class": type(model).__qualname__,
                    "name_or_path": self.base_model_name_or_path,
                    "config_sha256": config_hash(model),
                    "weights_sha256": frozen_weights_hash(model),
                },
                "adapter": asdict(self.adapter_config) if self.adapter_config is not None else None,
            }
        return self.fingerprint

    def write_merged(self, folder: Path, final: Path) -> None:
        """Write the network with its adapters merged into ``folder``, which will be renamed to ``final`` (paths
        written into it name ``final``); :func:`mmft.models.export.export_merged` calls it. A family whose network
        other tools can load overrides it."""
        raise ExportError(f"{type(self).__name__} has no merged format: export its PEFT adapter instead")

    @classmethod
    def fixed_video_frames(cls, init_args: dict[str, Any]) -> int | None:
        """The frames per video that a module built with ``init_args`` fixes (its collate's ``video_frames``), found
        without building it, for tools that read a config (``mmft optimize``); None: ``data.num_frames`` decides."""
        return None

    def fsdp_units(self) -> list[nn.Module]:
        """The submodules FSDP shards as units of their own (each one's weights gathered together, one at a time)."""
        return no_split_layers(self.model)

    @property
    def sharded(self) -> bool:
        """Whether FSDP shards the network (every rank must then run the same forwards, generation included)."""
        return is_sharded(self.model)

    def configure_model(self) -> None:
        """Under :class:`mmft.fsdp.AdapterFSDPStrategy` (a device mesh is set), shard the network with FSDP2, after
        fingerprinting the frozen base while its weights are still whole; other strategies leave it as it is."""
        if self.device_mesh is None or self.sharded:
            return
        self.base_fingerprint()
        require_embedding_grads(self.model)
        shard_model(self.model, self.device_mesh["data_parallel"], self.fsdp_units())

    def trainable_state_keys(self) -> list[str]:
        """State-dict keys of the trainable parameters: exactly what a checkpoint holds."""
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        """Mean loss over the supervised tokens of ``batch``."""
        raise NotImplementedError

    def generate_answers(self, batch: dict[str, Any]) -> list[str]:
        """One generated answer per example of ``batch``."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        install_atomic_checkpoint_io(self.trainer.strategy)

    # -------------------------------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        if self.adapter_config is None:
            raise RuntimeError(
                "model.init_args.adapter is null (a merged model): there is nothing to train; evaluate it with "
                "mmft test / validate / predict, or set an adapter to fine-tune it further"
            )
        report = self.adapter_report
        if report is None:
            raise RuntimeError(f"{type(self).__name__} never called attach_model()")
        for logger in self.loggers:
            logger.log_hyperparams(
                {
                    "adapter": asdict(self.adapter_config),
                    "trainable_params": report.trainable_params,
                    "total_params": report.total_params,
                    "trainable_percent": report.trainable_percent,
                }
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout masks come from a seed fixed by (run seed, rank, micro-batch number): a run resumed with
        # --ckpt_path draws the same masks as an uninterrupted one, whatever ran in between (validation, loaders).
        accumulate = self.trainer.accumulate_grad_batches
        micro_batch = self.trainer.global_step * accumulate + batch_idx % accumulate
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed(seed + 1_000_003 * self.global_rank + 7_919 * micro_batch)

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> Tensor | None:
        if batch is None:  # every sample of the batch was skipped (on_error="skip")
            return None
        loss = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def configure_optimizers(self) -> Any:
        groups = build_param_groups(self, self.param_groups, key="model.init_args.param_groups")
        optimizer = self.optimizer_factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------------ checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.trainable_state_keys())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[FINGERPRINT_KEY] = self.base_fingerprint()
        # Built from a config (LightningCLI, or ``instantiate_module``), the hyperparameters are that config as plain
        # data, and ``load_from_checkpoint(path)`` rebuilds the module from them. Built in Python, they are live
        # objects that a ``weights_only`` load refuses: such a checkpoint is loaded into a module built by hand.
        if "_instantiator" not in checkpoint.get("hyper_parameters", {}):
            checkpoint.pop("hyper_parameters", None)
            checkpoint.pop("hparams_name", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_fingerprint(checkpoint.get(FINGERPRINT_KEY))
        expected = set(self.trainable_state_keys())
        found = set(checkpoint.get("state_dict", {}))
        if found != expected:
            missing, unexpected = sorted(expected - found), sorted(found - expected)
            raise CheckpointMismatchError(
                "the checkpoint does not hold exactly this model's trainable parameters "
                f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}). "
                "Load it with the config (adapter settings, model) it was trained with."
            )

    def _check_fingerprint(self, saved: dict[str, Any] | None) -> None:
        if saved is None:
            rank_zero_warn("the checkpoint has no base-model fingerprint (written before mmft recorded one): it "
                           "cannot be checked against this model's base and adapter config")
            return
        differences = fingerprint_differences(saved, self.base_fingerprint())
        if not differences:
            return
        trained_on = saved.get("base", {}).get("name_or_path")
        message = (
            f"the checkpoint was trained on another base model or adapter config (trained on {trained_on!r}, this "
            f"model's base is {self.base_model_name_or_path!r}); differing: {'; '.join(differences)}"
        )
        if self.allow_base_mismatch:
            rank_zero_warn(f"{message}. Loading anyway: model.init_args.allow_base_mismatch is true")
            return
        raise CheckpointMismatchError(
            f"{message}. Load it with the config it was trained with, or set "
            "model.init_args.allow_base_mismatch: true if you mean to apply it to this base"
        )

    # ------------------------------------------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score("val", batch, dataloader_idx)

    def test_step(self, batch: dict[str, Any] | None, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._score("test", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: dict[str, Any] | None, batch_idx: int, dataloader_idx: int = 0) -> list[dict]:
        if batch is None:
            return []
        answers = self.generate_answers(batch)
        return [
            {"id": id_, "task": task, "answer": answer}
            for id_, task, answer in zip(batch["ids"], batch["tasks"], answers)
        ]

    def _score(self, stage: str, batch: dict[str, Any] | None, dataloader_idx: int) -> None:
        if batch is None:
            return
        task = batch["tasks"][0]
        key = (stage, dataloader_idx)
        if key not in self._eval_metrics:
            metric = self._metric_for(task)
            if metric is None:
                raise KeyError(
                    f"no metric for task {task!r} ({stage} dataloader {dataloader_idx}): add it to "
                    f"model.init_args.metrics, e.g. {{{task}: {{class_path: mmft.metrics.VQAAccuracy}}}}, or to "
                    "the task table (mmft/tasks.py)"
                )
            self._eval_metrics[key] = (task, metric.to(self.device))
        expected_task, metric = self._eval_metrics[key]
        if any(t != expected_task for t in batch["tasks"]):
            raise ValueError(
                f"{stage} dataloader {dataloader_idx} mixes tasks {sorted(set(batch['tasks']))}: "
                "each evaluation dataloader must hold one task"
            )
        for id_, references in zip(batch["ids"], batch["references"]):
            if not references:
                raise ValueError(f"{stage} example {id_!r} ({task}) has no references to score against")
        metric.update(self.generate_answers(batch), batch["references"], **metric_context(metric, batch))
        self._scored[key] = self._scored.get(key, 0) + len(batch["ids"])

    def _scored_of_total(self, stage: str, indices: list[int], labels: list[str]) -> dict[str, tuple[int, int]]:
        """Per task label: examples scored and examples in total (scored + skipped for bad media, as counted by a
        DataModule with ``pop_eval_skips``), summed over processes."""
        datamodule = getattr(self.trainer, "datamodule", None)
        skipped = datamodule.pop_eval_skips(stage) if hasattr(datamodule, "pop_eval_skips") else {}
        counts = torch.tensor(
            [[self._scored.pop((stage, idx), 0), skipped.get(idx, 0)] for idx in indices], device=self.device
        )
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        return {label: (int(scored), int(scored + skips)) for label, (scored, skips) in zip(labels, counts)}

    def _add_unscored_tasks(self, stage: str) -> None:
        """A metric entry for every evaluation dataloader the DataModule has (``eval_tasks``), also one whose every
        sample was skipped and so never reached ``_score``: it is reported as unscored, never left out."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "eval_tasks"):
            return
        for idx, task in enumerate(datamodule.eval_tasks(stage)):
            metric = self._metric_for(task) if (stage, idx) not in self._eval_metrics else None
            if metric is not None:
                self._eval_metrics[(stage, idx)] = (task, metric.to(self.device))

    def _metric_for(self, task: str) -> Metric | None:
        """A fresh copy of the recipe's metric for ``task``, else the task table's, else None."""
        if task in self.task_metrics:
            return copy.deepcopy(self.task_metrics[task])
        return default_metric(task)

    def _log_metrics(self, stage: str) -> None:
        self._add_unscored_tasks(stage)
        entries = sorted((idx, task, metric) for (s, idx), (task, metric) in self._eval_metrics.items() if s == stage)
        if not entries:
            return
        names = [task for _, task, _ in entries]
        values = []
        labels = [task if names.count(task) == 1 else f"{task}_{idx}" for idx, task, _ in entries]
        self.eval_counts[stage] = self._scored_of_total(stage, [idx for idx, _, _ in entries], labels)
        unscored = [label for label in labels if self.eval_counts[stage][label][0] == 0]
        for (idx, task, metric), label in zip(entries, labels):
            name = f"{stage}/{label}/{type(metric).__name__}"
            if label in unscored:  # NaN: shown as unscored (0/N), never as a score of 0
                value = torch.tensor(float("nan"), device=self.device)
            else:
                value = metric.compute()
            if isinstance(value, dict):
                for key, number in value.items():
                    self.log(f"{name}/{key}", number, add_dataloader_idx=False, sync_dist=False)
                value = value[metric.headline]
            self.log(name, value, add_dataloader_idx=False, sync_dist=False)
            values.append(torch.as_tensor(value, dtype=torch.float32, device=self.device))
            metric.reset()
        if unscored:
            rank_zero_warn(f"{stage}: no sample of {', '.join(unscored)} was scored (all skipped); the {stage} "
                           "average is left undefined (NaN) rather than taken over fewer tasks")
        self.log(f"{stage}/average", torch.stack(values).mean(), add_dataloader_idx=False, prog_bar=True)
