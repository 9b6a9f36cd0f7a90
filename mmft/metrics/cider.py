"""CIDEr-D, the captioning metric that the COCO caption evaluation reports as "CIDEr".

For each image, the candidate and each reference become TF-IDF vectors of their n-grams (n = 1..4): term frequency
times ``log(N / df)``, where N is the number of images and df the number of images whose references contain the
n-gram. Per n, the similarity to one reference is ``sum_g min(c_g, r_g) * r_g / (|c| |r|)`` (the candidate's weights
clipped at the reference's) times the length penalty ``exp(-(len_c - len_r)^2 / (2 * 6^2))``. The image score is the
mean over n, averaged over the references, times 10; CIDEr-D is the mean over images. Papers print it x100.

Document frequency comes from the whole evaluated corpus, so the metric keeps every string and computes only at the
end (gathering the strings from all processes first).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch
from torchmetrics import Metric

from mmft.metrics.strings import cat_state, decode_strings, encode_strings

_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.'/&]\w+)*|\.\.\.|--|\S")
# The tokens that the COCO evaluation removes after PTB tokenisation (brackets appear there as -LRB- etc.).
_PUNCTUATION = frozenset(
    {"''", "'", "``", "`", '"', "(", ")", "[", "]", "{", "}", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
)


def tokenize_caption(text: str) -> list[str]:
    """Lowercase and tokenise like the Stanford PTB tokenizer used by the COCO evaluation, then drop punctuation.

    A Python approximation of that Java tokenizer: clitics are split off ("dog's" -> dog 's, "don't" -> do n't),
    hyphenated words, numbers with a decimal point and words with inner apostrophes stay whole, and the punctuation
    tokens that the COCO evaluation removes are removed. Rare constructs (abbreviations with periods, URLs) may be
    tokenised differently from the Java tool.
    """
    return [t for t in _TOKEN.findall(_CLITIC.sub(r" \1", text.lower())) if t not in _PUNCTUATION]


def _ngrams(tokens: list[str], n_max: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, n_max + 1) for i in range(len(tokens) - n + 1))


def cider_d_scores(
    candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
) -> list[float]:
    """CIDEr-D of each image (see the module docstring); the corpus score is their mean."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("CIDEr-D needs at least one reference caption per image")
    cand_tokens = [tokenize_caption(c) for c in candidates]
    ref_tokens = [[tokenize_caption(r) for r in refs] for refs in references]
    ref_counts = [[_ngrams(tokens, n) for tokens in refs] for refs in ref_tokens]
    document_frequency: Counter[tuple[str, ...]] = Counter()
    for counts in ref_counts:
        document_frequency.update(set().union(*counts))
    log_images = math.log(len(candidates)) if candidates else 0.0

    def tfidf(counts: Counter) -> tuple[list[dict], list[float]]:
        vectors: list[dict] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vectors[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, document_frequency[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vectors]
        return vectors, norms

    scores = []
    for tokens, refs_tokens, refs_counts in zip(cand_tokens, ref_tokens, ref_counts):
        cand_vec, cand_norm = tfidf(_ngrams(tokens, n))
        total = 0.0
        for ref_toks, counts in zip(refs_tokens, refs_counts):
            ref_vec, ref_norm = tfidf(counts)
            penalty = math.exp(-((len(tokens) - len(ref_toks)) ** 2) / (2 * sigma**2))
            for k in range(n):
                dot = sum(min(w, ref_vec[k].get(g, 0.0)) * ref_vec[k].get(g, 0.0) for g, w in cand_vec[k].items())
                if cand_norm[k] and ref_norm[k]:
                    dot /= cand_norm[k] * ref_norm[k]
                total += dot * penalty / n
        scores.append(10.0 * total / len(refs_tokens))
    return scores


_STATE_DTYPES = {
    "pred_bytes": torch.uint8,
    "pred_lengths": torch.int64,
    "ref_bytes": torch.uint8,
    "ref_lengths": torch.int64,
    "ref_counts": torch.int64,
}


class CIDErD(Metric):
    """Corpus CIDEr-D (raw, as pycocoevalcap: ~1.16 for a strong COCO model, printed as 116 in papers).

    ``update(preds, references)``: one generated caption per image and that image's reference captions. The
    strings are tensor states (UTF-8 bytes), so torchmetrics gathers them across processes before ``compute``.
    Document frequencies come from the references of the corpus that is evaluated, as in the COCO evaluation.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, n: int = 4, sigma: float = 6.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.sigma = sigma
        for name in _STATE_DTYPES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, preds: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        if isinstance(preds, str):
            raise TypeError("preds must be a sequence of strings, not one string")
        if len(preds) != len(references):
            raise ValueError(f"{len(preds)} predictions but {len(references)} reference lists")
        if any(isinstance(refs, str) or len(refs) == 0 for refs in references):
            raise ValueError("each image needs a non-empty list of reference captions")
        data, lengths = encode_strings(preds, self.device)
        self.pred_bytes.append(data)
        self.pred_lengths.append(lengths)
        data, lengths = encode_strings([r for refs in references for r in refs], self.device)
        self.ref_bytes.append(data)
        self.ref_lengths.append(lengths)
        self.ref_counts.append(torch.tensor([len(refs) for refs in references], dtype=torch.int64, device=self.device))

    def sync(self, *args, **kwargs) -> None:
        """Give a process that saw no data empty states of the right dtypes before gathering: torchmetrics would
        make them ``self.dtype`` (float), and gloo/NCCL cannot gather tensors whose dtypes differ across ranks."""
        for name, dtype in _STATE_DTYPES.items():
            if not getattr(self, name):
                getattr(self, name).append(torch.empty(0, dtype=dtype, device=self.device))
        super().sync(*args, **kwargs)

    def compute(self) -> torch.Tensor:
        preds = decode_strings(self.pred_bytes, self.pred_lengths)
        flat_refs = decode_strings(self.ref_bytes, self.ref_lengths)
        counts = cat_state(self.ref_counts).to(torch.int64).tolist()
        references, start = [], 0
        for count in counts:
            references.append(flat_refs[start : start + count])
            start += count
        scores = cider_d_scores(preds, references, self.n, self.sigma)
        return torch.tensor(sum(scores) / len(scores) if scores else float("nan"), device=self.device)
