"""The LLaVA collate: list[Sample] -> batch tensors. Runs in DataLoader workers, so everything here pickles.

Each batch carries two views of the same examples:

- the training view (``input_ids``, ``attention_mask``, ``labels``; right padding): the whole conversation, labels
  -100 everywhere except the assistant replies and their end-of-turn token. Present when every example ends with an
  assistant turn and fits ``max_length``.
- the generation view (``prompt_input_ids``, ``prompt_attention_mask``; left padding): the conversation up to the
  last assistant reply, ending with the generation prompt. Present always, with ``ids``, ``tasks`` and
  ``references`` for scoring.

Both views append the task's instruction to every question (``instructions``): readers give bare questions, and
LLaVA-1.5 trains and evaluates VQA-style tasks with "Answer the question using a single word or phrase." after each.

A DataModule has one collate for every stage, so the collate cannot know whether it serves training or evaluation;
building both views is cheap next to the model's forward pass.

Over-long conversations: the last question and its answer (with its end-of-turn token) are never cut. When a view
exceeds ``max_length``, whole earlier exchanges (question and reply) are dropped, oldest first, until it fits; one
whose last exchange alone does not fit cannot be used. :meth:`LlavaCollate.check_length` says which case an example
is in, so the DataModule drops or refuses such examples when it reads them, never mid-epoch.

Images are padded to square with the processor's mean colour (LLaVA-1.5 ``image_aspect_ratio: pad``), then
preprocessed by the model's image transform. The ``<image>`` placeholder goes at the start of the first user turn
and is expanded to the number of visual tokens the model produces per image. An example with several images already
has one ``<image>`` marker per image in its turns (the Example contract): each expands in place, in order, and such
a conversation is never shortened (dropping a turn would drop its images). A video is its frames treated as images,
LLaVA-1.5 having no video input: one ``<image>`` per frame at the start of the first user turn, as LLaVA-NeXT's
image-only models are fed video; the frame count a length check assumes is ``video_frames``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol

import torch
from PIL import Image
from torch import Tensor

from data_modules.media import pad_to_square
from data_modules.records import Example, LengthCheck, Sample, Turn
from mmft.errors import InputError

from .base import batch_metadata
from .templates import IMAGE_PLACEHOLDER, TemplateName, render

IGNORE_INDEX = -100
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
UNANSWERABLE_SUFFIX = (
    f"When the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT_ANSWER_SUFFIX}"
)
LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."
# the VALUE readers' targets are the choice labels a0..a4, listed in the prompt as "a0: <choice>"
CHOICE_SUFFIX = "Answer with the option's label (a0 to a4) from the given choices directly."
CAPTION_SUFFIX = "Describe what happens in the video in one sentence."
# LLaVA-1.5's evaluation instructions (its eval question files; the same strings as lmms-eval's task configs)
LLAVA_INSTRUCTIONS = {
    **{task: SHORT_ANSWER_SUFFIX for task in ("vqav2", "gqa", "textvqa", "pope", "okvqa", "ocrvqa", "docvqa")},
    "vizwiz": UNANSWERABLE_SUFFIX,
    "scienceqa": LETTER_SUFFIX,
    "mmbench": LETTER_SUFFIX,
    "msrvtt_qa": SHORT_ANSWER_SUFFIX,
    "tvqa": CHOICE_SUFFIX,
    "how2qa": CHOICE_SUFFIX,
    "tvc": CAPTION_SUFFIX,
    "yc2c": CAPTION_SUFFIX,
}


class CollateError(InputError, ValueError):
    """A sample cannot be turned into model inputs; the message names the record and the setting to change."""


class ImageTransform(Protocol):
    """Turns PIL RGB images into a ``[N, 3, H, W]`` float tensor; ``fill`` is the 0-255 padding colour."""

    fill: tuple[int, int, int]

    def __call__(self, images: list) -> Tensor: ...


class HFImageTransform:
    """A Hugging Face image processor (CLIPImageProcessor for LLaVA) as an ImageTransform."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.fill = tuple(int(255 * m) for m in processor.image_mean)  # LLaVA-1.5 expand2square colour

    def __call__(self, images: list) -> Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


class TimmImageTransform:
    """A timm eval transform (resize, crop, normalise) as an ImageTransform."""

    def __init__(self, transform: Any, mean: Sequence[float]) -> None:
        self.transform = transform
        self.fill = tuple(int(255 * m) for m in mean)

    def __call__(self, images: list) -> Tensor:
        return torch.stack([self.transform(image) for image in images])


def with_instruction(turns: Sequence[Turn], instruction: str | None) -> list[Turn]:
    """Append ``instruction`` (after a newline) to every user turn; an empty question becomes the instruction."""
    if not instruction:
        return list(turns)
    return [
        replace(t, text=f"{t.text}\n{instruction}" if t.text else instruction) if t.role == "user" else t
        for t in turns
    ]


def with_image_placeholders(turns: Sequence[Turn], num_images: int) -> list[Turn]:
    """LLaVA puts ``"<image>\\n"`` at the start of the first user turn, once per image."""
    turns = list(turns)
    if num_images:
        turns[0] = replace(turns[0], text=(IMAGE_PLACEHOLDER + "\n") * num_images + turns[0].text)
    return turns


def pad_rows(rows: list[list[int]], value: int, left: bool) -> tuple[Tensor, Tensor]:
    """Token rows as one tensor, padded with ``value`` on the left (generation) or the right (training), and the
    attention mask."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        out[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return out, mask


class LlavaCollate:
    """Tokenise conversations with a template, mask non-assistant tokens, expand image tokens, batch images.

    Args:
        tokenizer: a Hugging Face fast tokenizer that knows ``<image>`` as one token.
        image_transform: the model's image preprocessing.
        num_image_tokens: visual tokens per image (576 for CLIP ViT-L/14-336).
        template: ``vicuna_v1`` (LLaVA-1.5) or ``chat_template`` (the tokenizer's own).
        max_length: longest sequence, image tokens included; longer conversations lose their earliest exchanges.
        instructions: task -> text appended (after a newline) to every question of that task's examples, in
            both views; ``None`` means LLaVA-1.5's short-answer instruction for the VQA-style tasks.
        pad_images_to_square: pad with the mean colour before preprocessing, as LLaVA-1.5 does.
        video_frames: the most frames a video brings (the DataModule's ``num_frames``, or ``max_frames`` when it
            samples by fps): what :meth:`check_length` counts for a video example; more decoded frames are an error.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_transform: ImageTransform,
        num_image_tokens: int,
        template: TemplateName = "vicuna_v1",
        max_length: int = 2048,
        instructions: dict[str, str] | None = None,
        pad_images_to_square: bool = True,
        video_frames: int = 8,
    ) -> None:
        self.tokenizer = tokenizer
        self.video_frames = video_frames
        self.image_transform = image_transform
        self.num_image_tokens = num_image_tokens
        self.template = template
        self.max_length = max_length
        self.instructions = dict(LLAVA_INSTRUCTIONS if instructions is None else instructions)
        self.pad_images_to_square = pad_images_to_square
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise CollateError(f"the tokenizer has no {IMAGE_PLACEHOLDER} token: add it as a special token")
        if tokenizer.eos_token is None:
            raise CollateError("the tokenizer has no eos token: the end of each assistant reply cannot be marked")
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
        # vicuna_v1 text has no begin-of-sequence marker; chat templates write their own
        self.bos_token_id = tokenizer.bos_token_id if template == "vicuna_v1" else None

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        if not samples:
            raise CollateError("empty batch")
        examples = [s.example for s in samples]
        batch: dict[str, Any] = batch_metadata(examples)
        per_sample = [self._images(s) for s in samples]
        images = [image for sample_images in per_sample for image in sample_images]
        if images:
            batch["pixel_values"] = self.image_transform(images)
        counts = [len(sample_images) for sample_images in per_sample]
        encoded = None
        if all(e.turns and e.turns[-1].role == "assistant" for e in examples):
            encoded = [self._fit(e, n, prompt=False) for e, n in zip(examples, counts)]
        if encoded is not None and all(e is not None for e in encoded):  # eval examples may fit as prompts only
            ids, mask = pad_rows([ids for ids, _, _ in encoded], self.pad_token_id, left=False)
            labels, _ = pad_rows([labels for _, labels, _ in encoded], IGNORE_INDEX, left=False)
            batch.update(input_ids=ids, attention_mask=mask, labels=labels)
        prompts = [self.encode_prompt(e, n) for e, n in zip(examples, counts)]
        batch["prompt_input_ids"], batch["prompt_attention_mask"] = pad_rows(prompts, self.pad_token_id, left=True)
        return batch

    def _images(self, sample: Sample) -> list:
        """The sample's images, or its video's frames as images."""
        example = sample.example
        if example.video is not None:
            images = self._frames(sample)
        elif len(sample.images) != len(example.images):
            raise CollateError(
                f"{self._name(example)}: {len(example.images)} image paths but {len(sample.images)} decoded images"
            )
        else:
            images = list(sample.images)
        if self.pad_images_to_square:
            return [pad_to_square(image, self.image_transform.fill) for image in images]
        return images

    def _frames(self, sample: Sample) -> list:
        if sample.frames is None:
            raise CollateError(f"{self._name(sample.example)}: a video example without decoded frames")
        if len(sample.frames) > self.video_frames:
            raise CollateError(
                f"{self._name(sample.example)}: {len(sample.frames)} video frames, more than video_frames="
                f"{self.video_frames}: lower the data's num_frames (or max_frames) or raise video_frames"
            )
        return [Image.fromarray(frame) for frame in sample.frames.numpy()]

    def _num_images(self, example: Example) -> int:
        """Images an example brings, counted without decoding (a video: the most frames it can bring)."""
        return self.video_frames if example.video is not None else len(example.images)

    @staticmethod
    def _name(example: Example) -> str:
        return example.source or f"{example.task} example {example.id}"

    def encode(self, example: Example, num_images: int) -> tuple[list[int], list[int]]:
        """Token ids and labels of the whole conversation (training view), earliest exchanges dropped to fit."""
        ids, labels, _ = self._fit_or_raise(example, num_images, prompt=False)
        return ids, labels

    def encode_prompt(self, example: Example, num_images: int) -> list[int]:
        """Token ids of the generation prompt: every turn but a final assistant reply, earliest exchanges dropped to
        fit."""
        ids, _, _ = self._fit_or_raise(example, num_images, prompt=True)
        return ids

    def check_length(self, example: Example, training: bool) -> LengthCheck:
        """Whether ``example`` fits ``max_length`` (text tokenised, images counted, nothing decoded): as a training
        example (both views) or, with ``training=False``, as an evaluation prompt."""
        num_images = self._num_images(example)
        views = [self._fit(example, num_images, prompt=True)]
        if training:
            views.append(self._fit(example, num_images, prompt=False))
        if any(view is None for view in views):
            return LengthCheck(problem=self._too_long(example, num_images, prompt=not training))
        return LengthCheck(truncated=any(truncated for _, _, truncated in views))

    def _fit_or_raise(self, example: Example, num_images: int, prompt: bool) -> tuple[list[int], list[int], bool]:
        fitted = self._fit(example, num_images, prompt)
        if fitted is None:
            raise CollateError(self._too_long(example, num_images, prompt))
        return fitted

    def _too_long(self, example: Example, num_images: int, prompt: bool) -> str:
        turns = self._view_turns(example, prompt)[-self._turns_kept(example, prompt):]
        length = len(self._encode_turns(example, turns, num_images, prompt)[0])
        if len(example.images) > 1:
            what = "its whole conversation (several images)"
        else:
            what = "its last question" if prompt else "its last question and answer"
        return (f"{self._name(example)}: {length} tokens with only {what} (images included), more than "
                f"max_length={self.max_length}: raise model.init_args.max_length, or drop such examples with "
                "data.on_error: skip")

    @staticmethod
    def _view_turns(example: Example, prompt: bool) -> list[Turn]:
        turns = list(example.turns)
        if prompt and turns and turns[-1].role == "assistant":
            turns = turns[:-1]
        return turns

    def _fit(self, example: Example, num_images: int, prompt: bool) -> tuple[list[int], list[int], bool] | None:
        """``(ids, labels, truncated)`` of a view within ``max_length``, dropping whole earlier exchanges; None when
        even the last exchange is too long."""
        turns = self._view_turns(example, prompt)
        keep = self._turns_kept(example, prompt)
        dropped = 0
        while True:
            ids, labels = self._encode_turns(example, turns[2 * dropped :], num_images, prompt)
            if len(ids) <= self.max_length:
                return ids, labels, dropped > 0
            if len(turns) - 2 * dropped <= keep:
                return None
            dropped += 1

    def _turns_kept(self, example: Example, prompt: bool) -> int:
        """The turns a view cannot lose: the last exchange, or every turn when markers in them place the images."""
        if len(example.images) > 1:
            return len(self._view_turns(example, prompt))
        return 1 if prompt else 2

    def _encode_turns(
        self, example: Example, turns: Sequence[Turn], num_images: int, prompt: bool
    ) -> tuple[list[int], list[int]]:
        turns = with_instruction(turns, self.instructions.get(example.task))
        if len(example.images) <= 1:  # several images: their markers are already in the turns
            turns = with_image_placeholders(turns, num_images)
        rendered = render(
            self.template, turns, self.tokenizer.eos_token, self.tokenizer, add_generation_prompt=prompt,
            source=self._name(example),
        )
        return self._tokenize(rendered.text, () if prompt else rendered.supervised, num_images, example)

    def _tokenize(
        self, text: str, supervised: Sequence[tuple[int, int]], num_images: int, example: Example
    ) -> tuple[list[int], list[int]]:
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = []
        labels: list[int] = []
        if self.bos_token_id is not None:
            ids.append(self.bos_token_id)
            labels.append(IGNORE_INDEX)
        found = 0
        for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
            if token == self.image_token_id:
                ids.extend([token] * self.num_image_tokens)
                labels.extend([IGNORE_INDEX] * self.num_image_tokens)
                found += 1
                continue
            ids.append(token)
            labels.append(token if any(start < b and end > a for a, b in supervised) else IGNORE_INDEX)
        if found != num_images:
            raise CollateError(
                f"{self._name(example)}: {num_images} image(s) but {found} {IMAGE_PLACEHOLDER} tokens after "
                f"tokenisation (does the text contain {IMAGE_PLACEHOLDER} itself?)"
            )
        return ids, labels
