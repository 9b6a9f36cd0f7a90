"""POPE (object hallucination): yes/no questions scored per split with "yes" as the positive class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from mmft.metrics.vqa import _check_lengths

POPE_SPLITS = ("random", "popular", "adversarial")


def pope_answer(reply: str) -> str:
    """LLaVA's reading of a POPE reply: its first sentence (up to the first period) says "no" when, commas removed,
    one of its space-separated words is ``No``, ``no`` or ``not``; any other reply says "yes"."""
    words = reply.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def _label(references: str | Sequence[str], index: int) -> str:
    labels = {r.strip().lower() for r in ([references] if isinstance(references, str) else references)}
    if len(labels) != 1 or not labels <= {"yes", "no"}:
        raise ValueError(f"POPE question {index}: the reference must be 'yes' or 'no', got {sorted(labels)}")
    return labels.pop()


def _ratio(numerator: int, denominator: int) -> float:
    """0 when undefined (no predicted or no actual positives), as lmms-eval; LLaVA's script would divide by zero."""
    return numerator / denominator if denominator else 0.0


class POPE(Metric):
    """Accuracy, precision, recall, F1 and yes-ratio (share of "yes" replies) per POPE split, and ``f1_average``,
    the mean F1 over the splits that LLaVA-1.5's table reports (the headline).

    ``update(preds, references, categories)``: replies (read by :func:`pope_answer`), each question's label
    ("yes"/"no") and its split. The state is one ``[split, (TP, FP, TN, FN)]`` count tensor, summed across
    processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    headline = "f1_average"

    def __init__(self, splits: Sequence[str] = POPE_SPLITS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.splits = tuple(splits)
        self.add_state("counts", default=torch.zeros(len(self.splits), 4, dtype=torch.int64), dist_reduce_fx="sum")

    def update(
        self, preds: Sequence[str], references: Sequence[str | Sequence[str]], categories: Sequence[str | None]
    ) -> None:
        _check_lengths(preds, references)
        for index, (reply, refs, split) in enumerate(zip(preds, references, categories, strict=True)):
            if split not in self.splits:
                raise ValueError(
                    f"POPE question {index} is in split {split!r}, not one of {list(self.splits)}: read POPE with "
                    "data_modules.POPE (it sets each question's split) or set the metric's `splits`"
                )
            said_yes, is_yes = pope_answer(reply) == "yes", _label(refs, index) == "yes"
            column = (0 if is_yes else 1) if said_yes else (3 if is_yes else 2)
            self.counts[self.splits.index(split), column] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        results: dict[str, float] = {}
        f1s = []
        for split, (tp, fp, tn, fn) in zip(self.splits, self.counts.tolist()):
            total = tp + fp + tn + fn
            if not total:
                continue
            precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
            f1 = _ratio(2 * precision * recall, precision + recall)
            results.update(
                {
                    f"{split}_accuracy": (tp + tn) / total,
                    f"{split}_precision": precision,
                    f"{split}_recall": recall,
                    f"{split}_f1": f1,
                    f"{split}_yes_ratio": (tp + fp) / total,
                }
            )
            f1s.append(f1)
        results["f1_average"] = sum(f1s) / len(f1s) if f1s else float("nan")
        return {key: torch.tensor(value, dtype=torch.float32, device=self.device) for key, value in results.items()}
