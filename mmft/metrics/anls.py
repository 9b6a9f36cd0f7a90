"""ANLS, the Average Normalised Levenshtein Similarity of DocVQA / ST-VQA / InfographicVQA."""

from __future__ import annotations

from collections.abc import Sequence

from mmft.metrics.vqa import _check_lengths, _MeanScore


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls_score(prediction: str, references: Sequence[str], threshold: float = 0.5) -> float:
    """``max`` over references of ``1 - distance / max(len)`` on lowercased, stripped strings (inner runs of
    whitespace collapsed); a similarity below ``threshold`` counts as 0."""
    if not references:
        raise ValueError("ANLS needs at least one reference answer")
    prediction = " ".join(prediction.lower().split())
    best = 0.0
    for reference in references:
        reference = " ".join(reference.lower().split())
        longest = max(len(prediction), len(reference))
        similarity = 1.0 - levenshtein(prediction, reference) / longest if longest else 1.0
        best = max(best, similarity if similarity >= threshold else 0.0)
    return best


class ANLS(_MeanScore):
    """Mean ANLS over questions (see :func:`anls_score`); ``update(preds, references)`` with a string or a list of
    acceptable strings per question."""

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        _check_lengths(preds, references)
        self._add(
            [
                anls_score(p, [refs] if isinstance(refs, str) else refs, self.threshold)
                for p, refs in zip(preds, references)
            ]
        )
