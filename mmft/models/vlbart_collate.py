"""VL-BART's collate: Samples -> encoder text with the task prefix, decoder labels, and the images or their features.

The encoder text is ``<s> {prefix}{prompt} </s>`` (``"vqa: what is ...?"``); the labels are ``<s> {target} </s>``
(BART's own layout: the decoder starts from ``</s>``, its ``decoder_start_token_id``), padded with -100. Each
example brings its images in order (one, or two for NLVR2) as ``pixel_values`` (end to end) or ``visual_features``
(read from a :class:`FeatureStore`), flattened over the batch, with ``image_counts`` saying how many are whose. A
video example (TVQA, How2QA, TVC, YC2C) brings its sampled frames the same way, one "image" per frame, so the visual
embedding's image order becomes the frame order (VL-Adapter's video setting: one token per frame with ``grid: 1``).

Over-long encoder text: the question, the choices and the task prefix are never cut. The VALUE readers' prompts
(TVQA, How2QA, TVC, YC2C) start with ``[Subs] `` and the subtitles run to `` [Q] `` (or to the end): when the text
exceeds ``max_length``, the subtitles' last tokens are cut to make room. A text that is too long without any
subtitles cannot be used; :meth:`VLBartCollate.check_length` finds such examples when the DataModule reads them.
A target longer than ``max_target_length`` is cut before its ``</s>``, which is always kept (long captions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from data_modules.records import Example, LengthCheck, Sample
from mmft.errors import InputError

from .base import batch_metadata
from .lm_loss import IGNORE_INDEX
from .visual_features import FeatureStore, ImageTransform

# the cuttable context of the VALUE prompts (data_modules.formats.value): "[Subs] <subtitles> [Q] ..."
CONTEXT_START, CONTEXT_END = "[Subs] ", " [Q] "


class VLBartCollateError(InputError, ValueError):
    """A sample cannot become VL-BART inputs; the message names the record and the setting to change."""


class VLBartCollate:
    """Tokenise prefix + prompt and target, and batch the images (or their pre-extracted features).

    Args:
        tokenizer: a Hugging Face tokenizer with bos, eos and pad tokens (BART's, or the tiny one).
        prefixes: task -> text put before the prompt; every task of the data needs one.
        max_length: longest encoder text in tokens, ``<s>`` and ``</s>`` included (subtitles are cut to fit; see the
            module docstring).
        max_target_length: longest label sequence, ``<s>`` and ``</s>`` included (longer targets are cut, ``</s>``
            kept).
        image_transform: images -> pixel tensor, for features computed end to end.
        features: pre-extracted features; when given, images are looked up by file name instead.
        max_images: most images per example (2: NLVR2's pair); for video tasks, the frames per video: the
            DataModule samples that many (:attr:`video_frames`), and a video example takes that many from feature
            files.
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

    @property
    def video_frames(self) -> int:
        """A video example's frames, each one of the model's ``max_images`` ordered images: the DataModule samples
        this many."""
        return self.max_images

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        if not samples:
            raise VLBartCollateError("empty batch")
        examples = [s.example for s in samples]
        batch: dict[str, Any] = batch_metadata(examples)
        source = [self._encode_source(e) for e in examples]
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

    def check_length(self, example: Example, training: bool) -> LengthCheck:
        """Whether ``example``'s encoder text fits ``max_length`` (subtitles cut if needed) and, for training, whether
        its target had to be cut to ``max_target_length``. Text is tokenised, no media is touched."""
        fitted = self._fit_source(example)
        if fitted is None:
            return LengthCheck(problem=self._too_long(example))
        truncated = fitted[1]
        if training and example.target is not None:
            target = self.tokenizer(example.target, add_special_tokens=False)["input_ids"]
            truncated = truncated or len(target) > self.max_target_length - 2
        return LengthCheck(truncated=truncated)

    def _encode_source(self, example: Example) -> list[int]:
        fitted = self._fit_source(example)
        if fitted is None:
            raise VLBartCollateError(self._too_long(example))
        return fitted[0]

    def _fit_source(self, example: Example) -> tuple[list[int], bool] | None:
        """``(<s> text </s> ids, subtitles cut)`` within ``max_length``; None when it cannot fit."""
        text = self._source_text(example)
        budget = self.max_length - 2
        (ids,) = self._encode([text], max_length=None)
        if len(ids) - 2 <= budget:
            return ids, False
        prefix, marker, rest = text.partition(CONTEXT_START)
        if not marker:
            return None
        context, end, tail = rest.partition(CONTEXT_END)
        # split at spaces, so each piece tokenises as it does inside the whole text
        head_ids, context_ids, tail_ids = self._tokens([prefix + marker.rstrip(), " " + context, end + tail])
        room = budget - len(head_ids) - len(tail_ids)
        if room < 0:
            return None
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        return [bos, *head_ids, *context_ids[:room], *tail_ids, eos], True

    def _too_long(self, example: Example) -> str:
        return (f"{self._name(example)}: the encoder text is longer than max_length={self.max_length} tokens even "
                "without subtitles (the question, choices and prefix are never cut): raise "
                "model.init_args.max_length, or drop such examples with data.on_error: skip")

    def _tokens(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

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
                "example (model.init_args.max_images)"
            )
        return count

    def _encode(self, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
        """``<s> text </s>`` per text, the text cut to fit ``max_length`` (``</s>`` always kept)."""
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        keep = None if max_length is None else max_length - 2
        return [[bos, *ids[:keep], eos] for ids in self._tokens(texts)]

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
