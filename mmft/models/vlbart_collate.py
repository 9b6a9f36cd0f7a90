"""VL-BART's collate: Samples -> encoder text with the task prefix, decoder labels, and the images or their features.

The encoder text is ``<s> {prefix}{prompt} </s>`` (``"vqa: what is ...?"``); the labels are ``<s> {target} </s>``
(BART's own layout: the decoder starts from ``</s>``, its ``decoder_start_token_id``), padded with -100. Each
example brings its images in order (one, or two for NLVR2) as ``pixel_values`` (end to end) or ``visual_features``
(read from a :class:`FeatureStore`), flattened over the batch, with ``image_counts`` saying how many are whose. A
video example (TVQA, How2QA, TVC, YC2C) brings its sampled frames the same way, one "image" per frame, so the visual
embedding's image order becomes the frame order (VL-Adapter's video setting: one token per frame with ``grid: 1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from data_modules.records import Example, Sample

from .base import batch_metadata
from .visual_features import FeatureStore, ImageTransform

IGNORE_INDEX = -100
# VL-Adapter's task prefixes (REFERENCE.md section 3), by the task names of the mmft readers
VLBART_PREFIXES = {
    "vqav2": "vqa: ",
    "gqa": "gqa: ",
    "nlvr2": "nlvr: ",
    "coco_caption": "caption: ",
    "tvqa": "tvqa: ",
    "how2qa": "how2qa: ",
    "tvc": "tvc: ",
    "yc2c": "yc2c: ",
}


class VLBartCollateError(ValueError):
    """A sample cannot become VL-BART inputs; the message names the record and the setting to change."""


class VLBartCollate:
    """Tokenise prefix + prompt and target, and batch the images (or their pre-extracted features).

    Args:
        tokenizer: a Hugging Face tokenizer with bos, eos and pad tokens (BART's, or the tiny one).
        prefixes: task -> text put before the prompt; every task of the data needs one.
        max_length: longest encoder text in tokens, ``<s>`` and ``</s>`` included (longer prompts are cut).
        max_target_length: longest label sequence, ``<s>`` and ``</s>`` included (longer targets are cut).
        image_transform: images -> pixel tensor, for features computed end to end.
        features: pre-extracted features; when given, images are looked up by file name instead.
        max_images: most images per example (2: NLVR2's pair; for video tasks, the number of frames, which is also
            how many frames a video example takes from feature files).
    """

    def __init__(
        self,
        tokenizer: Any,
        prefixes: dict[str, str],
        max_length: int = 20,
        max_target_length: int = 20,
        image_transform: ImageTransform | None = None,
        features: FeatureStore | None = None,
        max_images: int = 2,
    ) -> None:
        if (image_transform is None) == (features is None):
            raise VLBartCollateError("VLBartCollate needs exactly one of image_transform and features")
        for name in ("bos", "eos", "pad"):
            if getattr(tokenizer, f"{name}_token_id") is None:
                raise VLBartCollateError(f"the tokenizer has no {name} token; VL-BART's inputs need one")
        if max_length < 3 or max_target_length < 3:
            raise VLBartCollateError(
                f"max_length={max_length} and max_target_length={max_target_length} must leave room for text "
                "between <s> and </s> (at least 3)"
            )
        self.tokenizer = tokenizer
        self.prefixes = dict(prefixes)
        self.max_length = max_length
        self.max_target_length = max_target_length
        self.image_transform = image_transform
        self.features = features
        self.max_images = max_images

    @property
    def needs_media(self) -> bool:
        """Whether samples must carry decoded images (False when features are read from files)."""
        return self.features is None

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        if not samples:
            raise VLBartCollateError("empty batch")
        examples = [s.example for s in samples]
        batch: dict[str, Any] = batch_metadata(examples)
        source = self._encode([self._source_text(e) for e in examples], self.max_length)
        batch["input_ids"], batch["attention_mask"] = self._pad(source, self.tokenizer.pad_token_id)
        targets = [e.target for e in examples]
        if all(t is not None for t in targets):
            labels = self._encode(targets, self.max_target_length)
            batch["labels"], _ = self._pad(labels, IGNORE_INDEX)
        batch["image_counts"] = torch.tensor([self._image_count(s) for s in samples], dtype=torch.long)
        if self.features is not None:
            batch["visual_features"] = torch.cat([self._stored_features(s.example) for s in samples])
        else:
            batch["pixel_values"] = self.image_transform([image for s in samples for image in self._pictures(s)])
        return batch

    def _stored_features(self, example: Example) -> Tensor:
        """``[images or frames, tokens, channels]`` of one example from the feature files; a video example takes
        ``max_images`` frames (its span's, for a caption)."""
        name = self._name(example)
        if example.video is not None:
            return self.features.get_video(example.video, self.max_images, example.video_span, name)
        return torch.stack([self.features.get(path, name) for path in example.images])

    @staticmethod
    def _pictures(sample: Sample) -> list:
        """The sample's images, or its video frames as images."""
        if sample.example.video is None:
            return sample.images
        return [Image.fromarray(frame) for frame in sample.frames.numpy()]

    def _source_text(self, example: Example) -> str:
        if example.task not in self.prefixes:
            raise VLBartCollateError(
                f"{self._name(example)}: no prefix for task {example.task!r}; add it to model.init_args.prefixes "
                f"(known: {', '.join(sorted(self.prefixes))})"
            )
        if sum(t.role == "user" for t in example.turns) != 1:
            raise VLBartCollateError(
                f"{self._name(example)}: VL-BART takes one question per example, this one has "
                f"{sum(t.role == 'user' for t in example.turns)} user turns"
            )
        return f"{self.prefixes[example.task]}{example.prompt}".strip()

    def _image_count(self, sample: Sample) -> int:
        example = sample.example
        if example.video is not None:
            return self._frame_count(sample)
        count = len(example.images)
        if not 1 <= count <= self.max_images:
            raise VLBartCollateError(
                f"{self._name(example)}: {count} images; VL-BART takes 1 to {self.max_images} per example"
            )
        if self.features is None and len(sample.images) != count:
            raise VLBartCollateError(
                f"{self._name(example)}: {count} image paths but {len(sample.images)} decoded images (the dataset "
                "must decode images when features are computed end to end)"
            )
        return count

    def _frame_count(self, sample: Sample) -> int:
        example = sample.example
        if example.images:
            raise VLBartCollateError(f"{self._name(example)}: has both images and a video; VL-BART takes one kind")
        if self.features is not None:
            return self.max_images  # frames read from the feature files
        if sample.frames is None:
            raise VLBartCollateError(f"{self._name(example)}: a video example without decoded frames (the dataset "
                                     "decodes them when the collate needs media)")
        count = int(sample.frames.shape[0])
        if count > self.max_images:
            raise VLBartCollateError(
                f"{self._name(example)}: {count} video frames but the model takes at most {self.max_images} per "
                "example: set model.init_args.max_images to the data's num_frames"
            )
        return count

    def _encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """``<s> text </s>`` per text, the text cut to fit ``max_length``."""
        tokenized = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        return [[bos, *ids[: max_length - 2], eos] for ids in tokenized]

    @staticmethod
    def _pad(rows: list[list[int]], value: int) -> tuple[Tensor, Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), value, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    @staticmethod
    def _name(example: Example) -> str:
        return example.source or f"{example.task} example {example.id}"
