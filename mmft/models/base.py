"""AdapterModule: what every mmft model family shares, whatever its backbone.

- adapters from an `AdapterConfig` applied to the family's network (``self.model``), everything else frozen;
- optimizer and schedule over the trainable parameters only, in named groups (e.g. the projector's own lr);
- checkpoints that hold the trainable parameters only, loaded strictly against them;
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
import inspect
import os
from dataclasses import asdict
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import Metric

from data_modules.records import Example
from mmft.adapters import AdapterConfig, AdapterReport, apply_adapters

from .optim import ParamGroup, SchedulerCallable, build_param_groups


def batch_metadata(examples: list[Example]) -> dict[str, list]:
    """The keys every family's collate returns beside its tensors: what the base module scores and writes."""
    return {
        "ids": [e.id for e in examples],
        "tasks": [e.task for e in examples],
        "references": [list(e.references) for e in examples],
        "categories": [e.category for e in examples],
    }


def metric_context(metric: Metric, batch: dict[str, Any]) -> dict[str, list]:
    """The per-example lists among ``ids`` and ``categories`` that ``metric.update`` takes by name."""
    parameters = inspect.signature(metric.update).parameters
    return {name: batch[name] for name in ("ids", "categories") if name in parameters}


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW without weight decay (LLaVA-1.5's setting), lr 2e-4 (its adapter lr)."""
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's parameters are not exactly the trainable parameters of the configured model."""


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
            ``{vqav2: {class_path: mmft.metrics.VQAAccuracy}}``; each eval dataloader gets its own copy.
    """

    def __init__(
        self,
        adapter: AdapterConfig | None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerCallable | None = None,
        param_groups: list[ParamGroup] | None = None,
        metrics: dict[str, Metric] | None = None,
    ) -> None:
        super().__init__()
        self.adapter_config = adapter
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.param_groups = list(param_groups or [])
        self.task_metrics = dict(metrics or {})
        self.adapter_report: AdapterReport | None = None
        # frozen weights are rebuilt from the config, not read from checkpoints: loading checks keys itself
        self.strict_loading = False
        self._eval_metrics: dict[tuple[str, int], tuple[str, Metric]] = {}

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
        return self.adapter_report

    def trainable_state_keys(self) -> list[str]:
        """State-dict keys of the trainable parameters: exactly what a checkpoint holds."""
        return [name for name, param in self.named_parameters() if param.requires_grad]

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        """Mean loss over the supervised tokens of ``batch``."""
        raise NotImplementedError

    def generate_answers(self, batch: dict[str, Any]) -> list[str]:
        """One generated answer per example of ``batch``."""
        raise NotImplementedError

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected = set(self.trainable_state_keys())
        found = set(checkpoint.get("state_dict", {}))
        if found != expected:
            missing, unexpected = sorted(expected - found), sorted(found - expected)
            raise CheckpointMismatchError(
                "the checkpoint does not hold exactly this model's trainable parameters "
                f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}). "
                "Load it with the config (adapter settings, model) it was trained with."
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
            if task not in self.task_metrics:
                raise KeyError(
                    f"no metric for task {task!r} ({stage} dataloader {dataloader_idx}): add it to "
                    f"model.init_args.metrics, e.g. {{{task}: {{class_path: mmft.metrics.VQAAccuracy}}}}"
                )
            self._eval_metrics[key] = (task, copy.deepcopy(self.task_metrics[task]).to(self.device))
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

    def _log_metrics(self, stage: str) -> None:
        entries = sorted((idx, task, metric) for (s, idx), (task, metric) in self._eval_metrics.items() if s == stage)
        if not entries:
            return
        names = [task for _, task, _ in entries]
        values = []
        for idx, task, metric in entries:
            label = task if names.count(task) == 1 else f"{task}_{idx}"
            value = metric.compute()
            name = f"{stage}/{label}/{type(metric).__name__}"
            if isinstance(value, dict):
                for key, number in value.items():
                    self.log(f"{name}/{key}", number, add_dataloader_idx=False, sync_dist=False)
                value = value[metric.headline]
            self.log(name, value, add_dataloader_idx=False, sync_dist=False)
            values.append(torch.as_tensor(value, dtype=torch.float32, device=self.device))
            metric.reset()
        self.log(f"{stage}/average", torch.stack(values).mean(), add_dataloader_idx=False, prog_bar=True)
