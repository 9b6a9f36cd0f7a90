"""The processor collate: list[Sample] -> batch tensors for a transformers image-text-to-text family, prompts from
the model's own chat template. Runs in DataLoader workers.

Each batch carries two views of the same examples: the training view (``input_ids``, ``attention_mask``,
``labels``; right padding), labels -100 except the assistant replies and their end-of-turn token, present when
every example ends with an assistant reply; and the generation view (``prompt_input_ids``,
``prompt_attention_mask``; left padding), the conversation up to its last reply ending with the generation prompt,
with ``ids``, ``tasks`` and ``references`` for scoring. A DataModule has one collate for every stage, so the collate
cannot know which stage it serves; the prompt view costs a slice of the training view. Every question gets its
task's instruction (:mod:`mmft.tasks`).

The processor expands the media placeholders the template writes (Qwen's ``<|image_pad|>`` by the image's grid,
OneVision's ``<image>`` by its AnyRes tiles, LLaVA-1.5's ``<image>`` by its patches, SmolVLM's ``<image>`` by its
tiles and pixel-shuffled tokens); reply spans found in the rendered text (prefix rendering,
:func:`~mmft.models.templates.render_messages`) are carried over the expansion with the processor's replacement
offsets, and tokens overlapping a reply are supervised. The prompt view is the
training view cut where the last reply starts, so the images are processed once for both. Media tensors
(``pixel_values``, ``image_grid_thw``, ``pixel_values_videos``, ...) are returned under ``media``.

Media placement follows the Example contract: several images stay where their ``<image>`` markers are; one image
or a video goes at the start of the first user turn. A video is passed as the processor's video input with its
frame times (frames without times are taken as sampled at ``default_fps``); families that read video as images
(SmolVLM) get its frames as images.

Over-long conversations lose whole earlier exchanges (question and reply), oldest first, as LLaVA-1.5's training
code does: the last question, its answer and the answer's end of turn are never cut, and a conversation whose images
are placed by markers in its turns is never shortened. :meth:`ChatCollate.check_length` estimates each example's
length from its text and a probe image's visual tokens, so the DataModule counts the shortened examples and drops or
refuses those that cannot fit when it reads the data. The collate cuts by the real length (dynamic-resolution images
and videos may come out longer than the estimate): only a row over ``max_length`` is rendered again, without as few
earliest exchanges as make it fit, and it is refused, naming the record, only when nothing more can go.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from PIL import Image

from data_modules.records import IMAGE_MARKER, Example, LengthCheck, RejectedSamples, Sample, Turn
from mmft.tasks import LLAVA_INSTRUCTIONS

from .base import batch_metadata
from .batch_rows import CollateError, pad_rows
from .instructions import with_instruction
from .lm_loss import IGNORE_INDEX
from .packing import PackingError, pack_training_view
from .templates import check_turns, render_messages

if TYPE_CHECKING:
    from transformers import BatchFeature

class RejectedMediaError(CollateError, RejectedSamples):
    """The processor refuses some samples' media; raised or, under ``on_error: skip``, skipped and counted."""


# per-token types some models read beside the ids: Qwen's and GLM's modality of each token, Gemma 3's image tokens
TOKEN_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")
MEDIA_KEYS_SKIPPED = ("input_ids", "attention_mask", "offset_mapping", "text_replacement_offsets", *TOKEN_TYPE_KEYS)
def media_messages(turns: Sequence[Turn], num_images: int, has_video: bool, frames: int = 0) -> list[dict]:
    """Chat messages with media parts: several images where their markers are, one image or a video (or its
    ``frames`` as images) at the start of the first user turn."""
    messages = []
    for i, turn in enumerate(turns):
        parts: list[dict] = []
        if i == 0 and num_images == 1:
            parts.append({"type": "image"})
        if i == 0 and has_video:
            parts += [{"type": "image"}] * frames if frames else [{"type": "video"}]
        pieces = turn.text.split(IMAGE_MARKER) if num_images > 1 else [turn.text]
        for j, piece in enumerate(pieces):
            if j:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": turn.role, "content": parts})
    return messages


class ChatCollate:
    """Conversations through a processor's chat template, labels on the assistant replies, media batched (a
    :class:`~data_modules.collate.Collate`).

    Args:
        processor: the model's processor (tokenizer, image / video processor, chat template).
        video_as_images: pass a video as its frames, each an image part, not as the processor's video input.
        max_length: longest sequence, visual tokens included.
        instructions: task -> text appended (after a newline) to every question; ``None`` means the task table's
            (:data:`mmft.tasks.TASKS`: LLaVA-1.5's evaluation instructions, and the video tasks' short-answer,
            choice-label and caption ones).
        default_fps: frame rate assumed for videos whose frame times are unknown.
        reply_suffix: text added after every reply (the end-of-sequence token of a template that writes no
            end-of-turn token, see :mod:`mmft.models.reply_end`), supervised with the reply.
    """

    needs_media = True  # the processor reads images and videos
    video_frames = None  # data.num_frames (or video_fps) decides: the processor takes any number

    def __init__(
        self,
        processor: Any,
        video_as_images: bool = False,
        max_length: int = 2048,
        instructions: dict[str, str] | None = None,
        default_fps: float = 1.0,
        reply_suffix: str = "",
    ) -> None:
        self.processor = processor
        self.video_as_images = video_as_images
        self.reply_suffix = reply_suffix
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.instructions = dict(LLAVA_INSTRUCTIONS if instructions is None else instructions)
        self.default_fps = default_fps
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self._probe_tokens: int | None = None
        self.packing_problem: str | None = None
        self.length_multiple = 1  # training rows rounded up to a multiple of it (compiled layers reuse their graphs)

    # ---------------------------------------------------------------------------------------------------- batches
    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        if not samples:
            raise CollateError("empty batch")
        examples = [s.example for s in samples]
        batch: dict[str, Any] = batch_metadata(examples)
        training = all(e.turns and e.turns[-1].role == "assistant" for e in examples)
        images = [self._images(s) for s in samples]  # one list per sample: SmolVLM checks them per prompt
        dropped = [0] * len(samples)
        rendered, encoded = self._encode(samples, images, dropped, training)
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        over = [i for i, length in enumerate(lengths) if length > self.max_length]
        for i in over:  # the real visual tokens are known now: the fewest exchanges the row must lose
            visual = lengths[i] - self._text_length(rendered[i][0])
            fits = self._exchanges_that_fit(samples[i], training, visual)
            if fits is None:
                kept, _ = self._render(samples[i], not training, self._most_droppable(examples[i], training))
                raise CollateError(self._too_long(examples[i], self._text_length(kept) + visual, training,
                                                  measured=True))
            dropped[i] = fits
        if over:
            rendered, encoded = self._encode(samples, images, dropped, training)
            for example, length in zip(examples, encoded["attention_mask"].sum(dim=1).tolist()):
                if length > self.max_length:
                    raise CollateError(self._too_long(example, length, training, measured=True))
        batch["media"] = {k: v for k, v in encoded.items() if k not in MEDIA_KEYS_SKIPPED}
        type_keys = [key for key in TOKEN_TYPE_KEYS if key in encoded]
        rows, types = [], {key: [] for key in type_keys}
        for i in range(len(samples)):
            length = int(encoded["attention_mask"][i].sum())
            rows.append(encoded["input_ids"][i, :length].tolist())
            for key in type_keys:
                types[key].append(encoded[key][i, :length].tolist())
        labels, prompt_lengths = self._supervision(samples, rendered, encoded, rows, training)
        if training:
            multiple = self.length_multiple
            batch["input_ids"], batch["attention_mask"] = pad_rows(rows, self.pad_token_id, False, multiple)
            batch["labels"], _ = pad_rows(labels, IGNORE_INDEX, False, multiple)
            for key in type_keys:
                batch[key], _ = pad_rows(types[key], 0, False, multiple)
        prompts = [row[:n] for row, n in zip(rows, prompt_lengths)]
        batch["prompt_input_ids"], batch["prompt_attention_mask"] = pad_rows(prompts, self.pad_token_id, left=True)
        for key in type_keys:
            batch[f"prompt_{key}"], _ = pad_rows([row[:n] for row, n in zip(types[key], prompt_lengths)], 0, left=True)
        return batch

    def pack(self, batch: dict[str, Any], row_tokens: int | None = None) -> dict[str, Any]:
        """``batch``'s training view as packed rows of at most ``row_tokens`` (default: ``max_length``) tokens
        (:mod:`mmft.models.packing`)."""
        self.check_packing()
        return pack_training_view(batch, TOKEN_TYPE_KEYS, self.pad_token_id, self.length_multiple,
                                  row_tokens or self.max_length)

    def check_packing(self) -> None:
        """Raise :class:`PackingError` when the model cannot train on packed rows (``packing_problem``, set by the
        module that knows its network)."""
        if self.packing_problem is not None:
            raise PackingError(f"data.packing: {self.packing_problem}; train this model on padded batches")

    def _supervision(self, samples: list[Sample], rendered: list[tuple[str, tuple]], encoded: BatchFeature,
                     rows: list[list[int]], training: bool) -> tuple[list[list[int]], list[int]]:
        """Each row's labels (the tokens overlapping a reply, -100 elsewhere) and its prompt length (the tokens
        before the last reply; the whole row for a prompt)."""
        has_media = any(key.startswith("pixel_values") for key in encoded)
        replacements = _replacement_offsets(encoded, len(samples), has_media)
        labels, prompt_lengths = [], []
        for i, (sample, (_, spans), ids) in enumerate(zip(samples, rendered, rows)):
            shifted = _shift_spans(spans, replacements[i])
            offsets = encoded["offset_mapping"][i, :len(ids)].tolist()
            labels.append([tok if any(s < b and e > a for a, b in shifted) else IGNORE_INDEX
                           for tok, (s, e) in zip(ids, offsets)])
            name = self._name(sample.example)
            prompt_lengths.append(_prompt_length(offsets, shifted[-1][0], name) if training else len(ids))
        return labels, prompt_lengths

    def _encode(self, samples: list[Sample], images: list[list], dropped: list[int], training: bool
                ) -> tuple[list[tuple[str, tuple]], BatchFeature]:
        """Each sample's view rendered without its ``dropped`` earliest exchanges, and the processor's encoding."""
        rendered = [self._render(s, not training, d) for s, d in zip(samples, dropped)]
        try:
            return rendered, _as_tensors(self._process(samples, [text for text, _ in rendered], images))
        except (ValueError, TypeError, RuntimeError) as error:
            rejected = self._rejected(samples, [text for text, _ in rendered], images)
            if not rejected:
                raise
            raise RejectedMediaError(rejected) from error

    def _exchanges_that_fit(self, sample: Sample, training: bool, visual_tokens: int) -> int | None:
        """The fewest earliest exchanges ``sample`` must lose to fit, its media adding ``visual_tokens`` to the
        text's tokens; None when even the turns it must keep do not fit."""
        for dropped in range(self._most_droppable(sample.example, training) + 1):
            text, _ = self._render(sample, not training, dropped)
            if self._text_length(text) + visual_tokens <= self.max_length:
                return dropped
        return None

    def _text_length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _process(self, samples: list[Sample], texts: list[str], images: list[list]) -> Any:
        """The processor over the rendered texts and the samples' media."""
        videos = [s.frames for s in samples if s.example.video is not None and not self.video_as_images]
        # a template that writes the BOS itself is not given a second one (as transformers' apply_chat_template)
        bos = self.tokenizer.bos_token
        kwargs: dict[str, Any] = {"return_offsets_mapping": True, "return_text_replacement_offsets": True,
                                  "padding": True, "padding_side": "right",
                                  "add_special_tokens": not (bos and texts[0].startswith(bos))}
        if videos:
            kwargs["videos_kwargs"] = {"video_metadata": [self._metadata(s) for s in samples if s.example.video
                                                          is not None], "do_sample_frames": False}
        return self.processor(text=texts, images=images if any(images) else None, videos=videos or None, **kwargs)

    def _rejected(self, samples: list[Sample], texts: list[str], images: list[list]) -> dict[int, str]:
        """The samples the processor refuses on their own (an image too thin for Qwen's resizing, say), each with a
        message naming its record; empty when each passes alone."""
        rejected = {}
        for i, sample in enumerate(samples):
            try:
                self._process([sample], [texts[i]], [images[i]])
            except (ValueError, TypeError, RuntimeError) as error:
                sizes = ", ".join(f"{image.width}x{image.height}" for image in images[i] if hasattr(image, "width"))
                media = f" (images {sizes})" if sizes else ""
                rejected[i] = f"{self._name(sample.example)}: the processor rejects its media{media}: {error}"
        return rejected

    def _render(self, sample: Sample, prompt: bool, dropped: int = 0) -> tuple[str, tuple[tuple[int, int], ...]]:
        """The text of a view and its supervised spans, the ``dropped`` earliest exchanges left out."""
        example = sample.example
        check_turns(list(example.turns), self._name(example))
        turns = _view_turns(example, prompt)[2 * dropped:]
        turns = with_instruction(turns, self.instructions.get(example.task))
        if self.reply_suffix:
            turns = [replace(t, text=t.text + self.reply_suffix) if t.role == "assistant" else t for t in turns]
        frames = 0
        if example.video is not None and self.video_as_images:
            frames = len(sample.frames) if sample.frames is not None else 1
        messages = media_messages(turns, len(example.images), example.video is not None, frames)
        rendered = render_messages(messages, self._chat, add_generation_prompt=prompt, source=self._name(example))
        return rendered.text, rendered.supervised

    def _chat(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _images(self, sample: Sample) -> list:
        example = sample.example
        if example.video is not None:
            if sample.frames is None:
                raise CollateError(f"{self._name(example)}: has a video but no decoded frames")
            if self.video_as_images:
                return [Image.fromarray(frame.numpy()) for frame in sample.frames]
            return []
        if len(sample.images) != len(example.images):
            raise CollateError(
                f"{self._name(example)}: {len(example.images)} image paths but {len(sample.images)} decoded images"
            )
        return list(sample.images)

    def _metadata(self, sample: Sample) -> Any:
        """The frames' times as transformers' VideoMetadata: a millisecond clock, the frames its sampled ticks."""
        from transformers.video_utils import VideoMetadata

        count = len(sample.frames)
        times = sample.frame_times
        if times is None:
            times = tuple(i / self.default_fps for i in range(count))
        step = (times[-1] - times[0]) / (count - 1) if count > 1 else 1 / self.default_fps
        duration = times[-1] + step
        return VideoMetadata(total_num_frames=round(duration * 1000), fps=1000.0, duration=duration,
                             frames_indices=[round(t * 1000) for t in times])

    # ----------------------------------------------------------------------------------------------------- length
    def check_length(self, example: Example, training: bool) -> LengthCheck:
        """Whether ``example`` fits ``max_length`` as a training example (whole conversation) or, with
        ``training=False``, as an evaluation prompt; ``truncated`` when only after dropping earlier exchanges.
        Estimated from its text (tokenised) and a probe image's tokens per image, a video counting as one image (its
        frames are not known before decoding)."""
        dropped, length = self._exchanges_to_drop(example, training)
        if dropped is None:
            return LengthCheck(problem=self._too_long(example, length, training, measured=False))
        return LengthCheck(truncated=dropped > 0, tokens=length)

    def _exchanges_to_drop(self, example: Example, training: bool) -> tuple[int | None, int]:
        """How many earliest exchanges the view must lose for its estimated length to fit, and that length; None
        and the length of the turns it must keep when those are too long already."""
        turns = _view_turns(example, not training)
        for dropped in range(self._most_droppable(example, training) + 1):
            length = self._estimated_length(example, turns[2 * dropped:], training)
            if length <= self.max_length:
                return dropped, length
        kept = turns[len(turns) - self._turns_kept(example, training):]
        return None, self._estimated_length(example, kept, training)

    def _turns_kept(self, example: Example, training: bool) -> int:
        """The turns a view cannot lose: the last exchange (the last question alone for a prompt), or every turn
        when markers in them place the images."""
        if len(example.images) > 1:
            return len(_view_turns(example, not training))
        return 2 if training else 1

    def _most_droppable(self, example: Example, training: bool) -> int:
        return (len(_view_turns(example, not training)) - self._turns_kept(example, training)) // 2

    def _estimated_length(self, example: Example, turns: Sequence[Turn], training: bool) -> int:
        turns = with_instruction(list(turns), self.instructions.get(example.task))
        count = len(example.images) + (1 if example.video is not None else 0)
        text = self._chat(media_messages(turns, len(example.images), False), not training)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + count * self.probe_tokens()

    def _too_long(self, example: Example, length: int, training: bool, measured: bool) -> str:
        if len(example.images) > 1:
            what = "its whole conversation (several images, placed in its turns)"
        else:
            what = "its last question and answer" if training else "its last question"
        return (f"{self._name(example)}: {'' if measured else 'about '}{length} tokens with only {what} (visual "
                f"tokens included), more than max_length={self.max_length}: raise model.init_args.max_length, or "
                "drop such examples with data.on_error: skip")

    def probe_tokens(self) -> int:
        """Tokens one 64-pixel probe image adds to a prompt (the template's markers and the visual tokens)."""
        if self._probe_tokens is None:
            with_image = self._chat(media_messages([Turn("user", "x")], 1, False), True)
            without = self._chat(media_messages([Turn("user", "x")], 0, False), True)
            probe = Image.new("RGB", (64, 64))
            expanded = self.processor(text=[with_image], images=[probe])["input_ids"][0]
            self._probe_tokens = len(expanded) - len(self.tokenizer(without, add_special_tokens=False)["input_ids"])
        return self._probe_tokens

    # ------------------------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _name(example: Example) -> str:
        return example.source or f"{example.task} example {example.id}"


def _view_turns(example: Example, prompt: bool) -> list[Turn]:
    """The turns of a view: the whole conversation, or for a prompt every turn before a final reply."""
    turns = list(example.turns)
    if prompt and turns and turns[-1].role == "assistant":
        turns = turns[:-1]
    return turns


def _as_tensors(encoded: Any) -> BatchFeature:
    """The processor's output (lists) as tensors, its replacement offsets left as lists of dicts. The processor
    itself is not asked for tensors: Idefics3's judges the offsets by the first row, where a text-only row's empty
    list passes for array-like, and then fails to make a tensor of the other rows' dicts."""
    from transformers import BatchFeature

    return BatchFeature(dict(encoded), tensor_type="pt", skip_tensor_conversion={"text_replacement_offsets"})


def _replacement_offsets(encoded: Any, rows: int, has_media: bool) -> Sequence[Sequence[dict]]:
    """The processor's placeholder replacements per row; Idefics3's processor leaves them out of text-only batches,
    which have none."""
    if "text_replacement_offsets" in encoded:
        return encoded["text_replacement_offsets"]
    if has_media:
        raise CollateError("the processor returned no text_replacement_offsets for a batch with media: the reply "
                           "spans cannot be carried over its placeholder expansion")
    return [[] for _ in range(rows)]


def _shift_spans(spans: Sequence[tuple[int, int]], replacements: Sequence[dict]) -> list[tuple[int, int]]:
    """Carry character spans of the rendered text over the processor's placeholder expansion."""
    ends = [r["span"][1] for r in replacements]
    gained = [0] + [r["new_span"][1] - r["span"][1] for r in replacements]
    return [tuple(char + gained[bisect.bisect_right(ends, char)] for char in span) for span in spans]


def _prompt_length(offsets: Sequence[tuple[int, int]], reply_start: int, name: str) -> int:
    """Tokens before the last reply: up to the first token at or after its start (a word-level tokenizer leaves the
    space before a reply out of every token); a token across the start means the prompt cannot be cut there."""
    spans = [(i, int(s), int(e)) for i, (s, e) in enumerate(offsets) if e > s]
    if any(s < reply_start < e for _, s, e in spans):
        raise CollateError(f"{name}: the last reply does not start on a token boundary; its prompt cannot be cut")
    after = [i for i, s, _ in spans if s >= reply_start]
    if not after:
        raise CollateError(f"{name}: no token of the last reply was found; its prompt cannot be cut")
    return after[0]
