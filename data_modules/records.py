"""The Example record: the one contract between dataset readers and models.

Readers turn public dataset files into Examples; a model's collate turns Examples (with their media decoded by
the dataset) into tensors. Nothing else crosses the boundary between `data_modules` and `mmft.models`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

Role = Literal["user", "assistant"]
IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class Turn:
    """One message of a conversation.

    Media placement: when an Example has several images, its turns keep one :data:`IMAGE_MARKER` per image, in
    order, where each image belongs (interleaved conversations). With one image or a video the reader removes the
    markers and the model's collate puts the media at the start of the first user turn, as LLaVA's preprocessing
    does.
    """

    role: Role
    text: str


@dataclass(frozen=True)
class Example:
    """One training or evaluation sample, independent of any tokenizer.

    ``turns`` holds the conversation (a single question/answer is one user turn and, when the answer is known, one
    assistant turn). ``references`` holds every gold answer used for scoring (10 VQA answers, 5 captions).
    ``source`` says where the record came from (``file#record``) so errors can name it. ``video_span`` is the
    ``(start, end)`` in seconds (start < end) of ``video`` that the example is about, e.g. a TVC caption's moment;
    None means the whole video. ``category`` is the subset a benchmark reports separately (POPE's split, VizWiz's
    answer type); metrics that report per subset receive it.
    """

    task: str
    id: str
    turns: tuple[Turn, ...]
    images: tuple[Path, ...] = ()
    video: Path | None = None
    references: tuple[str, ...] = ()
    source: str = ""
    video_span: tuple[float, float] | None = None
    category: str | None = None

    @property
    def prompt(self) -> str:
        """The first user message."""
        return next(t.text for t in self.turns if t.role == "user")

    @property
    def target(self) -> str | None:
        """The last assistant message, or None for an unanswered (test / predict) example."""
        answers = [t.text for t in self.turns if t.role == "assistant"]
        return answers[-1] if answers else None


@dataclass
class Sample:
    """An Example with its media decoded, as a Dataset yields it to a model's collate (in DataLoader workers)."""

    example: Example
    images: list = field(default_factory=list)  # PIL.Image.Image in RGB, in example.images order
    frames: object | None = None  # video frames, uint8 tensor [T, H, W, C], when example.video is set
    frame_times: tuple[float, ...] | None = None  # each decoded frame's time in seconds (temporal positions)
    on_error: str = "raise"  # its reader's policy, for what only the model's collate can find wrong (its media)


class RejectedSamples(ValueError):
    """Raised by a model's collate for samples it cannot take (an image its processor refuses): ``rejected`` maps
    each one's position in the batch to a message naming its record. The DataModule's collate wrapper skips and
    counts them under ``on_error="skip"`` and collates the rest; otherwise the error stands."""

    def __init__(self, rejected: dict[int, str]) -> None:
        super().__init__("; ".join(rejected.values()))
        self.rejected = rejected


class LengthCheck(NamedTuple):
    """A model collate's verdict on one Example against its token budget (``collate.check_length``), asked once per
    example when the DataModule reads its data, so that nothing fails or is silently cut mid-epoch.

    ``truncated``: the example fits only with some context cut (earlier turns, subtitles); the question, choices
    and supervised answer are kept. ``problem``: why it cannot fit at all (None when it fits). ``tokens``: its
    length as the model will see it (visual tokens included; an estimate where media sizes vary), which packing
    fills rows by; None from a collate that cannot pack.
    """

    truncated: bool = False
    problem: str | None = None
    tokens: int | None = None
