"""The answer processing behind published VQA-style numbers, quirks included, written from the rules of the official
code: the EvalAI answer processor (LLaVA's VQAv2 submission script and its TextVQA evaluator run every prediction
through it) and the official VQA evaluation (GT-Vision-Lab's ``vqaEval.py``, which scores VQAv2 on the server).

Quirks kept on purpose, since the published numbers have them:

- the contraction table maps apostrophe-less spellings back, but four of its keys are capitalised (``Im``, ``Ive``,
  ``Id've``, ``I'dve``) and never match the lower-cased words, and ``somebody'd`` maps to ``somebodyd``;
- periods not followed by a digit are removed, but at most 32 of them (the evaluation passes ``re.UNICODE``, 32, as
  the count of ``re.sub``);
- a punctuation mark is deleted when it touches a space anywhere in the text or the text holds a digit-comma-digit
  group, and becomes a space otherwise (``t-shirt`` -> ``t shirt``);
- the official evaluation processes the prediction and the answers only when the answers disagree; then the answers
  lose their punctuation only, the prediction its punctuation, number words and articles.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mmft.metrics.normalize import ARTICLES, NUMBER_WORDS, PUNCTUATION

MOST_PERIODS_STRIPPED = 32
# the official contraction table, spelling -> replacement, pairs as written there (capitalised keys included)
_TABLE = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've|couldnt've couldn't've|
didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've|hadn'tve hadn't've|hasnt hasn't|
havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's|howd how'd|howll how'll|hows how's|Id've I'd've|
I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd|itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|
mightnt mightn't|mightnt've mightn't've|mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've|
neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at|'ow'sat 'ow's'at|
shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've|shouldnt shouldn't|
shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd|somebodyd've somebody'd've|
somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's|someoned someone'd|
someoned've someone'd've|someone'dve someone'd've|someonell someone'll|someones someone's|somethingd something'd|
somethingd've something'd've|something'dve something'd've|somethingll something'll|thats that's|thered there'd|
thered've there'd've|there'dve there'd've|therere there're|theres there's|theyd they'd|theyd've they'd've|
they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas|wasnt wasn't|wed've we'd've|
we'dve we'd've|weve we've|werent weren't|whatll what'll|whatre what're|whats what's|whatve what've|whens when's|
whered where'd|wheres where's|whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|
whos who's|whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't|
wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll|yall'd've y'all'd've|
y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've|you'dve you'd've|youll you'll|
youre you're|youve you've
"""
CONTRACTIONS = dict(pair.split() for pair in _TABLE.replace("\n", "").split("|"))

_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # as written: the "lookbehind" is a lookahead that always passes
_EVALAI_DIGIT_COMMA = re.compile(r"(?<=\d)(\,)+(?=\d)")
_VQA_EVAL_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of an already processed prediction: ``min(1, matches among the other answers / 3)`` averaged over
    leaving each answer out (with 10 answers: 1 match scores 0.3, 2 score 0.6, 3 score 0.9, 4 or more 1)."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one reference answer")
    matches = [answer == prediction for answer in answers]
    total = sum(matches)
    return sum(min(1.0, (total - match) / 3.0) for match in matches) / len(matches)


def _punctuation(text: str, digit_comma: re.Pattern) -> str:
    delete_all = digit_comma.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=MOST_PERIODS_STRIPPED)


def _digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def _whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def evalai_answer(text: str) -> str:
    """The EvalAI answer processor: lower-case; drop ``,`` and ``?``; ``'s`` -> `` 's``; whitespace; punctuation
    and periods; number words, articles and contractions."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _digits_and_articles(_punctuation(_whitespace(text), _EVALAI_DIGIT_COMMA))


def vqa_eval_punctuation(text: str) -> str:
    """The official VQA evaluation's punctuation step (its own digit-comma-digit test)."""
    return _punctuation(text, _VQA_EVAL_DIGIT_COMMA)


def vqa_eval_score(prediction: str, answers: Sequence[str]) -> float:
    """One question's score by the official VQA evaluation: ``min(1, matches among the other answers / 3)``
    averaged over leaving each answer out, the prediction and answers processed only when the answers disagree."""
    prediction = _whitespace(prediction)
    answers = [_whitespace(answer) for answer in answers]
    if len(set(answers)) > 1:
        answers = [vqa_eval_punctuation(answer) for answer in answers]
        prediction = _digits_and_articles(vqa_eval_punctuation(prediction))
    return leave_one_out_accuracy(prediction, answers)


def vqav2_score(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 as LLaVA's numbers are made: the EvalAI processor on the prediction (the submission script), then the
    official evaluation (the server)."""
    return vqa_eval_score(evalai_answer(prediction), answers)


def textvqa_score(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA's evaluator (LLaVA's, from M4C): both sides through the EvalAI processor; the prediction scores what
    its processed form scores among the processed answers (0 when it is none of them)."""
    answers = [evalai_answer(answer) for answer in answers]
    prediction = evalai_answer(prediction)
    return leave_one_out_accuracy(prediction, answers)


def vqa_eval_reply(prediction: str) -> str:
    """A prediction as the official evaluation processes it: whitespace, punctuation, number words and articles."""
    return _digits_and_articles(vqa_eval_punctuation(_whitespace(prediction)))


def vizwiz_score(prediction: str, answers: Sequence[str]) -> float:
    """VizWiz's evaluation: the prediction processed (:func:`vqa_eval_reply`), compared with the answers as
    annotated (only their ends stripped), so "2" does not match "Two"."""
    prediction = vqa_eval_reply(prediction)
    return leave_one_out_accuracy(prediction, [_whitespace(answer) for answer in answers])
