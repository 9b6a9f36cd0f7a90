"""LLaVA's own layout as a backbone of :class:`~mmft.models.vlm.VisionLanguageModule`: a timm vision tower, LLaVA-1.5's
``mlp2x_gelu`` projector and any Hugging Face causal LM, with visual tokens scattered over the ``<image>`` positions.

The network is :class:`VisionLanguageModel`. Its processor, :class:`TimmLlavaProcessor`, is a transformers processor
like any family's: it renders the chat template (vicuna_v1 by default, as LLaVA-1.5 trains), expands each
``<image>`` to the tower's visual tokens (a fixed count) and runs :class:`TimmImageProcessor` (the tower's timm eval
transform, images padded to square with the mean colour first, LLaVA-1.5's ``image_aspect_ratio: pad``). So the
module's collate, length checks, turn dropping and generation are the ones every family uses.

A merged export needs a transformers class; this layout has none, so it exports its PEFT adapter instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import BatchFeature
from transformers.image_processing_utils import ImageProcessingMixin
from transformers.image_utils import make_flat_list_of_images
from transformers.processing_utils import ProcessorMixin

from data_modules.media import pad_to_square
from mmft.adapters import QuantizationConfig

from .templates import IMAGE_PLACEHOLDER
from .vlm import enable_activation_checkpointing
from .vlm_backbones import (
    BACKBONE_KEY,
    BackboneConfigError,
    BuiltVisionLanguage,
    VisionLanguageBackbone,
    dtype_named,
    local_folder,
    quantize_language_model,
)
from .vlm_families import template_text


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
    embeddings): those positions are embedded as token 0 and then overwritten by visual features. It answers the
    questions the module asks of a transformers model: ``get_decoder()``, ``get_encoder(modality="image")``,
    ``get_image_features``, ``generation_config``, ``generate``.
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

    def get_decoder(self) -> nn.Module:
        return self.language_model

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return self.vision_tower

    @property
    def generation_config(self) -> Any:
        return self.language_model.generation_config

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any]) -> None:
        """Activation checkpointing of the language model (the tower is frozen and runs without gradients)."""
        enable_activation_checkpointing(self.language_model)

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


class TimmImageProcessor(ImageProcessingMixin):
    """A timm tower's eval transform (resize, crop, normalise) as a transformers image processor, images padded to
    square with the mean colour first when ``do_pad`` (LLaVA-1.5)."""

    model_input_names = ["pixel_values"]

    def __init__(self, data_config: dict[str, Any] | None = None, do_pad: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_config = dict(data_config or {})
        self.do_pad = do_pad
        self._transform = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if k != "_transform"}

    @property
    def fill(self) -> tuple[int, ...]:
        return tuple(int(255 * m) for m in self.data_config["mean"])

    def __call__(self, images: Any, return_tensors: str | None = None, **kwargs: Any) -> BatchFeature:
        import timm

        if self._transform is None:
            self._transform = timm.data.create_transform(**self.data_config, is_training=False)
        images = [image.convert("RGB") if isinstance(image, Image.Image) else image
                  for image in make_flat_list_of_images(images)]
        if self.do_pad:
            images = [pad_to_square(image, self.fill) for image in images]
        return BatchFeature({"pixel_values": torch.stack([self._transform(image) for image in images])},
                            tensor_type=return_tensors)


class TimmLlavaProcessor(ProcessorMixin):
    """Tokenizer + :class:`TimmImageProcessor` + chat template; each ``<image>`` becomes ``num_image_tokens``
    tokens (the tower's grid, fixed by its input size)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, num_image_tokens: int = 1,
                 chat_template: str | None = None, **kwargs: Any) -> None:
        self.image_token = IMAGE_PLACEHOLDER
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.num_image_tokens = num_image_tokens
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        return self.image_token * self.num_image_tokens


class TimmLlava(VisionLanguageBackbone):
    """A timm vision tower + ``mlp2x_gelu`` projector + a Hugging Face causal LM (LLaVA-1.5's own layout).

    Args:
        vision_tower: a timm model name, e.g. ``vit_large_patch14_clip_336.openai``.
        language_model: a local causal-LM folder, or a config dict (``model_type`` plus sizes) for random weights.
        tokenizer: a tokenizer folder; defaults to the language model's folder. ``<image>`` is added if missing.
        vision_checkpoint: a local weights file for the tower (timm ``pretrained_cfg_overlay={"file": ...}``);
            ``None`` keeps timm's random init.
        projector_checkpoint: LLaVA's stage-1 ``mm_projector.bin``; ``None`` initialises the projector randomly.
        vision_kwargs: more ``timm.create_model`` arguments (e.g. ``img_size``, ``depth``).
        feature_layer: which block's output feeds the projector (-2: the second-to-last, as LLaVA).
        chat_template: ``vicuna_v1`` (LLaVA-1.5's training format), a Jinja chat template with image parts, or
            ``null`` for the tokenizer's own.
        pad_images_to_square: pad images with the mean colour before the transform (LLaVA-1.5).
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
        chat_template: str | None = "vicuna_v1",
        pad_images_to_square: bool = True,
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
        self.chat_template = chat_template
        self.pad_images_to_square = pad_images_to_square
        self.dtype = dtype
        self.seed = seed
        self.quantization = quantization

    def _tokenizer(self) -> tuple[Any, Path | None]:
        """The tokenizer (``<image>`` added as a special token when missing) and the language model's folder."""
        from tokenizers import AddedToken
        from transformers import AutoTokenizer

        if isinstance(self.language_model, str):
            lm_folder = local_folder(self.language_model, f"{BACKBONE_KEY}.language_model", "a causal LM folder")
            tokenizer_path = self.tokenizer or str(lm_folder)
        else:
            lm_folder = None
            if self.tokenizer is None:
                raise BackboneConfigError(
                    f"{BACKBONE_KEY}.tokenizer is not set: a language model built from a config needs a "
                    "tokenizer folder"
                )
            tokenizer_path = self.tokenizer
        folder = local_folder(tokenizer_path, f"{BACKBONE_KEY}.tokenizer", "a tokenizer folder")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER) in (None, tokenizer.unk_token_id):
            tokenizer.add_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)], special_tokens=True)
        return tokenizer, lm_folder

    def _vision_kwargs(self) -> dict[str, Any]:
        vision_kwargs = dict(self.vision_kwargs)
        if self.vision_checkpoint is not None:
            checkpoint = Path(self.vision_checkpoint).expanduser()
            if not checkpoint.is_file():
                raise BackboneConfigError(f"{BACKBONE_KEY}.vision_checkpoint={self.vision_checkpoint!r}: no such file")
            overlay = {**vision_kwargs.get("pretrained_cfg_overlay", {}), "file": str(checkpoint)}
            vision_kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
        return vision_kwargs

    def build(self) -> BuiltVisionLanguage:
        import timm
        from transformers import AutoConfig, AutoModelForCausalLM

        dtype = dtype_named(self.dtype, f"{BACKBONE_KEY}.dtype")
        tokenizer, lm_folder = self._tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            tower = timm.create_model(self.vision_tower, num_classes=0, **self._vision_kwargs())
            if lm_folder is not None:
                lm = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=dtype, local_files_only=True)
            else:
                lm_config = dict(self.language_model)
                lm_config.setdefault("vocab_size", len(tokenizer))
                lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**lm_config))
            image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
            model = VisionLanguageModel(tower, lm, image_token_id, self.feature_layer)
        if self.projector_checkpoint is not None:
            load_llava_projector(
                model.multi_modal_projector, self.projector_checkpoint, f"{BACKBONE_KEY}.projector_checkpoint"
            )
        if dtype is not None:
            model.vision_tower.to(dtype)
            model.language_model.to(dtype)
        quantize_language_model(model, self.quantization)
        image_processor = TimmImageProcessor(timm_data_config(tower), do_pad=self.pad_images_to_square)
        template = (template_text(self.chat_template) if self.chat_template is not None
                    else getattr(tokenizer, "chat_template", None))
        if not template:
            raise BackboneConfigError(f"{BACKBONE_KEY}.chat_template is null but the tokenizer has no chat template: "
                                      "set it to vicuna_v1 or a Jinja template")
        processor = TimmLlavaProcessor(image_processor, tokenizer, model.num_image_tokens, chat_template=template)
        name = str(lm_folder) if lm_folder is not None else None
        return BuiltVisionLanguage(model, processor, video_as_images=True, name_or_path=name)
