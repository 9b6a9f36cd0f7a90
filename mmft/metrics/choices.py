"""Multiple-choice benchmarks: the option letter read from a reply, by the rules behind the published numbers
(LLaVA's ScienceQA script; VLMEvalKit's rule-based MMBench matching, without its LLM-judge fallback) or leniently,
letter accuracy (ScienceQA) and MMBench's circular evaluation."""

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


SCIENCEQA_OPTIONS = ("A", "B", "C", "D", "E")
_SCIENCEQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # "." is any character, as written there
# VLMEvalKit replaces these by spaces before looking for a lone option letter
_VLMEVALKIT_MARKS = ".()[],:;!*#{}"
_VLMEVALKIT_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                        "I'm sorry, but without the image provided", "Cannot determine the answer")
NO_ANSWER = "Z"
_OPTION_LINE = re.compile(r"^([A-Z])\. (.*)$", re.MULTILINE)


def scienceqa_choice(reply: str) -> str | None:
    """The option letter LLaVA's ScienceQA evaluation reads: the reply is exactly a letter, or starts with a letter
    and ". ", or holds "The answer is X" followed by any character exactly once; None otherwise (counted wrong)."""
    if reply in SCIENCEQA_OPTIONS:
        letter = reply
    elif len(reply) >= 3 and reply[0] in SCIENCEQA_OPTIONS and reply[1:3] == ". ":
        letter = reply[0]
    else:
        found = _SCIENCEQA_ANSWER_IS.findall(reply)
        letter = found[0] if len(found) == 1 else None
    return letter if letter in SCIENCEQA_OPTIONS else None


def mmbench_choice(reply: str, options: dict[str, str]) -> str:
    """The option letter VLMEvalKit's rule-based matching reads (``options``: letter -> option text): a lone option
    letter once the marks ``.()[],:;!*#{}`` are spaces ("Answer: D", "**B**", "Option B"), else the one option whose
    text the lower-cased reply contains; ``"Z"`` (no answer) when neither finds exactly one."""
    if "Failed to obtain answer via API" not in reply:  # such a reply goes to the text match alone
        if any(refusal in reply for refusal in _VLMEVALKIT_REFUSALS):
            return NO_ANSWER
        spaced = reply
        for mark in _VLMEVALKIT_MARKS:
            spaced = spaced.replace(mark, " ")
        words = spaced.split()
        letters = [letter for letter in options if letter in words]
        if len(letters) == 1:
            return letters[0]
        if not letters and NO_ANSWER in words:
            return NO_ANSWER
    lowered = reply.lower()
    found = [letter for letter, text in options.items() if str(text).lower() in lowered]
    return found[0] if len(found) == 1 else NO_ANSWER


def listed_options(prompt: str) -> dict[str, str]:
    """The options a multiple-choice prompt lists, one ``"X. text"`` line each (as the MMBench reader writes)."""
    return dict(_OPTION_LINE.findall(prompt))


def _letters(references: str | Sequence[str]) -> set[str]:
    return {r.strip().upper() for r in ([references] if isinstance(references, str) else references)}


class LetterAccuracy(_MeanScore):
    """Fraction of replies whose option letter (:func:`extract_choice`) is the reference letter (ScienceQA-IMG).

    ``update(preds, references)``: generated replies and each question's answer letter (a string or a list).
    """

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        _check_lengths(preds, references)
        self._add([float(extract_choice(p) in _letters(refs)) for p, refs in zip(preds, references)])


class ScienceQAAccuracy(_MeanScore):
    """ScienceQA accuracy as LLaVA's evaluation script scores it (:func:`scienceqa_choice`): "b", "(B)" or "B)"
    count wrong there. ``update(preds, references)`` as :class:`LetterAccuracy`."""

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        _check_lengths(preds, references)
        self._add([float(scienceqa_choice(p) in _letters(refs)) for p, refs in zip(preds, references)])


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
    only if every rotation is answered with the right letter, read by VLMEvalKit's rules (:func:`mmbench_choice`,
    over the options the prompt lists; its LLM-judge fallback for replies those rules cannot read is left out, so
    such a reply counts wrong).

    ``update(preds, references, ids, prompts)``: replies, the right letter of each rotated copy, its id
    ``"<question index>/<rotation>of<rotations>"`` (as the MMBench reader writes them) and its prompt. ``compute``
    returns ``circular`` (the headline) and ``first_pass`` (accuracy on the unrotated copies alone). The states are
    the per-copy outcomes, gathered from every process, so rotations answered on different processes still meet; a
    copy seen twice (DDP pads shards by repeating examples) counts once; a question with a rotation missing is an
    error.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    headline = "circular"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("question", "rotation", "rotations", "correct"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]], ids: Sequence[str],
               prompts: Sequence[str]) -> None:
        _check_lengths(preds, references)
        if not len(ids) == len(prompts) == len(preds):
            raise ValueError(f"{len(preds)} predictions but {len(ids)} ids and {len(prompts)} prompts")
        parsed = [parse_rotation_id(i) for i in ids]
        correct = [int(self.choice(p, prompt) in _letters(refs)) for p, refs, prompt in zip(preds, references, prompts)]
        for k, name in enumerate(("question", "rotation", "rotations")):
            getattr(self, name).append(torch.tensor([p[k] for p in parsed], dtype=torch.int64, device=self.device))
        self.correct.append(torch.tensor(correct, dtype=torch.int64, device=self.device))

    @staticmethod
    def choice(reply: str, prompt: str) -> str | None:
        return mmbench_choice(reply, listed_options(prompt))

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


class LenientCircularAccuracy(CircularAccuracy):
    """The circular evaluation with lenient letter reading (:func:`extract_choice`: a lower-case "a" counts, "Answer:
    D" does not)."""

    @staticmethod
    def choice(reply: str, prompt: str) -> str | None:
        return extract_choice(reply)
