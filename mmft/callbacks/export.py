"""Export the trained adapter in the PEFT folder format when fit ends."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from mmft.adapters import adapter_config_of, peft_tensors, save_adapters


class PeftExport(Callback):
    """At the end of ``fit``, write ``pl_module.model``'s adapter with ``mmft.adapters.save_adapters``.

    The folder loads with ``peft.PeftModel.from_pretrained(base_model, folder)`` (or ``mmft.adapters.load_adapters``).
    ``dirpath`` defaults to ``<trainer.default_root_dir>/adapter`` (the run folder); ``base_model_name_or_path`` is taken from the module's
    attribute of that name when it has one (e.g. the Llava checkpoint folder).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if adapter_config_of(pl_module.model).method_spec.full_weights:
            rank_zero_info("method 'full' has no PEFT adapter folder: the checkpoints hold the trained weights, and "
                           "`mmft export` writes the whole fine-tuned model")
            return
        tensors = peft_tensors(pl_module.model)  # on every rank: a model sharded by FSDP gathers its adapter here
        if not trainer.is_global_zero:
            return
        folder = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "adapter"
        save_adapters(pl_module.model, folder, getattr(pl_module, "base_model_name_or_path", None), tensors)
        rank_zero_info(f"adapter exported in the PEFT format to {folder}")
