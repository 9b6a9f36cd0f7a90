"""LLaVA-style visual instruction tuning with adapters on the language model: the LightningModule.

The network comes from a backbone builder (:mod:`mmft.models.llava_backbones`: a Hugging Face Llava checkpoint, a
``LlavaConfig`` for tiny runs, or a timm tower + projector + causal LM); this module applies the adapters, trains
and evaluates it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from PIL import Image
from torch import Tensor, nn
from torchmetrics import Metric

from mmft.adapters import AdapterConfig

from .base import AdapterModule, default_optimizer, no_split_layers
from .llava_backbones import BackboneConfigError, LlavaBackbone, find_language_model
from .llava_collate import LlavaCollate
from .lm_loss import next_token_loss
from .optim import ParamGroup, SchedulerCallable
from .templates import TemplateName
from .vision_dummy import dummy_vision_loss


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute a transformers model's layer activations in backward (non-reentrant, so frozen inputs are fine)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class LlavaModule(AdapterModule):
    """LLaVA-style fine-tuning: adapters on the language model, projector fully trained, vision tower frozen.

    Loss: next-token cross-entropy over the supervised tokens only (assistant replies and their end-of-turn
    token). Evaluation: greedy generation from the prompt-only view of the batch, scored with the task's metric.

    Args:
        backbone: where the network comes from (:class:`HFLlava`, :class:`LlavaFromConfig`, :class:`TimmLlava`).
        adapter: the adapter config; its targets must lie inside the language model. ``null``: no adapters, for
            evaluating a merged export (see :mod:`mmft.models.export`).
        template: conversation template of the collate (``vicuna_v1`` for LLaVA-1.5).
        max_length: longest training sequence, image tokens included.
        instructions: task -> instruction appended to each question (default: LLaVA-1.5's short-answer one for VQA
            tasks); see :class:`LlavaCollate`.
        pad_images_to_square: pad images with the mean colour before preprocessing (LLaVA-1.5).
        video_frames: the most frames a video brings, each fed as an image (the DataModule's ``num_frames``, or
            ``max_frames`` when it samples by fps); see :class:`LlavaCollate`.
        gradient_checkpointing: recompute the language model's activations in backward (less memory).
        max_new_tokens: generation length at evaluation.
        allow_base_mismatch: load checkpoints trained on another base or adapter config (see AdapterModule).
    """

    def __init__(
        self,
        backbone: LlavaBackbone,
        adapter: AdapterConfig | None,
        template: TemplateName = "vicuna_v1",
        max_length: int = 2048,
        instructions: dict[str, str] | None = None,
        pad_images_to_square: bool = True,
        video_frames: int = 8,
        gradient_checkpointing: bool = False,
        max_new_tokens: int = 16,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerCallable | None = None,
        param_groups: list[ParamGroup] | None = None,
        metrics: dict[str, Metric] | None = None,
        allow_base_mismatch: bool = False,
    ) -> None:
        super().__init__(adapter, optimizer, scheduler, param_groups, metrics, allow_base_mismatch)
        self.save_hyperparameters(logger=False)  # under the CLI: the model's config (see AdapterModule)
        built = backbone.build()
        self.attach_model(built.model)
        self._check_trainable()
        self.tokenizer = built.tokenizer
        self.base_model_name_or_path = built.name_or_path
        self.max_new_tokens = max_new_tokens
        self.collate = LlavaCollate(
            built.tokenizer,
            built.image_transform,
            built.num_image_tokens,
            template=template,
            max_length=max_length,
            instructions=instructions,
            pad_images_to_square=pad_images_to_square,
            video_frames=video_frames,
        )
        self.dummy_vision_inputs = {"pixel_values": built.image_transform([Image.new("RGB", (32, 32))])}
        if gradient_checkpointing:
            enable_activation_checkpointing(self.language_model)

    @property
    def language_model(self) -> nn.Module:
        """The language model inside ``self.model`` (``model.language_model`` for HF Llava, ``language_model``)."""
        return find_language_model(self.model)

    def fsdp_units(self) -> list[nn.Module]:
        """The language model's decoder layers only: the vision tower stays in the root unit, gathered on every rank
        at each forward, so a rank whose batch has no image does not skip the tower's collectives and hang."""
        return no_split_layers(self.language_model)

    def _check_trainable(self) -> None:
        report = self.adapter_report
        adapted = report.adapted + report.magnitude_only if report is not None else []
        outside = [n for n in adapted if ".language_model." not in f".{n}."]
        if outside:
            raise BackboneConfigError(
                f"model.init_args.adapter.target_modules matches modules outside the language model "
                f"(e.g. {outside[:3]}); restrict it, e.g. '.*language_model.*\\.(q_proj|v_proj)'"
            )
        vision = [n for n, p in self.model.named_parameters() if p.requires_grad and "vision_tower" in n.split(".")]
        if vision:
            raise BackboneConfigError(
                f"the vision tower must stay frozen, but {len(vision)} of its parameters are trainable "
                f"(e.g. {vision[0]}): check model.init_args.adapter.modules_to_save and bias"
            )

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        if "labels" not in batch:
            raise ValueError(
                f"training batch without labels (examples {batch['ids'][:3]}): training examples need an "
                "assistant reply as their last turn"
            )
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "pixel_values": batch.get("pixel_values")}
        loss = next_token_loss(self.model, inputs, batch["labels"], self.sharded)
        if batch.get("pixel_values") is None:  # text-only: the tower still runs, for the other ranks' sake
            loss = loss + dummy_vision_loss(self.model, self.dummy_vision_inputs)
        return loss

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], **options: Any) -> Any:
        """Greedy decoding from the batch's left-padded prompts (transformers' ``generate``; ``options`` such as
        ``output_logits=True, return_dict_in_generate=True`` pass through)."""
        settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": 1,
                    "pad_token_id": self.collate.pad_token_id, "eos_token_id": self.tokenizer.eos_token_id,
                    # sharded: every rank runs as many forwards as the longest answer needs
                    "synced_gpus": self.sharded, **options}
        return self.model.generate(input_ids=batch["prompt_input_ids"], attention_mask=batch["prompt_attention_mask"],
                                   pixel_values=batch.get("pixel_values"), **settings)

    def generate_answers(self, batch: dict[str, Any]) -> list[str]:
        output = self.generate(batch)
        answers = self.tokenizer.batch_decode(output[:, batch["prompt_input_ids"].shape[1] :], skip_special_tokens=True)
        return [answer.strip() for answer in answers]
