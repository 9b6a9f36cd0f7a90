"""Each benchmark's default metric against hand-worked cases that pin the rules and quirks of the pipeline behind the
published numbers (EvalAI's answer processor and the official VQA evaluation; TextVQA's and VizWiz's evaluators;
the competition's ANLS; VLMEvalKit's rule-based MMBench matching; LLaVA's ScienceQA and GQA scripts), and the
lenient metrics beside them where the two differ. Every expected value is worked out by hand in its comment."""

from __future__ import annotations

import pytest

from mmft.metrics import (
    ANLS,
    GQAAccuracy,
    LenientANLS,
    LenientVizWizAccuracy,
    LenientVQAAccuracy,
    ScienceQAAccuracy,
    TextVQAAccuracy,
    VizWizAccuracy,
    VQAAccuracy,
    competition_anls_score,
    evalai_answer,
    mmbench_choice,
    scienceqa_choice,
    textvqa_score,
    vizwiz_score,
    vqa_eval_score,
    vqav2_score,
)
from mmft.metrics.choices import listed_options

TEN = 10


# ------------------------------------------------------------------------------------------- EvalAI answer processor
@pytest.mark.parametrize(("raw", "processed"), [
    ("Yes", "yes"),  # lower-cased first
    ("t-shirt", "t shirt"),  # a mark touching no space becomes a space
    ("red - blue", "red blue"),  # a mark touching a space is deleted
    ("3,000", "3000"),  # "," is removed before anything else
    ("What?", "what"),  # so is "?"
    ("man's hat", "man 's hat"),  # "'s" is split off
    ("Two dogs.", "2 dogs"),  # number word, final period
    ("3.5", "3.5"),  # a period before a digit stays
    ("The Dog", "dog"),  # article dropped
    ("dont", "don't"),  # contraction restored
    ("im", "im"),  # the table's key is "Im": never matched after lower-casing
    ("ive", "ive"),  # likewise "Ive"
    ("somebody'd", "somebodyd"),  # the table maps this one backwards
    ("  line\nbreak\t", "line break"),
    ("." * 40 + "x", "." * 8 + "x"),  # at most 32 periods are stripped
])
def test_evalai_answer_processor(raw: str, processed: str) -> None:
    assert evalai_answer(raw) == processed


# ----------------------------------------------------------------------------------------------------------- VQAv2
@pytest.mark.parametrize(("prediction", "answers", "score"), [
    ("Yes", ["yes"] * TEN, 1.0),  # the submission's processor lower-cases it
    ("t-shirt", ["t-shirt"] * TEN, 0.0),  # processed to "t shirt"; ten equal answers are never processed
    # the answers disagree: theirs lose punctuation ("t shirt" x9, "shirt"): each left-out case has >= 8 matches
    ("t-shirt", ["t-shirt"] * 9 + ["shirt"], 1.0),
    ("2", ["two"] * TEN, 0.0),  # ten equal answers are compared as given
    ("im", ["i'm"] * TEN, 0.0),  # the capitalised "Im" key never restores the apostrophe
    # 2 of 10 match: the two "red" left out see 1 match (1/3), the eight "blue" 2 matches (2/3): (2/3 + 16/3) / 10
    ("Red", ["red"] * 2 + ["blue"] * 8, 0.6),
    ("red", ["red"] * 4 + ["blue"] * 6, 1.0),  # 4 matches: every left-out case still sees 3
    ("." * 40 + "x", ["x"] * TEN, 0.0),  # 8 periods survive the 32-period limit
    ("." * 10 + "x", ["x"] * TEN, 1.0),
])
def test_vqav2_is_the_evalai_processor_then_the_official_evaluation(prediction, answers, score) -> None:
    assert vqav2_score(prediction, answers) == pytest.approx(score)


def test_the_official_evaluation_processes_only_when_the_answers_disagree() -> None:
    # equal answers: "Dog" stays "Dog" (no lower-casing), so only the exact string matches
    assert vqa_eval_score("Dog", ["dog"] * TEN) == 0.0
    # disagreeing answers: the prediction loses case, articles and number words; the answers only punctuation
    assert vqa_eval_score("The Dog", ["dog"] * 9 + ["cat"]) == pytest.approx(1.0)
    assert vqa_eval_score("two", ["two"] * 9 + ["2"]) == pytest.approx(0.3)  # "2" matches the one "2" only
    # "yes!" becomes "yes " (the mark turns into a space, which is never stripped again): no answer matches
    assert vqa_eval_score("yes", ["yes!"] * 5 + ["no"] * 5) == 0.0


def test_vqa_accuracy_is_the_published_pipeline_and_the_lenient_one_is_apart() -> None:
    official, lenient = VQAAccuracy(), LenientVQAAccuracy()
    for metric in (official, lenient):
        metric.update(["t-shirt", "Yes", "2"], [["t-shirt"] * TEN, ["yes"] * TEN, ["two"] * TEN])
    assert official.compute().item() == pytest.approx(1 / 3)  # only "Yes"
    assert lenient.compute().item() == pytest.approx(1.0)  # all three


# --------------------------------------------------------------------------------------------------------- TextVQA
@pytest.mark.parametrize(("prediction", "answers", "score"), [
    ("im", ["i'm"] * TEN, 0.0),  # both sides processed; "im" and "i'm" stay apart
    ("Two", ["2"] * TEN, 1.0),
    ("man's hat", ["man's hat"] * TEN, 1.0),  # both become "man 's hat"
    ("t-shirt", ["t-shirt"] * TEN, 1.0),  # both become "t shirt"
    ("coca cola", ["coca-cola"] * 3 + ["coke"] * 7, 0.9),  # 3 matches: 7 x 1 + 3 x 2/3, over 10
    ("pepsi", ["coke"] * TEN, 0.0),
])
def test_textvqa_processes_both_sides(prediction, answers, score) -> None:
    assert textvqa_score(prediction, answers) == pytest.approx(score)
    metric = TextVQAAccuracy()
    metric.update([prediction], [answers])
    assert metric.compute().item() == pytest.approx(score)


# ---------------------------------------------------------------------------------------------------------- VizWiz
@pytest.mark.parametrize(("prediction", "answers", "score"), [
    ("2", ["Two"] * TEN, 0.0),  # the answers are compared as annotated
    ("Two", ["2"] * TEN, 1.0),  # the prediction is processed
    ("Yes.", ["yes"] * TEN, 1.0),
    ("unanswerable", ["unanswerable"] * 3 + ["blue"] * 7, 0.9),
])
def test_vizwiz_processes_the_prediction_only(prediction, answers, score) -> None:
    assert vizwiz_score(prediction, answers) == pytest.approx(score)


def test_vizwiz_metric_and_its_lenient_twin() -> None:
    official, lenient = VizWizAccuracy(), LenientVizWizAccuracy()
    for metric in (official, lenient):
        metric.update(["2", "unanswerable"], [["Two"] * TEN, ["unanswerable"] * TEN], ["number", "unanswerable"])
    assert official.compute()["accuracy"].item() == pytest.approx(0.5)
    assert lenient.compute()["accuracy"].item() == pytest.approx(1.0)
    assert official.compute()["unanswerable_f1"].item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------------ ANLS
@pytest.mark.parametrize(("prediction", "references", "score", "lenient"), [
    ("ABC", ["abc"], 1.0, 1.0),  # lower-cased
    ("  hello   world ", ["hello world"], 1.0, 1.0),  # whitespace collapsed before the distance
    # distance 1 ("helo" vs "hello") over the longer string as given: 8 characters with its spaces, not 5
    ("  helo  ", ["hello"], 1 - 1 / 8, 1 - 1 / 5),
    # "ßß" upper-cases to 4 characters: distance 2 over 4 = 0.5, which is not below the threshold
    ("ßß", ["ab"], 0.5, 0.0),
    ("abcd", ["wxyz"], 0.0, 0.0),  # similarity 0 < 0.5
    ("abc", ["abd", "xyz", "abc"], 1.0, 1.0),  # the best reference
])
def test_anls_is_the_competitions(prediction, references, score, lenient) -> None:
    assert competition_anls_score(prediction, references) == pytest.approx(score)
    official, relaxed = ANLS(), LenientANLS()
    official.update([prediction], [references])
    relaxed.update([prediction], [references])
    assert official.compute().item() == pytest.approx(score)
    assert relaxed.compute().item() == pytest.approx(lenient)


# --------------------------------------------------------------------------------------------------------- MMBench
OPTIONS = {"A": "red", "B": "green", "C": "blue", "D": "a pink square"}


@pytest.mark.parametrize(("reply", "letter"), [
    ("C", "C"),
    ("Answer: D", "D"),  # marks become spaces: a lone "D"
    ("Option B", "B"),
    ("**B**", "B"),
    ("(A) red", "A"),
    ("The answer is blue", "C"),  # no lone letter: the one option text the reply contains
    ("green.", "B"),
    ("a", "Z"),  # a lower-case letter is no option letter there, and no option text is inside "a"
    ("A or B", "Z"),  # two letters, and no single option text
    ("I'm sorry, but without the image provided I cannot tell", "Z"),  # a listed refusal
    ("Z", "Z"),
    ("It is red or green", "Z"),  # two option texts
])
def test_mmbench_answers_are_read_by_vlmevalkits_rules(reply, letter) -> None:
    assert mmbench_choice(reply, dict(OPTIONS)) == letter


def test_mmbench_options_come_from_the_prompt_as_the_reader_writes_it() -> None:
    prompt = "Hint line\nWhat colour is it?\nA. red\nB. green\nC. blue"
    assert listed_options(prompt) == {"A": "red", "B": "green", "C": "blue"}


# ------------------------------------------------------------------------------------------------------- ScienceQA
@pytest.mark.parametrize(("reply", "letter"), [
    ("B", "B"),
    ("B. because it floats", "B"),
    ("The answer is C.", "C"),
    ("I think. The answer is D!", "D"),
    ("B.", None),  # two characters: neither a lone letter nor "X. "
    ("b", None),
    ("(B)", None),
    ("The answer is C", None),  # the pattern wants one more character after the letter
    ("The answer is A. The answer is B.", None),  # found twice
    ("F", None),  # not an option letter
])
def test_scienceqa_letters_are_read_by_llavas_rules(reply, letter) -> None:
    assert scienceqa_choice(reply) == letter


def test_scienceqa_accuracy() -> None:
    metric = ScienceQAAccuracy()
    metric.update(["B", "The answer is A.", "c", "B."], ["B", ["A"], "C", "B"])
    assert metric.compute().item() == pytest.approx(2 / 4)


# ------------------------------------------------------------------------------------------------------------- GQA
def test_gqa_compares_the_lower_cased_answer_without_final_periods() -> None:
    metric = GQAAccuracy()
    metric.update(["Yes.", "left", " no", "the table", "Red!"], ["yes", "left", "no", "table", "red"])
    assert metric.compute().item() == pytest.approx(2 / 5)  # "Yes." and "left"
