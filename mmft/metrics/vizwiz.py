"""VizWiz-VQA: VQA accuracy overall and per answer type, and how well "unanswerable" is recognised."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from mmft.metrics.normalize import normalize_vqa_answer
from mmft.metrics.vqa import _check_lengths, vqa_score
from mmft.metrics.vqa_eval import vizwiz_score, vqa_eval_reply

ANSWER_TYPES = ("yes/no", "number", "other", "unanswerable")
UNANSWERABLE = "unanswerable"


class VizWizAccuracy(Metric):
    """The official VizWiz-VQA evaluation, as torchmetrics state.

    - ``accuracy`` (the headline): VizWiz's VQA accuracy (:func:`~mmft.metrics.vqa_eval.vizwiz_score`: the
      processed reply against the 10 answers as annotated) against the 10 answers, in which
      "unanswerable" is an ordinary answer string: a question most annotators could not answer is answered right
      by replying "Unanswerable", as LLaVA-1.5's VizWiz prompt asks.
    - ``accuracy_<type>`` for the answer types ``yes/no`` (key ``accuracy_yes_no``), ``number``, ``other`` and
      ``unanswerable``.
    - ``unanswerable_f1`` and ``unanswerable_average_precision``: the official answerability scores with
      unanswerable as the positive class, a reply counting as "unanswerable" when it processes to that word (the
      average precision of such 0/1 scores is ``recall * precision + (1 - recall) * share of unanswerable``).

    ``update(preds, references, categories)``: replies, each question's answers and its answer type (the VizWiz
    reader gives ``unanswerable`` to the questions marked ``answerable: 0``). Sums are summed across processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    headline = "accuracy"
    score = staticmethod(vizwiz_score)
    process = staticmethod(vqa_eval_reply)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        size = len(ANSWER_TYPES)
        self.add_state("score_sum", default=torch.zeros(size, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(size, dtype=torch.int64), dist_reduce_fx="sum")
        # unanswerable as the positive class: TP, FP, TN, FN
        self.add_state("detection", default=torch.zeros(4, dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self, preds: Sequence[str], references: Sequence[Sequence[str]], categories: Sequence[str | None]
    ) -> None:
        _check_lengths(preds, references)
        for index, (reply, answers, answer_type) in enumerate(zip(preds, references, categories, strict=True)):
            if answer_type not in ANSWER_TYPES:
                raise ValueError(
                    f"VizWiz question {index} has answer type {answer_type!r}, not one of {list(ANSWER_TYPES)}: "
                    "read VizWiz with data_modules.VizWiz, which sets each question's answer type"
                )
            slot = ANSWER_TYPES.index(answer_type)
            self.score_sum[slot] += self.score(reply, answers)
            self.count[slot] += 1
            said, truly = self.process(reply) == UNANSWERABLE, answer_type == UNANSWERABLE
            self.detection[(0 if truly else 1) if said else (3 if truly else 2)] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        counts, sums = self.count.tolist(), self.score_sum.tolist()
        total = sum(counts)
        results = {"accuracy": sum(sums) / total if total else float("nan")}
        for answer_type, score, count in zip(ANSWER_TYPES, sums, counts):
            if count:
                results[f"accuracy_{answer_type.replace('/', '_')}"] = score / count
        tp, fp, tn, fn = self.detection.tolist()
        if tp + fn:
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn)
            results["unanswerable_f1"] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            share = (tp + fn) / (tp + fp + tn + fn)
            results["unanswerable_average_precision"] = recall * precision + (1 - recall) * share
        return {key: torch.tensor(value, dtype=torch.float32, device=self.device) for key, value in results.items()}


class LenientVizWizAccuracy(VizWizAccuracy):
    """VizWiz with the lenient VQA accuracy (:func:`~mmft.metrics.vqa_score`: the answers normalised too, so "2"
    matches "Two")."""

    score = staticmethod(vqa_score)
    process = staticmethod(normalize_vqa_answer)
