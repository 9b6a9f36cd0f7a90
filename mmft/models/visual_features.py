"""VL-BART's visual features: a frozen timm CNN (CLIP ResNet-101 in VL-Adapter) whose last feature map is
adaptive-max-pooled to a ``grid x grid`` map of tokens (7x7 -> 6x6 = 36 tokens per image at 224 px).

The features come either from images, end to end during training (:class:`VisualEncoder` inside the model), or from
files written beforehand by ``mmft extract-features`` with the same :class:`VisualConfig` (read by
:class:`FeatureStore` in the collate). Both paths run the same code on the same weights, so they give the same
features; a feature file records the settings it was made with and is refused by a model configured differently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmft.errors import InputError

FEATURE_FORMAT = "mmft-visual-features-v1"
VISUAL_KEY = "model.init_args.visual"
# a video's entry holds the features of its stored frames, [frames, tokens, channels]; this entry beside it holds the
# rate at which those frames were taken (frames per second of video)
FPS_SUFFIX = "#fps"


class VisualFeatureError(InputError, ValueError):
    """A visual encoder setting, a feature file or an image's features are missing or do not fit the model."""


@dataclass
class VisualConfig:
    """Which frozen encoder makes the visual tokens, and how; one setting for training and feature extraction.

    Args:
        encoder: a timm model name; ``resnet101_clip`` is CLIP's ResNet-101 (VL-Adapter, DoRA paper section 5.2).
        checkpoint: a local weights file for the encoder, e.g. ``model.safetensors`` of timm's
            ``resnet101_clip.openai``; ``None`` keeps timm's random init drawn from ``seed`` (tiny models, tests).
        image_size: images are resized (shorter side, bicubic) and centre-cropped to this square size.
        grid: the last feature map is adaptive-max-pooled to ``grid x grid`` tokens.
        encoder_kwargs: more ``timm.create_model`` arguments (e.g. a tiny ResNet's ``channels``, ``output_stride``).
        features: pre-extracted feature files (``mmft extract-features``). When set, the model builds no
            encoder and reads each image's features by file name instead of decoding the image.
        seed: the seed of the random init when ``checkpoint`` is ``None``.
    """

    encoder: str = "resnet101_clip"
    checkpoint: str | None = None
    image_size: int = 224
    grid: int = 6
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    features: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise VisualFeatureError(f"{VISUAL_KEY}.image_size={self.image_size}: too small for a CNN")
        if self.grid < 1:
            raise VisualFeatureError(f"{VISUAL_KEY}.grid={self.grid}: must be a positive integer")
        if isinstance(self.features, str):
            self.features = [self.features]

    @property
    def tokens_per_image(self) -> int:
        return self.grid * self.grid

    def metadata(self) -> dict[str, str]:
        """What a feature file records about the settings that made it (safetensors metadata: str -> str)."""
        return {
            "format": FEATURE_FORMAT,
            "encoder": self.encoder,
            "checkpoint": self.checkpoint or "",
            "image_size": str(self.image_size),
            "grid": str(self.grid),
            "encoder_kwargs": json.dumps(self.encoder_kwargs, sort_keys=True),
            "seed": str(self.seed),
        }


def feature_key(image: Path | str) -> str:
    """The key of an image in feature files: its file name. COCO, GQA and NLVR2 image names are unique across
    those datasets, and VQAv2 and COCO Karpathy name the same COCO image identically, so they share features."""
    return Path(image).name


class VisualEncoder(nn.Module):
    """The frozen timm backbone plus the max-pool to ``grid x grid``: images ``[N, 3, S, S]`` -> ``[N, grid², C]``.

    Built with timm's ``features_only`` (the last stage, i.e. what ``forward_features`` returns for a CNN), which
    leaves out the unused classifier head (CLIP's attention pool: 13M parameters of ResNet-101's 56M). Always in eval
    mode and without gradients: ``train()`` cannot switch its BatchNorm layers to batch statistics.
    """

    def __init__(self, config: VisualConfig) -> None:
        super().__init__()
        import timm

        self.config = config
        kwargs = dict(config.encoder_kwargs)
        if config.checkpoint is not None:
            checkpoint = Path(config.checkpoint).expanduser()
            if not checkpoint.is_file():
                raise VisualFeatureError(
                    f"{VISUAL_KEY}.checkpoint={config.checkpoint!r}: no such file (a local weights file for "
                    f"{config.encoder}; no model hub is contacted)"
                )
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(checkpoint)})
        if not timm.is_model(config.encoder):
            raise VisualFeatureError(f"{VISUAL_KEY}.encoder={config.encoder!r} is not a timm model name")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.backbone = timm.create_model(config.encoder, features_only=True, out_indices=(-1,), **kwargs)
        self.feature_dim = int(self.backbone.feature_info.channels()[-1])
        self.data_config = timm.data.resolve_data_config({}, model=self.backbone)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> VisualEncoder:
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: Tensor) -> Tensor:
        weight = next(self.backbone.parameters())
        grid = self.backbone(pixel_values.to(weight.dtype))[-1]
        pooled = F.adaptive_max_pool2d(grid, self.config.grid)
        return pooled.flatten(2).transpose(1, 2)

    def image_transform(self) -> ImageTransform:
        """The preprocessing that matches this encoder (its normalisation, the configured size)."""
        return ImageTransform(self.config.image_size, self.data_config["mean"], self.data_config["std"],
                              self.data_config.get("interpolation", "bicubic"))


class ImageTransform:
    """CLIP's preprocessing: resize the shorter side to ``size``, centre-crop ``size x size``, normalise.

    PIL RGB images in, a ``[N, 3, size, size]`` float tensor out. A plain class so DataLoader workers can pickle it.
    """

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], interpolation: str = "bicubic") -> None:
        import timm

        self.size = size
        self.transform = timm.data.create_transform(
            input_size=(3, size, size), interpolation=interpolation, mean=tuple(mean), std=tuple(std), crop_pct=1.0,
            crop_mode="center", is_training=False,
        )

    def __call__(self, images: list) -> Tensor:
        return torch.stack([self.transform(image) for image in images])


class FeatureStore:
    """Per-image visual features from safetensors files written by ``mmft extract-features``.

    Every file must have been made with settings equal to ``config`` (encoder, checkpoint or seed, image size, grid,
    encoder arguments): a file made otherwise raises, naming the setting. Files are opened lazily in each process,
    so a store can be handed to DataLoader workers.
    """

    def __init__(self, files: Sequence[str | Path], config: VisualConfig) -> None:
        from safetensors import safe_open

        if not files:
            raise VisualFeatureError(f"{VISUAL_KEY}.features is empty: give at least one feature file")
        self.files = [Path(f).expanduser() for f in files]
        self.index: dict[str, int] = {}
        self.feature_dim: int | None = None
        expected = config.metadata()
        for number, path in enumerate(self.files):
            if not path.is_file():
                raise VisualFeatureError(
                    f"{VISUAL_KEY}.features: {path} not found (write it with mmft extract-features)"
                )
            with safe_open(str(path), framework="pt") as file:
                metadata = file.metadata() or {}
                _check_metadata(path, metadata, expected)
                dim = int(metadata["feature_dim"])
                if self.feature_dim not in (None, dim):
                    raise VisualFeatureError(f"{path}: feature_dim {dim} differs from {self.files[0]}'s")
                self.feature_dim = dim
                for key in file.keys():
                    if key in self.index:
                        raise VisualFeatureError(
                            f"image {key!r} has features in both {self.files[self.index[key]]} and {path}"
                        )
                    self.index[key] = number
        self.tokens_per_image = config.tokens_per_image
        self._handles: dict[int, Any] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __contains__(self, image: Path | str) -> bool:
        return feature_key(image) in self.index

    def get(self, image: Path | str, source: str = "") -> Tensor:
        """The ``[tokens, feature_dim]`` features of ``image`` (float32)."""
        return self._tensor(feature_key(image), image, "image", source).float()

    def get_video(self, video: Path | str, num_frames: int, span: tuple[float, float] | None = None,
                  source: str = "") -> Tensor:
        """``[num_frames, tokens, feature_dim]`` features of the frames a video example takes (float32): chosen among
        the stored frames by the rule that picks decoded frames (:func:`data_modules.media.sample_frame_indices`),
        so features stored for every frame give exactly the end-to-end features."""
        from data_modules.media import SpanOutsideVideo, sample_frame_indices

        key = feature_key(video)
        frames = self._tensor(key, video, "video", source)
        fps = float(self._tensor(key + FPS_SUFFIX, video, "video", source))
        try:
            indices = sample_frame_indices(frames.shape[0], fps, num_frames, span)
        except SpanOutsideVideo as error:
            where = f"{source}: " if source else ""
            raise VisualFeatureError(f"{where}{video}: {error}") from None
        return frames[torch.from_numpy(indices)].float()

    def _tensor(self, key: str, media: Path | str, kind: str, source: str) -> Tensor:
        from safetensors import safe_open

        number = self.index.get(key)
        if number is None:
            where = f"{source}: " if source else ""
            raise VisualFeatureError(
                f"{where}no features for {kind} {key!r} ({media}) in {', '.join(map(str, self.files))}: extract them "
                f"with mmft extract-features over its folder"
            )
        if number not in self._handles:
            self._handles[number] = safe_open(str(self.files[number]), framework="pt")
        return self._handles[number].get_tensor(key)


def _check_metadata(path: Path, metadata: dict[str, str], expected: dict[str, str]) -> None:
    if metadata.get("format") != FEATURE_FORMAT:
        raise VisualFeatureError(
            f"{path}: not an mmft feature file (format {metadata.get('format')!r}); write it with "
            "mmft extract-features"
        )
    keys = ["encoder", "image_size", "grid", "encoder_kwargs"]
    if expected["checkpoint"] or metadata.get("checkpoint"):
        # pretrained weights: the file records where they came from; a path may differ between machines
        if bool(expected["checkpoint"]) != bool(metadata.get("checkpoint")):
            keys.append("checkpoint")
    else:
        keys.append("seed")  # randomly initialised encoders are equal only with the same seed
    for key in keys:
        if metadata.get(key) != expected[key]:
            raise VisualFeatureError(
                f"{path} was extracted with {key}={metadata.get(key)!r} but {VISUAL_KEY}.{key} is "
                f"{expected[key]!r}: extract the features again with this config"
            )
