"""VL-BART (VL-Adapter, Sung et al. 2022; DoRA paper section 5.2): BART whose encoder reads the task text followed by
visual tokens from a frozen CLIP ResNet, fine-tuned on several image-text tasks at once with LoRA or DoRA.

Encoder input, as VL-Adapter's ``JointEncoder``: the text tokens get BART's token and position embeddings and its
``layernorm_embedding``; the visual tokens (36 per image, 72 for an NLVR2 pair) get the visual embedding
``LayerNorm(Linear(feature)) + image_order + grid_order`` (see :class:`VisualEmbedding`) and no text position; both
are concatenated (text first), dropped out together and run through BART's encoder layers with one attention mask.
The decoder generates the answer or caption (beam search at evaluation). This is VL-Adapter's layout, which HF's
``BartEncoder(inputs_embeds=...)`` cannot give: it would add text positions to the visual tokens and pass them
through ``layernorm_embedding``, so :meth:`VLBart.encode` runs the encoder's own modules itself.

Parts, names as in the module tree (what adapter patterns match):
    model.bart               transformers BartForConditionalGeneration (a local checkpoint, or a BartConfig)
    model.visual_embedding   feature_projection (Linear), layer_norm, image_order (Embedding)
    visual_encoder           frozen timm CNN + max-pool (absent when features are read from files)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torchmetrics import Metric

from mmft.adapters import AdapterConfig
from mmft.errors import InputError
from mmft.fsdp import ShardingError
from mmft.tasks import VLBART_PREFIXES, vlbart_metrics

from .base import AdapterModule
from .export import merged_copy, write_merged_config
from .optim import ParamGroup, SchedulerCallable
from .visual_features import FeatureStore, VisualConfig, VisualEncoder
from .vlbart_collate import IGNORE_INDEX, VLBartCollate

VISUAL_EMBEDDING_FILE = "visual_embedding.safetensors"
DEFAULT_MAX_IMAGES = 2  # NLVR2's image pair

MODEL_KEY = "model.init_args"


class VLBartConfigError(InputError, ValueError):
    """A VL-BART setting is missing or does not fit; the message names the config key."""


def default_vlbart_optimizer(params: Any) -> torch.optim.Optimizer:
    """VL-Adapter's optimizer: AdamW, lr 1e-3 (its LoRA/DoRA lr), weight decay 0.01, eps 1e-6."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, eps=1e-6)


class VisualEmbedding(nn.Module):
    """Visual features -> encoder tokens, as VL-T5's visual embedding (VL-Adapter, DoRA):
    ``LayerNorm(Linear(feature)) + image_order[k] + grid_order[t]`` for token t of the k-th image of an example
    (k = 0 for single-image tasks, 0 and 1 for an NLVR2 pair). ``grid_order`` is given by the caller: VL-T5 uses
    BART's own (frozen) token embeddings of the last vocabulary entries, read backwards (see :meth:`VLBart.encode`).
    VL-T5's box embedding is left out: CLIP grid features come with all-zero boxes, which makes it a learned
    constant, and the LayerNorm's bias is one already."""

    def __init__(self, feature_dim: int, d_model: int, max_images: int = 2, eps: float = 1e-5) -> None:
        super().__init__()
        self.feature_projection = nn.Linear(feature_dim, d_model)
        self.layer_norm = nn.LayerNorm(d_model, eps=eps)
        self.image_order = nn.Embedding(max_images, d_model)

    def forward(self, features: Tensor, image_counts: Tensor, grid_order: Tensor) -> tuple[Tensor, Tensor]:
        """``features [N, T, C]`` of all images of the batch in order, ``image_counts [B]`` (summing to N),
        ``grid_order [T, d_model]`` -> tokens ``[B, M * T, d_model]`` and their mask ``[B, M * T]``, M = the most
        images of one example (examples with fewer images are padded and masked)."""
        counts = image_counts.to(features.device)
        if int(counts.sum()) != features.shape[0]:
            raise ValueError(f"image_counts sum to {int(counts.sum())} but {features.shape[0]} images have features")
        batch, most = counts.numel(), int(counts.max())
        if most > self.image_order.num_embeddings:
            raise ValueError(
                f"an example has {most} images; the visual embedding knows {self.image_order.num_embeddings}"
            )
        example = torch.repeat_interleave(torch.arange(batch, device=counts.device), counts)
        first = torch.cumsum(counts, 0) - counts
        order = torch.arange(features.shape[0], device=counts.device) - first[example]
        tokens = self.layer_norm(self.feature_projection(features))
        tokens = tokens + self.image_order(order)[:, None, :] + grid_order.to(tokens.dtype)
        per_image = features.shape[1]
        out = tokens.new_zeros(batch, most, per_image, tokens.shape[-1])
        mask = torch.zeros(batch, most, per_image, dtype=torch.long, device=tokens.device)
        out[example, order] = tokens
        mask[example, order] = 1
        return out.flatten(1, 2), mask.flatten(1, 2)


class VLBart(nn.Module):
    """BART + visual embedding; takes visual features, not pixels (the frozen encoder lives beside it).

    Args:
        bart: a ``BartForConditionalGeneration``.
        feature_dim: channels of the visual features (2048 for CLIP ResNet-101).
        max_images: most images per example.
    """

    def __init__(self, bart: nn.Module, feature_dim: int, max_images: int = 2) -> None:
        super().__init__()
        self.bart = bart
        self.visual_embedding = VisualEmbedding(feature_dim, bart.config.d_model, max_images)

    @property
    def config(self) -> Any:
        return self.bart.config

    def grid_order(self, tokens_per_image: int) -> Tensor:
        """VL-T5's embedding of visual token t: row ``vocab_size - 1 - t`` of BART's (frozen) token embeddings."""
        weight = self.bart.get_input_embeddings().weight
        if tokens_per_image > weight.shape[0]:
            raise ValueError(f"{tokens_per_image} visual tokens per image but only {weight.shape[0]} token embeddings")
        return weight[weight.shape[0] - 1 - torch.arange(tokens_per_image, device=weight.device)]

    def encode(
        self, input_ids: Tensor, attention_mask: Tensor, visual_features: Tensor, image_counts: Tensor
    ) -> tuple[Any, Tensor]:
        """Encoder states over ``[text tokens, visual tokens]`` and the attention mask that covers both."""
        from transformers.masking_utils import create_bidirectional_mask
        from transformers.modeling_outputs import BaseModelOutput

        encoder = self.bart.get_encoder()
        text = encoder.embed_tokens(input_ids) + encoder.embed_positions(input_ids)
        text = encoder.layernorm_embedding(text)
        visual, visual_mask = self.visual_embedding(
            visual_features.to(text.dtype), image_counts, self.grid_order(visual_features.shape[1])
        )
        hidden = torch.cat([text, visual.to(text.dtype)], dim=1)
        mask = torch.cat([attention_mask.to(visual_mask.dtype), visual_mask], dim=1)
        hidden = F.dropout(hidden, p=encoder.dropout, training=self.training)
        layer_mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=mask)
        for layer in encoder.layers:
            if self.training and encoder.layerdrop > 0.0 and torch.rand([]) < encoder.layerdrop:
                continue
            hidden = layer(hidden, layer_mask)
        return BaseModelOutput(last_hidden_state=hidden), mask

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual_features: Tensor,
        image_counts: Tensor,
        labels: Tensor,
    ) -> Any:
        """Decoder logits for teacher forcing on ``labels`` (-100 = padding), BART's right shift from ``</s>``."""
        from transformers.models.bart.modeling_bart import shift_tokens_right

        encoded, mask = self.encode(input_ids, attention_mask, visual_features, image_counts)
        decoder_input_ids = shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
        return self.bart(
            encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=decoder_input_ids, use_cache=False
        )

    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, visual_features: Tensor, image_counts: Tensor, **kwargs: Any
    ) -> Tensor:
        """Generated decoder ids (``transformers`` ``generate`` over the joint encoder states)."""
        encoded, mask = self.encode(input_ids, attention_mask, visual_features, image_counts)
        return self.bart.generate(encoder_outputs=encoded, attention_mask=mask, **kwargs)


def load_visual_embedding(embedding: VisualEmbedding, path: str) -> None:
    """Load a visual embedding's weights from a safetensors file (strictly: every tensor, shapes included)."""
    from safetensors.torch import load_file

    file = Path(path).expanduser()
    if not file.is_file():
        raise VLBartConfigError(
            f"{MODEL_KEY}.visual_embedding={path!r}: no such file (a merged export's visual_embedding.safetensors)"
        )
    try:
        embedding.load_state_dict(load_file(file), strict=True)
    except RuntimeError as error:
        raise VLBartConfigError(f"{file} does not fit the visual embedding: {error}") from None


def load_tokenizer(path: str, key: str) -> Any:
    """A tokenizer from a local folder (no model hub)."""
    from transformers import AutoTokenizer

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise VLBartConfigError(f"{key}={path!r}: no such folder (a local tokenizer folder; no model hub is contacted)")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def bart_folder(path: str) -> Path:
    """The local BART checkpoint folder ``path``, checked to exist."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise VLBartConfigError(
            f"{MODEL_KEY}.bart={path!r}: no such folder (a local BART checkpoint, e.g. facebook/bart-base "
            "downloaded beforehand; no model hub is contacted)"
        )
    return folder


def build_bart(bart: str | dict[str, Any], tokenizer: Any, seed: int) -> nn.Module:
    """``BartForConditionalGeneration`` from a local checkpoint folder, or from ``BartConfig`` fields with random
    weights drawn from ``seed`` (special-token ids and, unless given, the vocabulary size from the tokenizer)."""
    from transformers import BartConfig, BartForConditionalGeneration

    if isinstance(bart, str):
        model = BartForConditionalGeneration.from_pretrained(bart_folder(bart), local_files_only=True)
    else:
        fields = {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "decoder_start_token_id": tokenizer.eos_token_id,
            "forced_eos_token_id": tokenizer.eos_token_id,
            **bart,
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = BartForConditionalGeneration(BartConfig(**fields))
    if model.config.vocab_size < len(tokenizer):
        raise VLBartConfigError(
            f"{MODEL_KEY}.bart: vocab_size {model.config.vocab_size} is smaller than the tokenizer "
            f"({len(tokenizer)} tokens)"
        )
    return model


class VLBartModule(AdapterModule):
    """VL-BART multitask fine-tuning: adapters on BART, visual embedding (and biases, LayerNorms as configured)
    trained fully, the visual encoder frozen.

    Loss: cross-entropy over each example's target tokens, averaged per example, then over the batch (VL-T5).
    Evaluation: beam search from the joint encoder states, scored with each task's metric (``metrics``; by default
    VQA accuracy for ``vqav2``, exact match for ``gqa`` and ``nlvr2``, CIDEr-D for ``coco_caption``).

    Args:
        bart: a local BART checkpoint folder (``facebook/bart-base``), or ``BartConfig`` fields for random weights.
        adapter: the adapter config; targets are BART modules (``model.bart...``). ``null``: no adapters, for
            evaluating a merged export (see :mod:`mmft.models.export`).
        tokenizer: a tokenizer folder; defaults to the ``bart`` folder.
        visual: the frozen visual encoder, or pre-extracted feature files (:class:`VisualConfig`).
        prefixes: task -> prefix of the encoder text (default: VL-Adapter's ``vqa: ``, ``gqa: ``, ``nlvr: ``,
            ``caption: ``, ...).
        max_length: longest encoder text in tokens, ``<s>`` and ``</s>`` included (VL-T5: 20).
        max_target_length: longest label sequence in tokens, the same way (VL-T5: 20).
        num_beams: beams of the beam search at evaluation.
        max_new_tokens: generation length at evaluation.
        max_images: most images per example (2: NLVR2); for video, the frames per video (the DataModule samples
            that many).
        seed: seed of the random weights (BART from a config, the visual embedding).
        visual_embedding: a safetensors file holding the visual embedding's weights (a merged export's
            ``visual_embedding.safetensors``), loaded over the random ones.
        allow_base_mismatch: load checkpoints trained on another base or adapter config (see AdapterModule).
    """

    def __init__(
        self,
        bart: str | dict[str, Any],
        adapter: AdapterConfig | None,
        tokenizer: str | None = None,
        visual: VisualConfig | None = None,
        prefixes: dict[str, str] | None = None,
        max_length: int = 20,
        max_target_length: int = 20,
        num_beams: int = 5,
        max_new_tokens: int = 20,
        max_images: int = DEFAULT_MAX_IMAGES,
        seed: int = 0,
        visual_embedding: str | None = None,
        optimizer: OptimizerCallable = default_vlbart_optimizer,
        scheduler: SchedulerCallable | None = None,
        param_groups: list[ParamGroup] | None = None,
        metrics: dict[str, Metric] | None = None,
        allow_base_mismatch: bool = False,
    ) -> None:
        super().__init__(adapter, optimizer, scheduler, param_groups,
                         vlbart_metrics() if metrics is None else metrics, allow_base_mismatch)
        self.save_hyperparameters(logger=False)  # under the CLI: the model's config (see AdapterModule)
        visual = VisualConfig() if visual is None else visual
        if isinstance(bart, str):
            bart_folder(bart)  # first: the setting a user of the recipe must set
        if tokenizer is None:
            if not isinstance(bart, str):
                raise VLBartConfigError(
                    f"{MODEL_KEY}.tokenizer is not set: a BART built from a config needs a tokenizer folder"
                )
            tokenizer = bart
        self.tokenizer = load_tokenizer(tokenizer, f"{MODEL_KEY}.tokenizer")
        self.base_model_name_or_path = bart if isinstance(bart, str) else None
        features = None
        if visual.features:
            features = FeatureStore(visual.features, visual)
            self.visual_encoder = None
            feature_dim = features.feature_dim
        else:
            self.visual_encoder = VisualEncoder(visual)
            feature_dim = self.visual_encoder.feature_dim
        bart_model = build_bart(bart, self.tokenizer, seed)
        positions = bart_model.config.max_position_embeddings
        for key, value in (("max_length", max_length), ("max_target_length", max_target_length)):
            if value > positions:
                raise VLBartConfigError(f"{MODEL_KEY}.{key}={value}: more tokens than the model has positions "
                                        f"({positions}): set it to {positions} or less")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = VLBart(bart_model, feature_dim, max_images)
        if visual_embedding is not None:
            load_visual_embedding(model.visual_embedding, visual_embedding)
        self.attach_model(model)
        self._check_trainable()
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.collate = VLBartCollate(
            self.tokenizer,
            VLBART_PREFIXES if prefixes is None else prefixes,
            max_length=max_length,
            max_target_length=max_target_length,
            image_transform=None if features is not None else self.visual_encoder.image_transform(),
            features=features,
            max_images=max_images,
        )

    def _check_trainable(self) -> None:
        report = self.adapter_report
        adapted = report.adapted + report.magnitude_only if report is not None else []
        outside = [n for n in adapted if not n.startswith("bart.")]
        if outside:
            raise VLBartConfigError(
                f"{MODEL_KEY}.adapter.target_modules matches modules outside BART (e.g. {outside[:3]}): the paper "
                "adapts BART's attention projections, e.g. '.*\\.(q_proj|v_proj)'"
            )

    def visual_features(self, batch: dict[str, Any]) -> Tensor:
        """The batch's visual features: read from files by the collate, or computed here from pixels."""
        if "visual_features" in batch:
            return batch["visual_features"]
        if "pixel_values" not in batch:
            raise ValueError(f"batch without images or visual features (examples {batch['ids'][:3]})")
        if self.visual_encoder is None:
            raise VLBartConfigError(
                f"the batch holds pixels but {MODEL_KEY}.visual.features is set (no encoder was built): use this "
                "model's collate"
            )
        return self.visual_encoder(batch["pixel_values"])

    def configure_model(self) -> None:
        """VL-BART is not sharded: BART-base fits on any device many times over, and its generation runs outside the
        network's ``forward``, where FSDP gathers weights."""
        if self.device_mesh is not None:
            raise ShardingError(
                "trainer.strategy: VL-BART does not run under FSDP (mmft.fsdp.AdapterFSDPStrategy); use strategy ddp"
            )

    def training_loss(self, batch: dict[str, Any]) -> Tensor:
        if "labels" not in batch:
            raise ValueError(
                f"training batch without labels (examples {batch['ids'][:3]}): training examples need an answer"
            )
        labels = batch["labels"]
        logits = self.model(
            batch["input_ids"], batch["attention_mask"], self.visual_features(batch), batch["image_counts"], labels
        ).logits
        per_token = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        supervised = (labels != IGNORE_INDEX).sum(dim=1).clamp_min(1)
        return (per_token.sum(dim=1) / supervised).mean()

    @classmethod
    def fixed_video_frames(cls, init_args: dict[str, Any]) -> int:
        return int(init_args.get("max_images", DEFAULT_MAX_IMAGES))

    @torch.no_grad()
    def write_merged(self, folder: Path, final: Path) -> None:
        """``bart/``: the merged BART in the transformers layout with its tokenizer; ``visual_embedding.safetensors``:
        the trained visual embedding; ``mmft_merged.yaml`` points the recipe at both."""
        from safetensors.torch import save_file

        merged = merged_copy(self.model)
        merged.bart.save_pretrained(folder / "bart")
        self.tokenizer.save_pretrained(folder / "bart")
        state = {name: tensor.contiguous() for name, tensor in merged.visual_embedding.state_dict().items()}
        save_file(state, folder / VISUAL_EMBEDDING_FILE, metadata={"format": "pt"})
        write_merged_config(folder, {"bart": str(final / "bart"), "tokenizer": str(final / "bart"),
                                     "visual_embedding": str(final / VISUAL_EMBEDDING_FILE)})

    def generate_answers(self, batch: dict[str, Any]) -> list[str]:
        output = self.model.generate(
            batch["input_ids"],
            batch["attention_mask"],
            self.visual_features(batch),
            batch["image_counts"],
            num_beams=self.num_beams,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
        )
        return [answer.strip() for answer in self.tokenizer.batch_decode(output, skip_special_tokens=True)]
