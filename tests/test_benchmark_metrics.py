"""The LLaVA-1.5 benchmarks' metrics (POPE, MMBench circular, ScienceQA letters, VizWiz) on hand-worked examples.

Their reduction across two real processes runs in tests/test_metrics.py's two-process test (one spawn for all
metrics), with the data and the split into halves defined here."""

from __future__ import annotations

import pytest

from mmft.metrics import (
    POPE,
    CircularAccuracy,
    LenientCircularAccuracy,
    LenientVizWizAccuracy,
    LetterAccuracy,
    ScienceQAAccuracy,
    VizWizAccuracy,
    extract_choice,
    parse_rotation_id,
    pope_answer,
)

# ------------------------------------------------------------------------------------------------ POPE


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("Yes", "yes"),
        ("yes, there is a dog.", "yes"),
        ("No", "no"),
        ("No, there is no dog.", "no"),
        ("no", "no"),
        ("There is not a dog in the image.", "no"),
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("No.", "no"),
        ("Nope", "yes"),  # LLaVA's rule looks for the words No / no / not only
        ("There's nothing", "yes"),
        ("not,", "no"),  # commas are removed before splitting on spaces
    ],
)
def test_pope_reads_replies_as_llava_does(reply: str, answer: str) -> None:
    assert pope_answer(reply) == answer


def pope_batch(tp: int, fp: int, tn: int, fn: int, split: str) -> tuple[list[str], list[list[str]], list[str]]:
    replies = ["Yes"] * tp + ["Yes"] * fp + ["No"] * tn + ["No"] * fn
    labels = [["yes"]] * tp + [["no"]] * fp + [["no"]] * tn + [["yes"]] * fn
    return replies, labels, [split] * len(replies)


def test_pope_counts_per_split_and_averages_f1() -> None:
    metric = POPE()
    metric.update(*pope_batch(tp=3, fp=1, tn=4, fn=2, split="random"))
    metric.update(*pope_batch(tp=1, fp=3, tn=0, fn=0, split="adversarial"))
    result = {k: v.item() for k, v in metric.compute().items()}
    # random: 7 of 10 right; precision 3/4, recall 3/5, F1 = 2 * 0.75 * 0.6 / 1.35 = 2/3; "yes" said 4 times of 10
    assert result["random_accuracy"] == pytest.approx(0.7)
    assert result["random_precision"] == pytest.approx(0.75)
    assert result["random_recall"] == pytest.approx(0.6)
    assert result["random_f1"] == pytest.approx(2 / 3)
    assert result["random_yes_ratio"] == pytest.approx(0.4)
    # adversarial: always "yes": precision 1/4, recall 1, F1 = 2 * 0.25 / 1.25 = 0.4, yes-ratio 1
    assert result["adversarial_f1"] == pytest.approx(0.4) and result["adversarial_yes_ratio"] == 1.0
    assert result["f1_average"] == pytest.approx((2 / 3 + 0.4) / 2)  # popular had no questions: left out
    assert not any(key.startswith("popular") for key in result)
    assert POPE.headline == "f1_average"


def test_pope_undefined_precision_is_zero_and_bad_input_is_named() -> None:
    metric = POPE()
    metric.update(["No", "No"], [["yes"], ["no"]], ["popular", "popular"])  # nothing said "yes"
    result = metric.compute()
    assert result["popular_precision"].item() == 0 and result["popular_f1"].item() == 0
    assert result["popular_yes_ratio"].item() == 0 and result["popular_accuracy"].item() == 0.5
    with pytest.raises(ValueError, match="split 'train', not one of"):
        metric.update(["yes"], [["yes"]], ["train"])
    with pytest.raises(ValueError, match="must be 'yes' or 'no'"):
        metric.update(["yes"], [["maybe"]], ["random"])


# ------------------------------------------------------------------------------------------------ letters


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("B.", "B"),
        (" C ", "C"),
        ("B. square", "B"),
        ("(C) circle", "C"),
        ("A)", "A"),
        ("D: red", "D"),
        ("The answer is C.", "C"),
        ("I think the answer is (A)", "A"),
        ("square", None),
        ("A square", None),  # "A" as an article, not an option
        ("Both", None),
        ("", None),
    ],
)
def test_extract_choice(reply: str, letter: str | None) -> None:
    assert extract_choice(reply) == letter


def test_letter_accuracy() -> None:
    metric = LetterAccuracy()
    metric.update(["B", "The answer is A.", "square", "c"], ["B", ["B"], "A", "C"])
    assert metric.compute().item() == pytest.approx(2 / 4)


# ------------------------------------------------------------------------------------------------ MMBench circular


def test_parse_rotation_id() -> None:
    assert parse_rotation_id("12/3of4") == (12, 3, 4)
    with pytest.raises(ValueError, match="does not name a rotation"):
        parse_rotation_id("12")


def test_circular_counts_a_question_only_when_every_rotation_is_right() -> None:
    metric = CircularAccuracy()
    # question 1: all four rotations right -> counts; question 2: rotation 2 wrong -> does not count (but its
    # first pass is right); question 3: first rotation wrong -> neither
    metric.update(["A", "B", "C.", "D"], ["A", "B", "C", "D"], ["1/0of4", "1/1of4", "1/2of4", "1/3of4"],
                  [options_prompt(4)] * 4)
    metric.update(["C", "A", "A"], ["C", "A", "B"], ["2/0of3", "2/1of3", "2/2of3"], [options_prompt(3)] * 3)
    metric.update(["B", "The answer is B."], ["A", "B"], ["3/0of2", "3/1of2"], [options_prompt(2)] * 2)
    result = metric.compute()
    assert result["circular"].item() == pytest.approx(1 / 3)
    assert result["first_pass"].item() == pytest.approx(2 / 3)


def test_circular_counts_a_repeated_copy_once_and_refuses_a_missing_rotation() -> None:
    metric = CircularAccuracy()
    metric.update(["A", "B", "A"], ["A", "B", "A"], ["5/0of2", "5/1of2", "5/0of2"],  # DDP padding repeats 5/0
                  [options_prompt(2)] * 3)
    assert metric.compute()["circular"].item() == 1.0
    metric.update(["A"], ["A"], ["6/0of3"], [options_prompt(3)])
    with pytest.raises(ValueError, match="question 6: answers for rotations \\[0\\] of 3"):
        metric.compute()


# ------------------------------------------------------------------------------------------------ VizWiz


def brute_force_average_precision(labels: list[int], scores: list[float]) -> float:
    """Average precision by its definition, sum over thresholds of (recall step) x precision, the way scikit-learn's
    average_precision_score computes it (thresholds at each distinct score, highest first)."""
    total_positive = sum(labels)
    ap, previous_recall = 0.0, 0.0
    for threshold in sorted(set(scores), reverse=True):
        chosen = [label for label, score in zip(labels, scores) if score >= threshold]
        recall = sum(chosen) / total_positive
        ap += (recall - previous_recall) * sum(chosen) / len(chosen)
        previous_recall = recall
    return ap


def test_vizwiz_hand_worked() -> None:
    metric = VizWizAccuracy()
    replies = ["Unanswerable.", "red", "red", "unanswerable", "no"]
    references = [
        ["unanswerable"] * 10,  # 1.0
        ["red"] * 3 + ["blue"] * 7,  # 3 matches: 0.9
        ["unanswerable"] * 8 + ["red"] * 2,  # 2 matches: (2 x 1/3 + 8 x 2/3) / 10 = 0.6
        ["yes"] * 10,  # 0
        ["no"] * 10,  # 1.0
    ]
    types = ["unanswerable", "other", "unanswerable", "yes/no", "yes/no"]
    metric.update(replies, references, types)
    result = {k: v.item() for k, v in metric.compute().items()}
    assert result["accuracy"] == pytest.approx((1 + 0.9 + 0.6 + 0 + 1) / 5)
    assert result["accuracy_unanswerable"] == pytest.approx((1 + 0.6) / 2)
    assert result["accuracy_other"] == pytest.approx(0.9) and result["accuracy_yes_no"] == pytest.approx(0.5)
    assert "accuracy_number" not in result
    # unanswerable recognised: TP = question 1, FN = question 3, FP = question 4, TN = questions 2 and 5
    assert result["unanswerable_f1"] == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))
    truth = [1, 0, 1, 0, 0]
    said = [1.0, 0.0, 0.0, 1.0, 0.0]
    assert result["unanswerable_average_precision"] == pytest.approx(brute_force_average_precision(truth, said))
    assert result["unanswerable_average_precision"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 5)
    with pytest.raises(ValueError, match="answer type None"):
        metric.update(["red"], [["red"]], [None])


# ------------------------------------------------------------------------------------------------ across processes

POPE_DATA = pope_batch(3, 1, 4, 2, "random")
def options_prompt(count: int) -> str:
    """A prompt listing ``count`` options as the MMBench reader writes them."""
    return "What colour is it?" + "".join(f"\n{'ABCD'[k]}. {['red', 'green', 'blue', 'pink'][k]}" for k in range(count))


CIRCULAR_DATA = (
    ["A", "B", "C", "D", "C", "A", "A", "B", "B"],
    ["A", "B", "C", "D", "C", "A", "B", "A", "B"],
    ["1/0of4", "1/1of4", "1/2of4", "1/3of4", "2/0of3", "2/1of3", "2/2of3", "3/0of2", "3/1of2"],
    [options_prompt(4)] * 4 + [options_prompt(3)] * 3 + [options_prompt(2)] * 2,
)
VIZWIZ_DATA = (
    ["Unanswerable", "red", "red", "unanswerable"],
    [["unanswerable"] * 10, ["red"] * 3 + ["blue"] * 7, ["unanswerable"] * 8 + ["red"] * 2, ["yes"] * 10],
    ["unanswerable", "other", "unanswerable", "yes/no"],
)


def update_benchmarks(metrics: dict, rank: int | None) -> None:
    """Everything on one process (rank None), or rank 0 / rank 1's share; MMBench question 1's rotations are split
    between the two ranks."""

    def share(data: tuple, keep: list[int]) -> tuple:
        return tuple([column[i] for i in keep] for column in data)

    halves = {
        "pope": ([0, 2, 4, 6, 8], [1, 3, 5, 7, 9]),
        "circular": ([0, 1, 4, 5, 6], [2, 3, 7, 8]),
        "vizwiz": ([0, 1], [2, 3]),
    }
    data = {"pope": POPE_DATA, "circular": CIRCULAR_DATA, "lenient_circular": CIRCULAR_DATA, "vizwiz": VIZWIZ_DATA,
            "lenient_vizwiz": VIZWIZ_DATA}
    halves |= {"lenient_circular": halves["circular"], "lenient_vizwiz": halves["vizwiz"]}
    for name, metric in metrics.items():
        if name in ("letters", "scienceqa"):
            preds, refs, _, _ = CIRCULAR_DATA
            keep = list(range(9)) if rank is None else halves["circular"][rank]
            metric.update([preds[i] for i in keep], [refs[i] for i in keep])
            continue
        keep = list(range(len(data[name][0]))) if rank is None else halves[name][rank]
        metric.update(*share(data[name], keep))


def make_benchmark_metrics() -> dict:
    return {"pope": POPE(), "circular": CircularAccuracy(), "lenient_circular": LenientCircularAccuracy(),
            "vizwiz": VizWizAccuracy(), "lenient_vizwiz": LenientVizWizAccuracy(), "letters": LetterAccuracy(),
            "scienceqa": ScienceQAAccuracy()}


def flatten(results: dict) -> dict[str, float]:
    """``{name: tensor or dict of tensors}`` as ``{name or name/key: float}``."""
    flat = {}
    for name, value in results.items():
        if isinstance(value, dict):
            flat.update({f"{name}/{key}": v.item() for key, v in value.items()})
        else:
            flat[name] = value.item()
    return flat


def test_the_two_process_halves_cover_every_example() -> None:
    single, halves = make_benchmark_metrics(), make_benchmark_metrics()
    update_benchmarks(single, None)
    update_benchmarks(halves, 0)
    update_benchmarks(halves, 1)
    assert flatten({n: m.compute() for n, m in halves.items()}) == flatten({n: m.compute() for n, m in single.items()})
    assert flatten({"c": single["circular"].compute()})["c/circular"] == pytest.approx(1 / 3)
