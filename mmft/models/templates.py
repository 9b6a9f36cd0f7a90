"""Conversation templates: turn a list of Turns into one string plus the character spans the model must learn.

A template renders text only; tokenisation happens afterwards (see `llava_collate`), and a token is supervised
when its character span overlaps a supervised span. Each supervised span starts right after the generation prompt
(`"ASSISTANT:"` for vicuna_v1) and ends after the end-of-turn marker, so training teaches exactly the text that
greedy decoding must produce after the eval prompt, whatever the tokenizer does with the space in between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from data_modules.records import Turn
from mmft.errors import InputError

IMAGE_PLACEHOLDER = "<image>"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TemplateName = Literal["vicuna_v1", "chat_template"]
# vicuna_v1 as a Hugging Face chat template, for exported processors: the same text as `render` (tested), with
# "<image>\n" before the text of a turn for each image part (transformers' multimodal message format)
VICUNA_V1_CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}{%- else -%}"
    "{%- for part in content if part['type'] == 'image' -%}<image>\n{% endfor -%}"
    "{%- for part in content if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    f'{{{{ "{VICUNA_V1_SYSTEM} " }}}}'
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}USER: {{ text(message['content']) }} {% else -%}"
    "ASSISTANT: {{ text(message['content']) }}{{ eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
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


def render(
    template: TemplateName,
    turns: Sequence[Turn],
    eos: str,
    tokenizer: Any = None,
    add_generation_prompt: bool = False,
    source: str = "",
) -> Rendered:
    """Render ``turns`` with ``template``; the assistant turns (plus ``eos``) are the supervised spans.

    With ``add_generation_prompt`` the text ends where the next assistant reply would start (the eval prompt).
    ``chat_template`` uses ``tokenizer.apply_chat_template`` and finds each reply by rendering the prefixes.
    """
    check_turns(turns, source)
    if template == "vicuna_v1":
        return _render_vicuna_v1(turns, eos, add_generation_prompt)
    if template == "chat_template":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                "template 'chat_template' needs a tokenizer with a chat template; this tokenizer has none: "
                "use template: vicuna_v1"
            )
        return _render_chat_template(turns, tokenizer, add_generation_prompt, source)
    raise TemplateError(f"unknown template {template!r}: choose vicuna_v1 or chat_template")


def _render_vicuna_v1(turns: Sequence[Turn], eos: str, add_generation_prompt: bool) -> Rendered:
    # LLaVA-1.5 conv_vicuna_v1 (separator style TWO): "<system> USER: <q> ASSISTANT: <a></s>USER: ..."
    text = VICUNA_V1_SYSTEM + " "
    spans = []
    for turn in turns:
        if turn.role == "user":
            text += f"USER: {turn.text} "
        else:
            text += "ASSISTANT:"
            start = len(text)
            text += f" {turn.text}{eos}"
            spans.append((start, len(text)))
    if add_generation_prompt:
        text += "ASSISTANT:"
    return Rendered(text, tuple(spans))


def _render_chat_template(turns: Sequence[Turn], tokenizer: Any, add_generation_prompt: bool, source: str) -> Rendered:
    messages = [{"role": t.role, "content": t.text} for t in turns]

    def chat(msgs: list[dict], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)

    return render_messages(messages, chat, add_generation_prompt, source)


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
                "assistant replies cannot be located for label masking: use template: vicuna_v1"
            )
        spans.append((len(start_text), len(end_text)))
    return Rendered(text, tuple(spans))
