"""Example lengths for the training benchmark: drawn from a modelled mix, or measured from a dataset file.

The modelled mixes follow their datasets' published composition (LLaVA-1.5's table of its 665K instruction mix; a
video instruction mix of captions, open and multiple-choice questions with some image data), with each source's
text length a log-normal around a typical conversation of that source and its visual tokens fixed (LLaVA-1.5: 576
per 336 px image; video: 32 frames of 49 tokens). They are models of the mixes, not measurements: measure the real
one with ``--llava-json`` (a LLaVA-format file and a tokenizer) or give lengths with ``--lengths``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LLAVA_IMAGE_TOKENS = 576  # CLIP ViT-L/14 at 336 px: 24 x 24 patches


class LengthsError(ValueError):
    """A lengths or LLaVA file the benchmark cannot read; the message names the file and the entry."""


@dataclass(frozen=True)
class Source:
    """One source of a mix: its share of the examples, visual tokens, and text tokens (log-normal median, sigma)."""

    name: str
    examples: int
    visual_tokens: int
    text_median: float
    text_sigma: float
    reply_share: float  # the supervised share of the text (the assistant's replies)


MIXES: dict[str, tuple[Source, ...]] = {
    # LLaVA-1.5 (Liu et al., 2023, table 7): 665K conversations; multi-question VQA sources hold several short
    # question-answer turns per image, ShareGPT is long text-only chat
    "llava665k": (
        Source("llava_158k", 158_000, LLAVA_IMAGE_TOKENS, 260, 0.6, 0.6),
        Source("sharegpt", 40_000, 0, 900, 0.8, 0.7),
        Source("vqav2", 83_000, LLAVA_IMAGE_TOKENS, 120, 0.5, 0.15),
        Source("gqa", 72_000, LLAVA_IMAGE_TOKENS, 150, 0.5, 0.15),
        Source("okvqa", 9_000, LLAVA_IMAGE_TOKENS, 40, 0.4, 0.2),
        Source("ocrvqa", 80_000, LLAVA_IMAGE_TOKENS, 100, 0.4, 0.2),
        Source("aokvqa", 66_000, LLAVA_IMAGE_TOKENS, 60, 0.4, 0.3),
        Source("textcaps", 22_000, LLAVA_IMAGE_TOKENS, 40, 0.3, 0.5),
        Source("refcoco", 48_000, LLAVA_IMAGE_TOKENS, 250, 0.5, 0.3),
        Source("vg", 86_000, LLAVA_IMAGE_TOKENS, 250, 0.5, 0.3),
    ),
    # a video instruction mix: 32 frames of 49 tokens each, with image and text data beside it
    "video": (
        Source("video_caption", 60_000, 32 * 49, 180, 0.5, 0.8),
        Source("video_open_qa", 60_000, 32 * 49, 70, 0.5, 0.5),
        Source("video_mcq", 30_000, 32 * 49, 90, 0.3, 0.05),
        Source("image_qa", 40_000, LLAVA_IMAGE_TOKENS, 150, 0.6, 0.3),
        Source("text", 10_000, 0, 600, 0.8, 0.7),
    ),
}


@dataclass(frozen=True)
class ExampleLength:
    """An example's visual tokens (first), text tokens and supervised tokens (the text's end)."""

    visual: int
    text: int
    supervised: int

    @property
    def total(self) -> int:
        return self.visual + self.text


def draw(mix: str, count: int, max_length: int, seed: int) -> list[ExampleLength]:
    """``count`` examples of the modelled ``mix``, each cut to ``max_length`` tokens."""
    sources = MIXES[mix]
    rng = np.random.default_rng(seed)
    weights = np.array([s.examples for s in sources], dtype=float)
    picks = rng.choice(len(sources), size=count, p=weights / weights.sum())
    examples = []
    for pick in picks:
        source = sources[pick]
        text = max(8, int(rng.lognormal(np.log(source.text_median), source.text_sigma)))
        text = min(text, max_length - source.visual_tokens)
        examples.append(ExampleLength(source.visual_tokens, text, max(1, int(text * source.reply_share))))
    return examples


def measured(path: Path, tokenizer: str, count: int, max_length: int, seed: int) -> list[ExampleLength]:
    """``count`` examples of a LLaVA-format file, their text tokenized with ``tokenizer`` and 576 visual tokens an
    image (the gpt turns supervised), cut to ``max_length``."""
    from transformers import AutoTokenizer

    records = _json(path)
    if not isinstance(records, list) or not records:
        raise LengthsError(f"{path}: not a LLaVA-format file (a non-empty JSON list of records)")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(records), size=min(count, len(records)), replace=False)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    examples = []
    for index in chosen:
        record = records[int(index)]
        turns = record.get("conversations") if isinstance(record, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str)
                                                  for t in turns):
            raise LengthsError(f"{path}#{int(index)}: a record needs conversations, a list of {{from, value}} turns")
        lengths = [len(tok(turn["value"], add_special_tokens=False)["input_ids"]) for turn in turns]
        replies = sum(n for n, turn in zip(lengths, turns) if turn.get("from") == "gpt")
        images = record.get("image")
        visual = LLAVA_IMAGE_TOKENS * (len(images) if isinstance(images, list) else int(images is not None))
        text = min(sum(lengths), max_length - visual)
        examples.append(ExampleLength(visual, text, max(1, min(replies, text))))
    return examples


def given(path: Path) -> list[ExampleLength]:
    """Lengths from a JSON list of ``[visual, text, supervised]`` triples (``0 < supervised <= text``)."""
    triples = _json(path)
    if not isinstance(triples, list) or not triples:
        raise LengthsError(f"{path}: expected a non-empty JSON list of [visual, text, supervised] triples")
    examples = []
    for number, triple in enumerate(triples):
        if (not isinstance(triple, list) or len(triple) != 3 or not all(isinstance(n, int) for n in triple)
                or triple[0] < 0 or not 0 < triple[2] <= triple[1]):
            raise LengthsError(f"{path}#{number}: {triple!r} is not [visual >= 0, text, 0 < supervised <= text]")
        examples.append(ExampleLength(*triple))
    return examples


def _json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LengthsError(f"{path}: {error}") from None
