"""The prompt-and-answer collate of prefix-LM families (PaliGemma, PaliGemma 2), which have no chat template: the
processor writes the published format itself, ``<image>`` x N ``<bos>`` prompt ``\\n`` answer ``<eos>``, and marks
the prompt with ``token_type_ids`` 0 and the answer with 1. The model attends to the whole prompt (images and text)
in both directions and causally within the answer; generation continues the prompt's types with 1.

The same two views as :class:`~mmft.models.chat_collate.ChatCollate`: labels on the answer and its ``<eos>`` (the
tokens of type 1), and the prompt (the tokens of type 0) left-padded for generation. A family like this answers one
question: a conversation of several exchanges is refused, naming its record (the length check counts it as a
problem, so ``data.on_error: skip`` drops it). Images and video frames all go before the prompt, where the format
puts them (``<image>`` markers in a question are taken out). A text-only conversation, which the processor refuses,
is encoded by its tokenizer in the same format without images.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from data_modules.records import IMAGE_MARKER, Example, LengthCheck, Sample, Turn

from .batch_rows import CollateError, pad_rows
from .chat_collate import ChatCollate, RejectedMediaError, _view_turns
from .instructions import with_instruction
from .lm_loss import IGNORE_INDEX
from .reply_end import ReplyEnd
from .templates import check_turns

if TYPE_CHECKING:
    from transformers import BatchFeature

ANSWER_TYPE = 1


def takes_suffix(processor: Any) -> bool:
    """Whether ``processor`` encodes a prompt and an answer (a ``suffix``) itself: a prefix-LM family's."""
    return "suffix" in inspect.signature(type(processor).__call__).parameters


def prefix_reply_end(processor: Any, generation_config: Any) -> ReplyEnd:
    """The processor ends every answer with the tokenizer's end of sequence; generation stops there and at the
    generation config's."""
    end = processor.tokenizer.eos_token_id
    eos = generation_config.eos_token_id
    eos_ids = [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]
    return ReplyEnd(int(end), "", tuple(dict.fromkeys([int(end), *eos_ids])))


class PrefixCollate(ChatCollate):
    """Prompt and answer through a prefix-LM processor (``processor(text=prompt, images, suffix=answer)``), labels
    on the answer, media batched. Arguments as :class:`ChatCollate` (``reply_suffix`` is unused: the processor
    writes the end of the answer)."""

    def _render(self, sample: Sample, prompt: bool, dropped: int = 0) -> tuple[str, tuple]:
        """The prompt text: one ``<image>`` per image (or video frame), then the question and its instruction."""
        question, _ = self._question_and_answer(sample.example, training=not prompt)
        return self.processor.image_token * len(self._images(sample)) + question, ()

    def _question_and_answer(self, example: Example, training: bool) -> tuple[str, str | None]:
        name = self._name(example)
        check_turns(list(example.turns), name)
        turns = _view_turns(example, not training)
        if len(turns) > 2:
            raise CollateError(self._several_exchanges(example))
        (question,) = with_instruction(turns[:1], self.instructions.get(example.task))
        answer = turns[1].text if training else None
        return question.text.replace(IMAGE_MARKER, ""), answer

    @staticmethod
    def _several_exchanges(example: Example) -> str:
        count = sum(turn.role == "user" for turn in example.turns)
        source = example.source or f"{example.task} example {example.id}"
        return (f"{source}: {count} questions; this model (a prefix-LM such as PaliGemma, not a chat model) answers "
                "one question about its images: give one question and its answer, or skip such examples with "
                "data.on_error: skip")

    def _encode(self, samples: list[Sample], images: list[list], dropped: list[int], training: bool
                ) -> tuple[list[tuple[str, tuple]], BatchFeature]:
        """Each sample encoded alone by the processor (or, text-only, by its tokenizer), then padded together."""
        from transformers import BatchFeature

        rendered = [self._render(s, not training) for s in samples]
        rows, rejected = [], {}
        for index, (sample, (prompt, _), pictures) in enumerate(zip(samples, rendered, images)):
            _, answer = self._question_and_answer(sample.example, training)
            try:
                rows.append(self._encode_one(prompt, answer, pictures))
            except (ValueError, TypeError, RuntimeError) as error:
                sizes = ", ".join(f"{image.width}x{image.height}" for image in pictures if hasattr(image, "width"))
                rejected[index] = (f"{self._name(sample.example)}: the processor rejects its media (images {sizes}): "
                                   f"{error}")
        if rejected:
            raise RejectedMediaError(rejected)
        ids, mask = pad_rows([row["input_ids"] for row in rows], self.pad_token_id, left=False)
        types, _ = pad_rows([row["token_type_ids"] for row in rows], 0, left=False)
        encoded = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        pixels = [row["pixel_values"] for row in rows if "pixel_values" in row]
        if pixels:
            encoded["pixel_values"] = torch.cat(pixels)
        return rendered, BatchFeature(encoded)

    def _encode_one(self, prompt: str, answer: str | None, images: list) -> dict[str, Any]:
        if not images:  # the processor's format without images: <bos> prompt \n [answer <eos>]
            tokenizer = self.tokenizer
            pair = None if answer is None else answer + tokenizer.eos_token
            text = tokenizer(f"{tokenizer.bos_token}{prompt}\n", pair, return_token_type_ids=True)
            return {"input_ids": text["input_ids"], "token_type_ids": text["token_type_ids"]}
        encoded = self.processor(text=[prompt], images=[images], suffix=None if answer is None else [answer],
                                 return_tensors="pt")
        return {"input_ids": encoded["input_ids"][0].tolist(), "token_type_ids": encoded["token_type_ids"][0].tolist(),
                "pixel_values": encoded["pixel_values"]}

    def _supervision(self, samples: list[Sample], rendered: list[tuple[str, tuple]], encoded: BatchFeature,
                     rows: list[list[int]], training: bool) -> tuple[list[list[int]], list[int]]:
        """Labels on the answer's tokens (type 1); the prompt is the tokens before them."""
        labels, prompt_lengths = [], []
        for i, ids in enumerate(rows):
            types = encoded["token_type_ids"][i, :len(ids)].tolist()
            labels.append([tok if kind == ANSWER_TYPE else IGNORE_INDEX for tok, kind in zip(ids, types)])
            prompt_lengths.append(types.index(ANSWER_TYPE) if training else len(ids))
        return labels, prompt_lengths

    # ----------------------------------------------------------------------------------------------------- length
    def check_length(self, example: Example, training: bool) -> LengthCheck:
        if len(_view_turns(example, not training)) > 2:
            return LengthCheck(problem=self._several_exchanges(example))
        return super().check_length(example, training)

    def _turns_kept(self, example: Example, training: bool) -> int:
        return len(_view_turns(example, not training))  # one exchange: nothing to drop

    def _estimated_length(self, example: Example, turns: Sequence[Turn], training: bool) -> int:
        """``<bos>``, the prompt, ``\\n``, the answer and ``<eos>``, and the image tokens."""
        question, answer = self._question_and_answer(example, training)
        count = len(example.images) + (1 if example.video is not None else 0)
        text = self._text_length(question) + (self._text_length(answer) + 1 if answer is not None else 0)
        return text + 2 + count * self.probe_tokens()

    def probe_tokens(self) -> int:
        return int(self.processor.image_seq_length)
