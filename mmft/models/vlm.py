"""Fine-tuning any transformers image-text-to-text model with adapters: the LightningModule.

The network and its processor come from a backbone (:mod:`mmft.models.vlm_backbones`): any checkpoint folder
``AutoModelForImageTextToText`` loads, a tiny model of a family built from its config, or LLaVA's timm tower +
projector + causal LM (:mod:`mmft.models.timm_llava`). Prompts come from the processor's chat template
(:class:`~mmft.models.chat_collate.ChatCollate`), where a reply ends from the template and the generation config
(:mod:`mmft.models.reply_end`); a prefix-LM processor that takes a question and an answer itself (PaliGemma) is
given those instead (:class:`~mmft.models.prefix_collate.PrefixCollate`). The language model, vision tower and
projector come from the model's structure (:mod:`mmft.models.vlm_parts`). Adapters go wherever ``target_modules``
reach, the vision tower included.

Several processes: a rank whose batch has no image or video still runs the vision tower and projector
(:mod:`mmft.models.vision_dummy`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor, nn
from torchmetrics import Metric

from mmft.adapters import AdapterConfig

from .base import AdapterModule, compile_layers, default_optimizer, no_split_layers
from .chat_collate import TOKEN_TYPE_KEYS, ChatCollate
from .export import ExportError, dtype_name, merged_copy, write_merged_config
from .lm_loss import LossKernel, check_loss_kernel, next_token_loss
from .optim import ParamGroup, SchedulerCallable
from .packing import PACKED_LENGTHS, packed_position_ids, packing_problem
from .prefix_collate import PrefixCollate, prefix_reply_end, takes_suffix
from .reply_end import find_reply_end
from .varlen_attention import use_varlen_sdpa, varlen_arguments
from .vision_dummy import dummy_vision_loss
from .vlm_backbones import VisionLanguageBackbone
from .vlm_parts import find_parts

VISUAL_INPUTS = ("pixel_values", "pixel_values_videos")
COMPILED_LENGTH_MULTIPLE = 64


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute a transformers model's layer activations in backward (non-reentrant, so frozen inputs are fine)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class VisionLanguageModule(AdapterModule):
    """Adapters on a transformers image-text-to-text model, prompts from its chat template.

    Loss: next-token cross-entropy over the assistant replies and their end-of-turn token. Evaluation: greedy
    generation from the prompt view, scored with the task's metric.

    Args:
        backbone: :class:`HFVisionLanguage` (a local checkpoint), :class:`VisionLanguageFromConfig` (tiny) or
            :class:`TimmLlava` (a timm tower + projector + causal LM).
        adapter: the adapter config (targets may include the vision tower); ``null`` for a merged model.
        max_length: longest sequence, visual tokens included.
        instructions: task -> instruction appended to each question (see :class:`ChatCollate`).
        default_fps: frame rate assumed for videos whose frame times are unknown.
        gradient_checkpointing: recompute activations in backward (non-reentrant: frozen inputs are fine).
        max_new_tokens: generation length at evaluation.
        compile: ``torch.compile`` each decoder layer of the language model in place (regional compilation: the
            layers share one compiled graph, so compiling takes seconds, and the rest of the model stays eager).
        length_multiple: round every training row (padded or packed) up to a multiple of this many tokens, so
            compiled graphs are reused across batches (default: 64 with ``compile``, else 1).
        loss_kernel: how the head and cross-entropy run without the full logits: ``auto`` (Liger's fused kernel
            on a GPU when ``liger-kernel`` is installed, else chunks), ``chunked`` or ``liger``
            (:mod:`mmft.models.lm_loss`).
    """

    def __init__(
        self,
        backbone: VisionLanguageBackbone,
        adapter: AdapterConfig | None,
        max_length: int = 2048,
        instructions: dict[str, str] | None = None,
        default_fps: float = 1.0,
        gradient_checkpointing: bool = False,
        max_new_tokens: int = 16,
        compile: bool = False,
        length_multiple: int | None = None,
        loss_kernel: LossKernel = "auto",
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: SchedulerCallable | None = None,
        param_groups: list[ParamGroup] | None = None,
        metrics: dict[str, Metric] | None = None,
        allow_base_mismatch: bool = False,
    ) -> None:
        super().__init__(adapter, optimizer, scheduler, param_groups, metrics, allow_base_mismatch)
        self.save_hyperparameters(logger=False)
        built = backbone.build()
        self.parts = find_parts(built.model)
        rank_zero_info(f"mmft model parts (for target_modules / modules_to_save): {self.parts}")
        self.attach_model(built.model)
        self.processor = built.processor
        self.tokenizer = built.processor.tokenizer
        prefix_lm = takes_suffix(built.processor)  # PaliGemma: a prompt and an answer, no chat template
        self.reply_end = (prefix_reply_end(built.processor, built.model.generation_config) if prefix_lm else
                          find_reply_end(built.processor, built.model.generation_config,
                                         built.name_or_path or "the tiny model"))
        self.end_of_turn_id = self.reply_end.token_id
        self.base_model_name_or_path = built.name_or_path
        self.max_new_tokens = max_new_tokens
        check_loss_kernel(loss_kernel)
        self.loss_kernel = loss_kernel
        collate = PrefixCollate if prefix_lm else ChatCollate
        self.collate = collate(built.processor, built.video_as_images, max_length, instructions, default_fps,
                               reply_suffix=self.reply_end.appended)
        self.collate.packing_problem = packing_problem(built.model)
        use_varlen_sdpa(built.model)  # packed rows: attention per example, not over the whole row
        self.collate.length_multiple = length_multiple or (COMPILED_LENGTH_MULTIPLE if compile else 1)
        dummy = built.processor.image_processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")
        self.dummy_vision_inputs = {k: torch.as_tensor(v) for k, v in dummy.items()}
        if gradient_checkpointing:
            enable_activation_checkpointing(self.model)
        if compile:
            compile_layers(no_split_layers(self.model.get_decoder()))

    def fsdp_units(self) -> list[nn.Module]:
        """The language model's decoder layers (``get_decoder()`` finds it in every family): each a unit of FSDP's.
        The vision tower stays in the root unit, gathered at every forward: it runs on some ranks and not others
        (a text-only generation batch), or twice on one (images and a video), so units inside it would leave the
        ranks' collectives out of step and hang."""
        return no_split_layers(self.model.get_decoder())

    def _inputs(self, batch: dict[str, Any], prompt: bool) -> dict[str, Any]:
        prefix = "prompt_" if prompt else ""
        if PACKED_LENGTHS in batch:  # packed rows: attention confined to each example by positions and bounds
            inputs = {"input_ids": batch["input_ids"], "position_ids": packed_position_ids(self.model, batch),
                      **varlen_arguments(batch[PACKED_LENGTHS]), **batch["media"]}
        else:
            inputs = {"input_ids": batch[f"{prefix}input_ids"], "attention_mask": batch[f"{prefix}attention_mask"],
                      **batch["media"]}
        for key in TOKEN_TYPE_KEYS:
            if f"{prefix}{key}" in batch:
                inputs[key] = batch[f"{prefix}{key}"]
        return inputs

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        if "labels" not in batch:
            raise ValueError(
                f"training batch without labels (examples {batch['ids'][:3]}): training examples need an "
                "assistant reply as their last turn"
            )
        loss = next_token_loss(self.model, self._inputs(batch, prompt=False), batch["labels"], self.sharded,
                               kernel=self.loss_kernel)
        if not any(key in batch["media"] for key in VISUAL_INPUTS):
            loss = loss + dummy_vision_loss(self.model, self.dummy_vision_inputs)
        return loss

    @torch.no_grad()
    def generate(self, batch: dict[str, Any], **options: Any) -> Any:
        """Greedy decoding from the batch's left-padded prompts (transformers' ``generate``; ``options`` such as
        ``output_logits=True, return_dict_in_generate=True`` pass through)."""
        settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "num_beams": 1,
                    "pad_token_id": self.collate.pad_token_id, "eos_token_id": list(self.reply_end.stop_ids),
                    # sharded: every rank runs as many forwards as the longest answer needs
                    "synced_gpus": self.sharded, **options}
        return self.model.generate(**self._inputs(batch, prompt=True), **settings)

    def write_merged(self, folder: Path, final: Path) -> None:
        """The merged network in the transformers layout (base dtype, generation stopping where mmft's stops) and
        the processor mmft trained with, which the Auto classes load; ``mmft_merged.yaml`` points a recipe at it."""
        from transformers import PreTrainedModel

        if not isinstance(self.model, PreTrainedModel):
            raise ExportError(
                f"{type(self.model).__name__} (a timm tower + causal LM, TimmLlava) is not a transformers class: "
                "export its PEFT adapter instead (mmft export without --merged)"
            )
        merged = merged_copy(self.model)
        merged.generation_config.pad_token_id = self.collate.pad_token_id
        merged.generation_config.eos_token_id = self.end_of_turn_id
        merged.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        backbone = {"class_path": "mmft.models.HFVisionLanguage",
                    "init_args": {"path": str(final), "dtype": dtype_name(merged.dtype)}}
        write_merged_config(folder, {"backbone": backbone})

    def generate_answers(self, batch: dict[str, Any]) -> list[str]:
        new = self.generate(batch)[:, batch["prompt_input_ids"].shape[1]:]
        return [answer.strip() for answer in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
