"""FSDP for bases larger than one device: FSDP2 (``torch.distributed.fsdp.fully_shard``) under Lightning's
``ModelParallelStrategy``, with adapter-only checkpoints.

Why FSDP2 rather than Lightning's ``FSDPStrategy`` (FSDP1): it shards every parameter on its own (a ``DTensor``), so
frozen base weights and trainable adapters share one unit without FSDP1's ``use_orig_params`` flat-parameter rules;
inside a unit's forward each layer sees its whole weight again, so DoRA's row norm of ``W + s B A`` is the full one;
and it runs on CPU processes (gloo), where Lightning refuses ``FSDPStrategy`` outright, so it is tested here.

:class:`AdapterFSDPStrategy` shards data-parallel over every process (no tensor parallelism: the adapters are not
written for it) and keeps mmft's checkpoint format: one file, written by rank 0, holding only the trainable tensors
gathered whole (an adapter is a few percent of a model; one file loads under any strategy, ``mmft export`` and
``load_from_checkpoint`` included), plus the fingerprint of the frozen base, which the module takes before sharding.
The frozen weights are never gathered for a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.optim import Optimizer

from mmft.adapters.base_weight import is_4bit
from mmft.errors import InputError

QUANTIZATION_KEY = "model.init_args.backbone.init_args.quantization"


class ShardingError(InputError, ValueError):
    """A model that FSDP cannot shard as configured; the message names the config key."""


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` has been applied to ``module`` or anything inside it."""
    return any(isinstance(m, FSDPModule) for m in module.modules())


def shard_model(model: nn.Module, mesh: DeviceMesh, units: Iterable[nn.Module]) -> None:
    """``fully_shard`` each of ``units`` (a unit's weights are gathered together, one unit at a time), then ``model``
    itself, which holds everything outside the units and is gathered for its ``forward`` and ``generate``. Refuses
    a 4-bit base: bitsandbytes keeps its quantization state beside the packed bytes, which FSDP would shard without
    it."""
    quantized = [name for name, param in model.named_parameters() if is_4bit(param)]
    if quantized:
        raise ShardingError(
            f"FSDP cannot shard a 4-bit (bitsandbytes) base ({len(quantized)} weights, e.g. {quantized[0]}): remove "
            f"{QUANTIZATION_KEY} to shard the bf16 base, or train the 4-bit base with strategy ddp (one copy per "
            "device)"
        )
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if hasattr(model, "generate"):  # transformers runs the vision tower from generate, outside the model's forward
        register_fsdp_forward_method(model, "generate")


class AdapterFSDPStrategy(ModelParallelStrategy):
    """FSDP2 data parallelism over all processes, with mmft's adapter-only single-file checkpoints (module docstring).

    The LightningModule shards itself in ``configure_model`` (:meth:`mmft.models.base.AdapterModule.configure_model`).
    """

    def __init__(self, process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend, timeout=timeout)

    def setup_environment(self) -> None:
        # one data-parallel mesh over every process of every node (Lightning's "auto" would take the node count)
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        """False, as DDP: the module is sharded (``configure_model``) before the checkpoint is read, and the
        DataModule learns where the epoch stopped before ``configure_optimizers`` builds the train loader (to count
        its steps); restored after setup, the resumed epoch would start again from its first batch."""
        return False

    @property
    def lightning_restore_optimizer(self) -> bool:
        return True

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The trainable tensors, gathered whole on rank 0 (empty elsewhere); frozen weights are left out unread."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return get_model_state_dict(self.model, options=options)

    def optimizer_state(self, optimizer: Optimizer) -> dict[str, Any]:
        """The optimizer state keyed by parameter name, gathered whole on rank 0 (empty elsewhere)."""
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps it
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.model, optimizer, options=options)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """The whole file on every rank, read by the checkpoint IO (mmft's refuses pickled code); the module checks
        its keys and fingerprint before :meth:`load_model_state_dict` shards its tensors."""
        return self.checkpoint_io.load_checkpoint(checkpoint_path, weights_only=weights_only)

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        options = StateDictOptions(full_state_dict=True, strict=False)  # frozen weights come from the config
        set_model_state_dict(self.model, checkpoint["state_dict"], options=options)

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        options = StateDictOptions(full_state_dict=True)
        for optimizer, state in zip(self.optimizers, checkpoint["optimizer_states"]):
            set_optimizer_state_dict(self.model, getattr(optimizer, "_optimizer", optimizer), state, options=options)

