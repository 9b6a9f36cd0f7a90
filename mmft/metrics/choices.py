"""Multiple-choice benchmarks: the option letter read from a reply, letter accuracy (ScienceQA) and MMBench's
circular evaluation."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torchmetrics import Metric

from mmft.metrics.strings import cat_state
from mmft.metrics.vqa import _check_lengths, _MeanScore

# "B", "B.", "B. a cat", "B)", "(B)", "B:" at the start of the reply
_LEADING_LETTER = re.compile(r"\(?([A-Z])(?:[.:)]|$)")
_ANSWER_IS = re.compile(r"[Tt]he answer is:?\s*\(?([A-Z])\b")
# the ids the MMBench reader gives its rotated copies: "<question index>/<rotation>of<rotations>"
_ROTATION_ID = re.compile(r"(?P<question>-?\d+)/(?P<rotation>\d+)of(?P<rotations>\d+)")


def extract_choice(reply: str) -> str | None:
    """The option letter a reply gives, or None when it gives none (the question then counts as wrong).

    LLaVA's ScienceQA rules, which lmms-eval's ScienceQA and MMBench tasks follow: the reply is the letter alone
    (any case, a final period allowed), or starts with the capital letter followed by ``.``, ``)`` or ``:`` (or in
    parentheses), or contains "The answer is X".
    """
    text = reply.strip()
    bare = text.rstrip(".")
    if len(bare) == 1 and bare.isalpha():
        return bare.upper()
    match = _LEADING_LETTER.match(text) or _ANSWER_IS.search(text)
    return match.group(1) if match else None


def _letters(references: str | Sequence[str]) -> set[str]:
    return {r.strip().upper() for r in ([references] if isinstance(references, str) else references)}


class LetterAccuracy(_MeanScore):
    """Fraction of replies whose option letter (:func:`extract_choice`) is the reference letter (ScienceQA-IMG).

    ``update(preds, references)``: generated replies and each question's answer letter (a string or a list).
    """

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        _check_lengths(preds, references)
        self._add([float(extract_choice(p) in _letters(refs)) for p, refs in zip(preds, references)])


def parse_rotation_id(id_: str) -> tuple[int, int, int]:
    """``(question index, rotation, number of rotations)`` from an id ``"<index>/<rotation>of<rotations>"``."""
    match = _ROTATION_ID.fullmatch(id_)
    if match is None:
        raise ValueError(
            f"id {id_!r} does not name a rotation as '<question index>/<rotation>of<rotations>': read MMBench "
            "with data_modules.MMBench, which asks every rotation of each question"
        )
    return int(match["question"]), int(match["rotation"]), int(match["rotations"])


class CircularAccuracy(Metric):
    """MMBench's circular evaluation: each question is asked once per rotation of its options, and counts as right
    only if every rotation is answered with the right letter (:func:`extract_choice`).

    ``update(preds, references, ids)``: replies, the right letter of each rotated copy and its id
    ``"<question index>/<rotation>of<rotations>"`` (as the MMBench reader writes them). ``compute`` returns
    ``circular`` (the headline) and ``first_pass`` (accuracy on the unrotated copies alone). The states are the
    per-copy outcomes, gathered from every process, so rotations answered on different processes still meet; a copy
    seen twice (DDP pads shards by repeating examples) counts once; a question with a rotation missing is an error.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    headline = "circular"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("question", "rotation", "rotations", "correct"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]], ids: Sequence[str]) -> None:
        _check_lengths(preds, references)
        if len(ids) != len(preds):
            raise ValueError(f"{len(preds)} predictions but {len(ids)} ids")
        parsed = [parse_rotation_id(i) for i in ids]
        correct = [int(extract_choice(p) in _letters(refs)) for p, refs in zip(preds, references)]
        for k, name in enumerate(("question", "rotation", "rotations")):
            getattr(self, name).append(torch.tensor([p[k] for p in parsed], dtype=torch.int64, device=self.device))
        self.correct.append(torch.tensor(correct, dtype=torch.int64, device=self.device))

    def sync(self, *args, **kwargs) -> None:
        """A process that saw no data contributes int64 empty states (torchmetrics would make them float, which
        gloo and NCCL cannot gather beside int64 ones)."""
        for name in ("question", "rotation", "rotations", "correct"):
            if not getattr(self, name):
                getattr(self, name).append(torch.empty(0, dtype=torch.int64, device=self.device))
        super().sync(*args, **kwargs)

    def compute(self) -> dict[str, torch.Tensor]:
        columns = [cat_state(getattr(self, n)).to(torch.int64).tolist() for n in ("question", "rotation", "rotations")]
        outcomes: dict[int, dict[int, int]] = {}
        expected: dict[int, int] = {}
        for question, rotation, rotations, correct in zip(*columns, cat_state(self.correct).tolist()):
            outcomes.setdefault(question, {})[rotation] = int(correct)
            expected[question] = rotations
        for question, answered in outcomes.items():
            if sorted(answered) != list(range(expected[question])):
                raise ValueError(
                    f"MMBench question {question}: answers for rotations {sorted(answered)} of {expected[question]}; "
                    "circular evaluation needs every rotation (do not limit the test batches)"
                )
        if not outcomes:
            nan = torch.tensor(float("nan"), device=self.device)
            return {"circular": nan, "first_pass": nan}
        circular = sum(all(answered.values()) for answered in outcomes.values()) / len(outcomes)
        first_pass = sum(answered[0] for answered in outcomes.values()) / len(outcomes)
        return {
            "circular": torch.tensor(circular, device=self.device),
            "first_pass": torch.tensor(first_pass, device=self.device),
        }
