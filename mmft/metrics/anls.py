"""ANLS, the Average Normalised Levenshtein Similarity of DocVQA / ST-VQA / InfographicVQA: the Robust Reading
Competition's scoring (the default) and a lenient variant."""

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


def competition_anls_score(prediction: str, references: Sequence[str], threshold: float = 0.5) -> float:
    """The Robust Reading Competition's ANLS of one question: the distance between the lower-cased strings with
    their whitespace collapsed and stripped, divided by the longer of the strings as given (not stripped; measured
    upper-cased, so "ß" counts two), ``1 -`` the smallest such ratio over the references, and 0 below
    ``threshold``."""
    if not references:
        raise ValueError("ANLS needs at least one reference answer")
    ratios = []
    for reference in references:
        collapsed = " ".join(reference.strip().lower().split()), " ".join(prediction.strip().lower().split())
        distance = levenshtein(*collapsed)
        length = max(len(reference.upper()), len(prediction.upper()))
        ratios.append(0.0 if length == 0 else distance / length)
    similarity = 1.0 - min(ratios)
    return 0.0 if similarity < threshold else similarity


def anls_score(prediction: str, references: Sequence[str], threshold: float = 0.5) -> float:
    """Lenient ANLS: ``max`` over references of ``1 - distance / max(len)`` on lowercased, stripped strings (inner
    runs of whitespace collapsed, lengths of those strings); a similarity below ``threshold`` counts as 0."""
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
    """Mean ANLS over questions by the competition's rules (see :func:`competition_anls_score`);
    ``update(preds, references)`` with a string or a list of acceptable strings per question."""

    score = staticmethod(competition_anls_score)

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold

    def update(self, preds: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        _check_lengths(preds, references)
        self._add(
            [
                self.score(p, [refs] if isinstance(refs, str) else refs, self.threshold)
                for p, refs in zip(preds, references)
            ]
        )


class LenientANLS(ANLS):
    """Mean lenient ANLS (see :func:`anls_score`): lengths of the stripped strings."""

    score = staticmethod(anls_score)
