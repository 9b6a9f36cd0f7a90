"""Metrics on hand-worked examples, and their reduction across two real processes (gloo on CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_benchmark_metrics import CIRCULAR_DATA, flatten, make_benchmark_metrics, update_benchmarks

from mmft.metrics import (
    ANLS,
    CIDErD,
    CircularAccuracy,
    ExactMatchAccuracy,
    GQAAccuracy,
    LenientANLS,
    LenientVQAAccuracy,
    TextVQAAccuracy,
    VQAAccuracy,
    anls_score,
    cider_d_scores,
    levenshtein,
    normalize_vqa_answer,
    tokenize_caption,
    vqa_score,
)

# ------------------------------------------------------------------------------------------------ VQA


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),  # lowercased, number word -> digit
        ("none", "0"),
        ("the dog.", "dog"),  # article dropped, final period stripped
        ("A Dog", "dog"),
        ("dont", "don't"),  # contraction gets its apostrophe back
        ("isnt it", "isn't it"),
        ("well", "well"),  # an ordinary word is not a contraction
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("3,000", "3000"),  # digit,digit: punctuation removed, not spaced
        ("yes/no", "yes no"),  # punctuation not touching a space becomes a space
        ("red , blue", "red blue"),  # punctuation touching a space is removed
        ("  left\tside\n", "left side"),
        ("Ten!", "10"),
        ("it's", "it's"),  # apostrophes are not punctuation here
    ],
)
def test_vqa_normalisation(raw: str, normalised: str) -> None:
    assert normalize_vqa_answer(raw) == normalised



@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # k of the 10 answers equal the prediction. Leaving out one of the k matching answers leaves k - 1
        # matches, leaving out one of the 10 - k others leaves k; each scores min(1, matches / 3).
        (0, 0.0),
        (1, (1 * 0 / 3 + 9 * 1 / 3) / 10),  # = 0.3
        (2, (2 * 1 / 3 + 8 * 2 / 3) / 10),  # = 0.6
        (3, (3 * 2 / 3 + 7 * 1) / 10),  # = 0.9 (the simplified min(1, k/3) would say 1.0)
        (4, (4 * 1 + 6 * 1) / 10),  # = 1.0
        (10, 1.0),
    ],
)
def test_vqa_score_leave_one_out(matches: int, expected: float) -> None:
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_score("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_lenient_vqa_accuracy_normalises_predictions_and_answers() -> None:
    metric = LenientVQAAccuracy()
    # "Two" normalises to "2", matching 2 answers "2" and the answer "two": 3 matches -> 0.9
    metric.update(["Two"], [["2", "2", "two", "3", "3", "3", "3", "3", "3", "3"]])
    # "the Dog." -> "dog": all 10 -> 1.0; "cat" vs 1 "cat" -> 0.3
    metric.update(["the Dog.", "cat"], [["dog"] * 10, ["cat"] + ["dog"] * 9])
    assert metric.compute().item() == pytest.approx((0.9 + 1.0 + 0.3) / 3)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        metric.update(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_score("a", [])


def test_exact_match_accuracy() -> None:
    metric = ExactMatchAccuracy()
    metric.update(["True", "the red one.", "Blue", "no"], ["true", ["red one", "red"], "green", ["yes"]])
    assert metric.compute().item() == pytest.approx(2 / 4)
    strict = ExactMatchAccuracy(normalize=False)
    strict.update([" true ", "True"], ["true", "true"])
    assert strict.compute().item() == pytest.approx(1 / 2)


# ------------------------------------------------------------------------------------------------ ANLS


def test_levenshtein() -> None:
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0 and levenshtein("ab", "ba") == 2


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("Hello", ["hello "], 1.0),  # lowercased and stripped
        ("helo", ["hello"], 1 - 1 / 5),  # 1 edit, longest 5 chars
        ("abcd", ["abxy"], 0.5),  # 2 edits of 4: similarity 0.5, kept (threshold is strict "below")
        ("abcde", ["abxyz"], 0.0),  # 3 edits of 5: similarity 0.4 < 0.5 -> 0
        ("abcd", ["wxyz", "abcx"], 0.75),  # best reference wins
        ("", [""], 1.0),
        ("new  york", ["New York"], 1.0),  # runs of whitespace collapsed
    ],
)
def test_anls_score(prediction: str, references: list[str], expected: float) -> None:
    assert anls_score(prediction, references) == pytest.approx(expected)


def test_anls_metric_mean_and_threshold() -> None:
    metric = ANLS()
    metric.update(["helo", "abcde"], ["hello", ["abxyz"]])
    assert metric.compute().item() == pytest.approx((0.8 + 0.0) / 2)
    lenient = ANLS(threshold=0.3)
    lenient.update(["abcde"], ["abxyz"])
    assert lenient.compute().item() == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------------ CIDEr-D


def test_caption_tokenizer() -> None:
    assert tokenize_caption("A man's dog, running.") == ["a", "man", "'s", "dog", "running"]
    tokens = tokenize_caption("Don't (stop) -- a well-known 3.5 km...")
    assert tokens == ["do", "n't", "stop", "a", "well-known", "3.5", "km"]


def hand_worked_cider() -> tuple[list[str], list[list[str]], float]:
    """A 3-image corpus whose CIDEr-D is derived by hand from the definition (comments), evaluated in float64.

    Document frequencies over the references of each image: "a" is in images 1 and 2, "cat" in 1 and 3, every other
    n-gram in one image. With N = 3 images the IDF is log(N) - log(max(1, df)):
    p = log 3 - log 2 = log 1.5 for "a" and "cat"; q = log 3 for the rest, unseen n-grams included (df 0 -> 1).
    """
    candidates = ["a cat", "a bird sings", "cat cat"]
    references = [["a cat", "a dog"], ["a bird"], ["the cat"]]
    p, q = math.log(1.5), math.log(3.0)

    # Image 1, candidate "a cat": unigrams a:p, cat:p (norm sqrt(2) p); bigram (a cat):q (norm q).
    #   vs "a cat": identical vectors -> cosine 1 for n=1 and n=2, 0 for n=3,4 (no n-grams); mean over n = 2/4.
    #   vs "a dog" (a:p, dog:q): unigram dot = p*p (only "a" is shared) / (sqrt(2) p * sqrt(p^2+q^2)); bigram 0.
    #   Same lengths: no length penalty. Score = 10 * mean over the 2 references.
    image1 = 10 * (2 / 4 + (p / (math.sqrt(2) * math.sqrt(p * p + q * q))) / 4) / 2
    # Image 2, candidate "a bird sings": unigrams a:p, bird:q, sings:q; bigrams (a bird):q, (bird sings):q;
    #   trigram q. vs "a bird" (a:p, bird:q; bigram (a bird):q):
    #   n=1: (p^2 + q^2) / (sqrt(p^2 + 2 q^2) sqrt(p^2 + q^2)); n=2: q^2 / (sqrt(2) q * q); n=3,4: 0.
    #   Lengths 3 vs 2: penalty exp(-(1^2) / (2 * 6^2)) = exp(-1/72).
    image2 = 10 * (math.sqrt(p * p + q * q) / math.sqrt(p * p + 2 * q * q) + 1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    # Image 3, candidate "cat cat": unigram cat with tf 2 -> 2p (norm 2p); bigram (cat cat):q.
    #   vs "the cat" (the:q, cat:p): clipping takes min(2p, p) = p, so dot = p * p / (2p * sqrt(p^2 + q^2));
    #   bigrams do not overlap. Same lengths.
    image3 = 10 * (p / (2 * math.sqrt(p * p + q * q))) / 4
    return candidates, references, (image1 + image2 + image3) / 3


def test_cider_d_matches_the_hand_worked_corpus() -> None:
    candidates, references, expected = hand_worked_cider()
    scores = cider_d_scores(candidates, references)
    assert sum(scores) / 3 == pytest.approx(expected, rel=1e-12)
    metric = CIDErD()
    metric.update(candidates[:1], references[:1])  # state accumulates across updates
    metric.update(candidates[1:], references[1:])
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(2.26011, abs=1e-5)  # image scores 2.8060, 3.5415, 0.4328


def test_cider_d_properties() -> None:
    # identical caption, corpus of 2 images with disjoint words: score 10 * (2 n-gram orders matched of 4)...
    scores = cider_d_scores(["red circle", "blue square"], [["red circle"], ["blue square"]])
    assert scores == pytest.approx([5.0, 5.0])  # cosine 1 for n=1,2 and 0 for n=3,4: 10 * 2/4
    # punctuation and case do not matter
    assert cider_d_scores(["Red circle."], [["red circle"]]) == cider_d_scores(["red circle"], [["red circle"]])
    # an n-gram present in every image's references has zero weight (log N - log N)
    assert cider_d_scores(["a", "a"], [["a"], ["a"]]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="non-empty list of reference captions"):
        CIDErD().update(["x"], [[]])


def test_cider_d_handles_unicode_and_empty_strings() -> None:
    metric = CIDErD()
    metric.update(["", "un café crème"], [["a cat"], ["un café", "crème brûlée"]])
    expected = sum(cider_d_scores(["", "un café crème"], [["a cat"], ["un café", "crème brûlée"]])) / 2
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)


# ------------------------------------------------------------------------------------------------ distributed

PREDICTIONS = ["Two", "dog", "a red circle", "yes", "blue square on white", "helo"]
VQA_REFERENCES = [
    ["2"] * 3 + ["3"] * 7,
    ["dog"] * 10,
    ["circle"] * 10,
    ["yes"] * 5 + ["no"] * 5,
    ["square"] * 10,
    ["hello"] * 10,
]
CAPTION_REFERENCES = [
    ["two things"],
    ["a dog", "the dog runs"],
    ["a red circle on white", "red circle"],
    ["yes"],
    ["a blue square on a white background", "blue square"],
    ["hello world"],
]


def make_metrics() -> dict:
    return {"vqa": VQAAccuracy(), "textvqa": TextVQAAccuracy(), "lenient_vqa": LenientVQAAccuracy(),
            "exact": ExactMatchAccuracy(), "gqa": GQAAccuracy(), "anls": ANLS(), "lenient_anls": LenientANLS(),
            "cider": CIDErD()}


def update_all(metrics: dict, indices: list[int]) -> None:
    preds = [PREDICTIONS[i] for i in indices]
    for name in ("vqa", "textvqa", "lenient_vqa", "exact", "gqa"):
        metrics[name].update(preds, [VQA_REFERENCES[i] for i in indices])
    for name in ("anls", "lenient_anls"):
        metrics[name].update(preds, [VQA_REFERENCES[i][:1] for i in indices])
    metrics["cider"].update(preds, [CAPTION_REFERENCES[i] for i in indices])


def distributed_worker(rank: int, world_size: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        metrics = make_metrics()
        # uneven halves (4 and 2 items) in two updates on rank 0: the gathered string states differ in size
        if rank == 0:
            update_all(metrics, [0, 1])
            update_all(metrics, [2, 3])
        else:
            update_all(metrics, [4, 5])
        # a CIDEr-D whose data are all on rank 0: rank 1 contributes empty states
        lonely = CIDErD()
        if rank == 0:
            lonely.update(PREDICTIONS, CAPTION_REFERENCES)
        results = {name: metric.compute().item() for name, metric in metrics.items()}
        results["cider_one_rank"] = lonely.compute().item()
        # the LLaVA-1.5 benchmarks' metrics on their halves (MMBench question 1's rotations on both ranks); a
        # circular metric whose data are all on rank 0
        benchmarks = make_benchmark_metrics()
        update_benchmarks(benchmarks, rank)
        results.update(flatten({name: metric.compute() for name, metric in benchmarks.items()}))
        lonely_circular = CircularAccuracy()
        if rank == 0:
            lonely_circular.update(*CIRCULAR_DATA)
        results.update(flatten({"circular_one_rank": lonely_circular.compute()}))
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_metrics_reduce_across_two_processes(tmp_path: Path) -> None:
    single = make_metrics()
    update_all(single, list(range(len(PREDICTIONS))))
    expected = {name: metric.compute().item() for name, metric in single.items()}
    expected["cider_one_rank"] = expected["cider"]
    benchmarks = make_benchmark_metrics()
    update_benchmarks(benchmarks, None)
    expected.update(flatten({name: metric.compute() for name, metric in benchmarks.items()}))
    expected.update(flatten({"circular_one_rank": benchmarks["circular"].compute()}))

    mp.spawn(distributed_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        results = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert results == pytest.approx(expected, rel=1e-6), f"rank {rank}"
    # CIDEr-D really depends on the whole corpus: half of it alone scores differently
    half = CIDErD()
    half.update(PREDICTIONS[:4], CAPTION_REFERENCES[:4])
    assert half.compute().item() != pytest.approx(expected["cider"], rel=1e-3)
