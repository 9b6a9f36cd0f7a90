"""Appending a task's instruction to the questions of a conversation (the instructions: :mod:`mmft.tasks`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from data_modules.records import Turn


def with_instruction(turns: Sequence[Turn], instruction: str | None) -> list[Turn]:
    """Append ``instruction`` (after a newline) to every user turn; an empty question becomes the instruction."""
    if not instruction:
        return list(turns)
    return [
        replace(t, text=f"{t.text}\n{instruction}" if t.text else instruction) if t.role == "user" else t
        for t in turns
    ]
