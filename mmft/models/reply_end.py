"""Where an assistant reply ends, read from the chat template and the generation config, so that no family needs a
table entry to say it.

The template's text after a reply names the end-of-turn token (ChatML's ``<|im_end|>``, Gemma's ``<end_of_turn>``,
vicuna's ``</s>``). A template that writes nothing there (GLM-4.1V, whose next role token ends a reply) gets the
generation config's first end-of-sequence token appended to every reply, so training teaches the model to stop
where generation stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmft.errors import InputError

SENTINEL = "mmft-reply-sentinel"


class ReplyEndError(InputError, ValueError):
    """Neither the chat template nor the generation config says where a reply ends."""


@dataclass(frozen=True)
class ReplyEnd:
    """``token_id`` ends a reply; ``appended`` is the text the collate adds after each reply (empty when the template
    writes the end itself); generation stops at any of ``stop_ids``."""

    token_id: int
    appended: str
    stop_ids: tuple[int, ...]


def find_reply_end(processor: Any, generation_config: Any, source: str) -> ReplyEnd:
    """The reply end of ``processor``'s chat template and the model's ``generation_config`` (``source`` names the
    checkpoint in errors)."""
    tokenizer = processor.tokenizer
    eos = generation_config.eos_token_id
    eos_ids = [int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]) if i is not None]
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": SENTINEL}]}]
    text = processor.apply_chat_template(messages, tokenize=False)
    if SENTINEL not in text:
        raise ReplyEndError(f"{source}: the chat template does not write an assistant reply's text (rendered: "
                            f"{text[-200:]!r}); mmft cannot find where replies end: give a template that does")
    after = text[text.index(SENTINEL) + len(SENTINEL):]
    special = set(tokenizer.all_special_ids) | set(eos_ids)
    written = [t for t in tokenizer(after, add_special_tokens=False)["input_ids"] if t in special]
    if written:
        end, appended = int(written[0]), ""
    elif eos_ids:
        end, appended = eos_ids[0], tokenizer.convert_ids_to_tokens(eos_ids[0])
    else:
        raise ReplyEndError(
            f"{source}: the chat template writes no end-of-turn token after a reply and the generation config has no "
            "eos_token_id: set generation_config.json's eos_token_id to the token that ends a reply"
        )
    return ReplyEnd(end, appended, tuple(dict.fromkeys([end, *eos_ids])))
