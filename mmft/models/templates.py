"""Rendering conversations with a chat template into one string plus the character spans the model must learn.

A template renders text only; tokenisation happens afterwards (see :mod:`mmft.models.chat_collate`), and a token is
supervised when its character span overlaps a supervised span. Each supervised span starts right after the
generation prompt (``"ASSISTANT:"`` for vicuna_v1) and ends after the end-of-turn marker, so training teaches exactly
the text that greedy decoding must produce after the eval prompt, whatever the tokenizer does with the space in
between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from data_modules.records import Turn
from mmft.errors import InputError

IMAGE_PLACEHOLDER = "<image>"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class TemplateError(InputError, ValueError):
    """A conversation cannot be rendered by the chosen template; the message names the record."""


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation: the text and the [start, end) character spans that carry labels."""

    text: str
    supervised: tuple[tuple[int, int], ...]


def check_turns(turns: Sequence[Turn], source: str) -> None:
    """Conversations alternate user / assistant and start with the user, as every template here assumes."""
    if not turns:
        raise TemplateError(f"{source}: the example has no turns")
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn.role != expected:
            raise TemplateError(
                f"{source}: turn {i} has role {turn.role!r}, expected {expected!r} "
                "(conversations must alternate user / assistant, starting with the user)"
            )


def render_messages(
    messages: Sequence[dict], chat: Callable[[list[dict], bool], str], add_generation_prompt: bool, source: str
) -> Rendered:
    """Render chat ``messages`` with ``chat(messages, add_generation_prompt)`` (a tokenizer's or processor's chat
    template), locating each assistant reply by rendering the prefixes: a reply starts where the generation prompt
    of the conversation before it ends, and ends where the template's text for that message ends (its end-of-turn
    marker and whatever the template writes after it, e.g. ChatML's newline)."""
    messages = list(messages)
    text = chat(messages, add_generation_prompt)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_text = chat(messages[:i], True)
        end_text = chat(messages[: i + 1], False)
        if not (text.startswith(start_text) and text.startswith(end_text)):
            raise TemplateError(
                f"{source}: the chat template does not render conversations prefix by prefix, so the "
                "assistant replies cannot be located for label masking: give the backbone a chat_template that does"
            )
        spans.append((len(start_text), len(end_text)))
    return Rendered(text, tuple(spans))
