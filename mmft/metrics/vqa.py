"""VQA accuracy (VQAv2, TextVQA) by the pipelines behind the published numbers and leniently, GQA accuracy as
LLaVA's script scores it, and normalised exact-match accuracy (NLVR2, TVQA, ...)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchmetrics import Metric

from mmft.metrics.normalize import normalize_vqa_answer
from mmft.metrics.vqa_eval import leave_one_out_accuracy, textvqa_score, vqav2_score


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """One question's lenient VQA accuracy: for each answer left out, ``min(1, matches among the rest / 3)``,
    averaged over the answers: with 10 answers, 1 match scores 0.3, 2 score 0.6, 3 score 0.9, 4 or more score 1.

    Unlike the official script, the answers get the full normalisation too (the official one only strips their
    punctuation, and only when they disagree); VQAv2's answers are already normalised, so scores are the same there,
    and other datasets' raw answers ("Two") are treated like predictions.
    """
    return leave_one_out_accuracy(normalize_vqa_answer(prediction), [normalize_vqa_answer(a) for a in answers])


class _MeanScore(Metric):
    """Mean of a per-example score; the sum and count are tensor states, summed across processes."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def _add(self, scores: list[float]) -> None:
        self.score_sum += sum(scores)
        self.count += len(scores)

    def compute(self) -> torch.Tensor:
        return (self.score_sum / self.count).float()


def _check_lengths(preds: Sequence[str], references: Sequence) -> None:
    if isinstance(preds, str):
        raise TypeError("preds must be a sequence of strings, not one string")
    if len(preds) != len(references):
        raise ValueError(f"{len(preds)} predictions but {len(references)} reference lists")


class VQAAccuracy(_MeanScore):
    """VQAv2 accuracy as the published numbers are made (:func:`~mmft.metrics.vqa_eval.vqav2_score`: the EvalAI
    processor on the prediction, then the official evaluation), averaged over questions; a fraction in [0, 1].

    ``update(preds, references)``: generated answers and, per question, the annotators' answers (10 in VQAv2).
    """

    score = staticmethod(vqav2_score)

    def update(self, preds: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        _check_lengths(preds, references)
        self._add([self.score(p, refs) for p, refs in zip(preds, references)])


class TextVQAAccuracy(VQAAccuracy):
    """TextVQA accuracy by its evaluator (:func:`~mmft.metrics.vqa_eval.textvqa_score`: both sides through the
    EvalAI processor)."""

    score = staticmethod(textvqa_score)


class LenientVQAAccuracy(VQAAccuracy):
    """VQA accuracy with the full normalisation on both sides, always (:func:`vqa_score`): more forgiving than the
    published pipelines ("Yes" and "t-shirt" score where they may not), so reported under its own name."""

    score = staticmethod(vqa_score)


def gqa_answer(prediction: str) -> str:
    """The prediction as LLaVA's GQA conversion hands it to the GQA evaluation: final periods removed, lower-cased."""
    return prediction.rstrip(".").lower()


class GQAAccuracy(_MeanScore):
    """GQA accuracy as LLaVA's scripts score it: :func:`gqa_answer` equal to the answer, nothing else normalised.

    ``update(preds, references)``: each reference is one string or a list of acceptable strings.
    """

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        _check_lengths(preds, references)
        self._add([float(gqa_answer(p) in ([refs] if isinstance(refs, str) else refs))
                   for p, refs in zip(preds, references)])


class ExactMatchAccuracy(_MeanScore):
    """Fraction of predictions equal to a reference after normalisation (the VQA normaliser by default).

    ``update(preds, references)``: each reference is one string or a list of acceptable strings.
    ``normalize=False`` compares stripped strings only.
    """

    def __init__(self, normalize: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.normalize: Callable[[str], str] = normalize_vqa_answer if normalize else str.strip

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        _check_lengths(preds, references)
        scores = []
        for prediction, refs in zip(preds, references):
            refs = [refs] if isinstance(refs, str) else refs
            scores.append(float(self.normalize(prediction) in {self.normalize(r) for r in refs}))
        self._add(scores)
