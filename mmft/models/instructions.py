"""The instruction each task appends to its questions: readers give bare questions, and LLaVA-1.5 trains and
evaluates VQA-style tasks with "Answer the question using a single word or phrase." after each (the strings of its
evaluation question files, which lmms-eval's task configs repeat)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from data_modules.records import Turn

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
UNANSWERABLE_SUFFIX = (
    f"When the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT_ANSWER_SUFFIX}"
)
LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."
# the VALUE readers' targets are the choice labels a0..a4, listed in the prompt as "a0: <choice>"
CHOICE_SUFFIX = "Answer with the option's label (a0 to a4) from the given choices directly."
CAPTION_SUFFIX = "Describe what happens in the video in one sentence."
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


def with_instruction(turns: Sequence[Turn], instruction: str | None) -> list[Turn]:
    """Append ``instruction`` (after a newline) to every user turn; an empty question becomes the instruction."""
    if not instruction:
        return list(turns)
    return [
        replace(t, text=f"{t.text}\n{instruction}" if t.text else instruction) if t.role == "user" else t
        for t in turns
    ]
