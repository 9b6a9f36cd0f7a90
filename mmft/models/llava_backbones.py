"""Where a LLaVA-style network comes from: the backbone builders behind ``model.init_args.backbone``.

Three backbones (``model.init_args.backbone`` in YAML):

- :class:`HFLlava`: a Hugging Face Llava checkpoint folder (e.g. ``llava-hf/llava-1.5-7b-hf`` downloaded beforehand),
  loaded with ``LlavaForConditionalGeneration.from_pretrained``, offline;
- :class:`LlavaFromConfig`: a ``LlavaConfig`` built from YAML sizes (CLIP vision + Llama text by default) with random
  weights drawn from a fixed seed: the embedded tiny default;
- :class:`TimmLlava`: a timm vision tower + LLaVA's ``mlp2x_gelu`` projector + any Hugging Face causal LM.

All three expose the same module names (``...vision_tower``, ``...multi_modal_projector``, ``...language_model``), so
one adapter config (targets restricted to ``language_model``, projector in ``modules_to_save``) fits all of them.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmft.adapters import QuantizationConfig, quantize_linear_layers
from mmft.adapters.quantize import quantization_device
from mmft.errors import InputError

from .llava_collate import HFImageTransform, ImageTransform, TimmImageTransform
from .templates import IMAGE_PLACEHOLDER

BACKBONE_KEY = "model.init_args.backbone.init_args"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneConfigError(InputError, ValueError):
    """A backbone setting is missing or points nowhere; the message names the config key."""


@dataclass
class BuiltLlava:
    """What a backbone hands the LightningModule."""

    model: nn.Module
    tokenizer: Any
    image_transform: ImageTransform
    num_image_tokens: int
    name_or_path: str | None = None


class LlavaBackbone(ABC):
    """Where the LLaVA network, its tokenizer and its image preprocessing come from."""

    @abstractmethod
    def build(self) -> BuiltLlava: ...


def _local_folder(path: str | None, key: str, what: str) -> Path:
    if path is None:
        raise BackboneConfigError(f"{key} is not set: set it to {what}")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise BackboneConfigError(f"{key}={path!r}: no such folder; set it to {what} (no model hub is contacted)")
    return folder


def _dtype(name: str | None, key: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise BackboneConfigError(f"{key}={name!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def _image_token_id(tokenizer: Any, source: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise BackboneConfigError(f"the tokenizer of {source} has no {IMAGE_PLACEHOLDER} token")
    return token_id


def find_language_model(model: nn.Module) -> nn.Module:
    """The language model inside a LLaVA network (``model.language_model`` for HF Llava, ``language_model``)."""
    return next(m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == "language_model")


def quantize_language_model(model: nn.Module, quantization: QuantizationConfig | None) -> None:
    """QLoRA's base: every linear layer of the language model in 4 bits (quantized on the GPU when there is one);
    the vision tower, the projector and the output head stay as they are."""
    if quantization is not None:
        language_model = find_language_model(model)
        quantize_linear_layers(language_model, quantization, skip=["lm_head"],
                               device=quantization_device(language_model))


def _clip_tokens_per_image(vision_config: Any, select_strategy: str) -> int:
    grid = vision_config.image_size // vision_config.patch_size
    return grid * grid + (1 if select_strategy == "full" else 0)


class HFLlava(LlavaBackbone):
    """A local Hugging Face Llava checkpoint (model, tokenizer and image processor in one folder).

    Args:
        path: the checkpoint folder, e.g. a download of ``llava-hf/llava-1.5-7b-hf``.
        dtype: load the frozen weights in this dtype (``bfloat16`` halves memory; train with precision
            ``bf16-mixed``: adapters and the projector are kept in fp32).
        quantization: a 4-bit language model (QLoRA / QDoRA), quantized from the loaded weights.
    """

    def __init__(self, path: str | None = None, dtype: str | None = None,
                 quantization: QuantizationConfig | None = None) -> None:
        self.path = path
        self.dtype = dtype
        self.quantization = quantization

    def build(self) -> BuiltLlava:
        from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

        folder = _local_folder(
            self.path, f"{BACKBONE_KEY}.path", "a local Llava checkpoint folder (e.g. llava-hf/llava-1.5-7b-hf)"
        )
        model = LlavaForConditionalGeneration.from_pretrained(
            folder, dtype=_dtype(self.dtype, f"{BACKBONE_KEY}.dtype"), local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        token_id = _image_token_id(tokenizer, str(folder))
        if token_id != model.config.image_token_id:
            raise BackboneConfigError(
                f"{folder}: the tokenizer's {IMAGE_PLACEHOLDER} id {token_id} differs from the model's "
                f"image_token_id {model.config.image_token_id}"
            )
        tokens = _clip_tokens_per_image(model.config.vision_config, model.config.vision_feature_select_strategy)
        quantize_language_model(model, self.quantization)
        return BuiltLlava(model, tokenizer, HFImageTransform(processor), tokens, str(self.path))


class LlavaFromConfig(LlavaBackbone):
    """A ``LlavaForConditionalGeneration`` with random weights drawn from ``seed``, sized by YAML.

    The frozen weights are a function of this config alone, which is why checkpoints need not store them.

    Args:
        tokenizer: a tokenizer folder (must know ``<image>``); the text vocabulary is sized to fit it.
        vision_config: ``CLIPVisionConfig`` fields (or another vision ``model_type``).
        text_config: ``LlamaConfig`` fields (or another text ``model_type``).
        seed: the seed of the random weights.
        quantization: a 4-bit language model (QLoRA / QDoRA), quantized from the random weights.
    """

    def __init__(
        self,
        tokenizer: str,
        vision_config: dict[str, Any],
        text_config: dict[str, Any],
        projector_hidden_act: str = "gelu",
        vision_feature_layer: int = -2,
        vision_feature_select_strategy: str = "default",
        seed: int = 0,
        quantization: QuantizationConfig | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.vision_config = dict(vision_config)
        self.text_config = dict(text_config)
        self.projector_hidden_act = projector_hidden_act
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.seed = seed
        self.quantization = quantization

    def build(self) -> BuiltLlava:
        from transformers import AutoTokenizer, CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration

        folder = _local_folder(self.tokenizer, f"{BACKBONE_KEY}.tokenizer", "a tokenizer folder")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_token_id = _image_token_id(tokenizer, str(folder))
        vision = {"model_type": "clip_vision_model", **self.vision_config}
        text = {
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            **self.text_config,
        }
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=image_token_id,
            projector_hidden_act=self.projector_hidden_act,
            vision_feature_layer=self.vision_feature_layer,
            vision_feature_select_strategy=self.vision_feature_select_strategy,
        )
        tokens = _clip_tokens_per_image(config.vision_config, self.vision_feature_select_strategy)
        config.image_seq_length = tokens
        if config.text_config.vocab_size < len(tokenizer):
            raise BackboneConfigError(
                f"{BACKBONE_KEY}.text_config.vocab_size={config.text_config.vocab_size} is smaller than the "
                f"tokenizer ({len(tokenizer)} tokens)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = LlavaForConditionalGeneration(config)
        quantize_language_model(model, self.quantization)
        size = config.vision_config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return BuiltLlava(model, tokenizer, HFImageTransform(processor), tokens, None)


class MlpProjector(nn.Module):
    """LLaVA-1.5's ``mlp2x_gelu``: Linear, GELU, Linear (names as in transformers' LlavaMultiModalProjector)."""

    def __init__(self, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, text_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_dim, text_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


def timm_data_config(tower: nn.Module) -> dict[str, Any]:
    """The tower's timm data config, with the input size a ViT was built for (``img_size`` is not reflected in its
    pretrained config)."""
    import timm

    config = timm.data.resolve_data_config({}, model=tower)
    img_size = getattr(getattr(tower, "patch_embed", None), "img_size", None)
    if img_size is not None:
        config["input_size"] = (config["input_size"][0], *img_size)
    return config


def load_llava_projector(projector: MlpProjector, path: str | Path, key: str) -> None:
    """Load LLaVA's ``mm_projector.bin`` (stage-1 pretraining output: ``model.mm_projector.{0,2}.{weight,bias}``)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise BackboneConfigError(f"{key}={str(path)!r}: no such file (LLaVA's stage-1 mm_projector.bin)")
    state = torch.load(file, map_location="cpu", weights_only=True)
    names = {"0": "linear_1", "2": "linear_2"}
    renamed = {}
    for name, tensor in state.items():
        match = re.fullmatch(r"(?:.*\.)?mm_projector\.([02])\.(weight|bias)", name)
        if match is None:
            raise BackboneConfigError(f"{file}: unexpected key {name!r}; expected LLaVA's model.mm_projector.{{0,2}}.*")
        renamed[f"{names[match.group(1)]}.{match.group(2)}"] = tensor
    try:
        projector.load_state_dict(renamed, strict=True)
    except RuntimeError as error:
        raise BackboneConfigError(f"{file} does not fit the projector: {error}") from None


class VisionLanguageModel(nn.Module):
    """timm vision tower -> projector -> causal LM, with visual tokens scattered over the ``<image>`` positions.

    The image token id may lie outside the language model's vocabulary (it is added to the tokenizer, not to the
    embeddings): those positions are embedded as token 0 and then overwritten by visual features.
    """

    def __init__(
        self, vision_tower: nn.Module, language_model: nn.Module, image_token_id: int, feature_layer: int
    ) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.language_model = language_model
        self.image_token_id = image_token_id
        self.feature_layer = feature_layer
        vision_tower.eval()
        with torch.no_grad():
            probe = torch.zeros(1, *timm_data_config(vision_tower)["input_size"])
            features = self._vision_features(probe)
        self.num_image_tokens = features.shape[1]
        self.multi_modal_projector = MlpProjector(features.shape[2], language_model.config.hidden_size)

    def _vision_features(self, pixel_values: Tensor) -> Tensor:
        # NCHW drops prefix (CLS) tokens of ViTs, as LLaVA's "default" feature selection; CNNs give NCHW anyway
        (grid,) = self.vision_tower.forward_intermediates(
            pixel_values, indices=[self.feature_layer], intermediates_only=True, output_fmt="NCHW", stop_early=True
        )
        return grid.flatten(2).transpose(1, 2)

    def train(self, mode: bool = True) -> VisionLanguageModel:
        """The frozen tower always runs in eval mode: its BatchNorm statistics and dropout must not change."""
        super().train(mode)
        self.vision_tower.eval()
        return self

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """Projected visual tokens ``[images, tokens, text hidden]`` (as transformers' Llava names it)."""
        weight = next(self.vision_tower.parameters())
        return self.multi_modal_projector(self._vision_features(pixel_values.to(weight.dtype)))

    def embed(self, input_ids: Tensor, pixel_values: Tensor | None) -> Tensor:
        is_image = input_ids == self.image_token_id
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        if pixel_values is None:
            return embeds
        features = self.get_image_features(pixel_values)
        if features.shape[0] * features.shape[1] != int(is_image.sum()):
            raise ValueError(
                f"{int(is_image.sum())} image tokens in the batch but {features.shape[0]} images x "
                f"{features.shape[1]} visual tokens"
            )
        return embeds.masked_scatter(is_image.unsqueeze(-1), features.to(embeds.dtype))

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None, **kwargs: Any
    ) -> Any:
        return self.language_model(
            inputs_embeds=self.embed(input_ids, pixel_values), attention_mask=attention_mask, **kwargs
        )

    def generate(
        self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """Prompt ids followed by the generated ids (the layout of transformers' ``generate`` with input_ids)."""
        new = self.language_model.generate(
            inputs_embeds=self.embed(input_ids, pixel_values), attention_mask=attention_mask, **kwargs
        )
        return torch.cat([input_ids, new], dim=1)


class TimmLlava(LlavaBackbone):
    """A timm vision tower + ``mlp2x_gelu`` projector + a Hugging Face causal LM.

    Args:
        vision_tower: a timm model name, e.g. ``vit_large_patch14_clip_336.openai``.
        language_model: a local causal-LM folder, or a config dict (``model_type`` plus sizes) for random weights.
        tokenizer: a tokenizer folder; defaults to the language model's folder. ``<image>`` is added if missing.
        vision_checkpoint: a local weights file for the tower (timm ``pretrained_cfg_overlay={"file": ...}``);
            ``None`` keeps timm's random init.
        projector_checkpoint: LLaVA's stage-1 ``mm_projector.bin``; ``None`` initialises the projector randomly.
        vision_kwargs: more ``timm.create_model`` arguments (e.g. ``img_size``, ``depth``).
        feature_layer: which block's output feeds the projector (-2: the second-to-last, as LLaVA).
        dtype: dtype of the frozen weights.
        seed: seed of every randomly initialised weight (projector included).
        quantization: a 4-bit language model (QLoRA / QDoRA), quantized from the loaded weights.
    """

    def __init__(
        self,
        vision_tower: str,
        language_model: str | dict[str, Any],
        tokenizer: str | None = None,
        vision_checkpoint: str | None = None,
        projector_checkpoint: str | None = None,
        vision_kwargs: dict[str, Any] | None = None,
        feature_layer: int = -2,
        dtype: str | None = None,
        seed: int = 0,
        quantization: QuantizationConfig | None = None,
    ) -> None:
        self.vision_tower = vision_tower
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.vision_checkpoint = vision_checkpoint
        self.projector_checkpoint = projector_checkpoint
        self.vision_kwargs = dict(vision_kwargs or {})
        self.feature_layer = feature_layer
        self.dtype = dtype
        self.seed = seed
        self.quantization = quantization

    def build(self) -> BuiltLlava:
        import timm
        from tokenizers import AddedToken
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        dtype = _dtype(self.dtype, f"{BACKBONE_KEY}.dtype")
        if isinstance(self.language_model, str):
            lm_folder = _local_folder(self.language_model, f"{BACKBONE_KEY}.language_model", "a causal LM folder")
            tokenizer_path = self.tokenizer or str(lm_folder)
        else:
            lm_folder = None
            if self.tokenizer is None:
                raise BackboneConfigError(
                    f"{BACKBONE_KEY}.tokenizer is not set: a language model built from a config needs a "
                    "tokenizer folder"
                )
            tokenizer_path = self.tokenizer
        folder = _local_folder(tokenizer_path, f"{BACKBONE_KEY}.tokenizer", "a tokenizer folder")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) in (None, tokenizer.unk_token_id):
            tokenizer.add_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)], special_tokens=True)
        vision_kwargs = dict(self.vision_kwargs)
        if self.vision_checkpoint is not None:
            checkpoint = Path(self.vision_checkpoint).expanduser()
            if not checkpoint.is_file():
                raise BackboneConfigError(f"{BACKBONE_KEY}.vision_checkpoint={self.vision_checkpoint!r}: no such file")
            overlay = {**vision_kwargs.get("pretrained_cfg_overlay", {}), "file": str(checkpoint)}
            vision_kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            tower = timm.create_model(self.vision_tower, num_classes=0, **vision_kwargs)
            if lm_folder is not None:
                lm = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=dtype, local_files_only=True)
            else:
                lm_config = dict(self.language_model)
                lm_config.setdefault("vocab_size", len(tokenizer))
                lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**lm_config))
            model = VisionLanguageModel(tower, lm, _image_token_id(tokenizer, str(folder)), self.feature_layer)
        if self.projector_checkpoint is not None:
            load_llava_projector(
                model.multi_modal_projector, self.projector_checkpoint, f"{BACKBONE_KEY}.projector_checkpoint"
            )
        if dtype is not None:
            model.vision_tower.to(dtype)
            model.language_model.to(dtype)
        quantize_language_model(model, self.quantization)
        data_config = timm_data_config(tower)
        transform = timm.data.create_transform(**data_config, is_training=False)
        image_transform = TimmImageTransform(transform, data_config["mean"])
        name = str(lm_folder) if lm_folder is not None else None
        return BuiltLlava(model, tokenizer, image_transform, model.num_image_tokens, name)
