"""Answer normalisation of the official VQA evaluation, written from its documented rules.

Steps, in the official order: newlines and tabs become spaces and the ends are stripped; punctuation is removed or
turned into a space; periods not followed by a digit are removed; the text is lowercased and split into words;
number words become digits ("two" -> "2", "none" -> "0"); the articles a, an, the are dropped; contractions written
without their apostrophe get it back ("dont" -> "don't").
"""

from __future__ import annotations

import re

# Removed (or replaced by a space, see _strip_punctuation). The official list; "'" and ":" are deliberately absent.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its lookbehind is mistyped as a lookahead that never fails, so it
# removes every period that is not followed by a digit ("3.5" keeps its period, "dog." loses it). Same effect:
_PERIOD = re.compile(r"\.(?!\d)")
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})

# Contractions, written with their apostrophes; the apostrophe-less spellings are derived below.
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've
he'll he's how'd how'll how's i'd i'd've i'll i'm i've isn't it'd it'd've it'll it's let's ma'am mightn't
mightn't've might've mustn't must've needn't not've o'clock oughtn't 'twas shan't she'd she'd've she'll she's
should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll
someone's something'd something'd've something'll something's that'd that'd've that's there'd there'd've there're
there's they'd they'd've they'll they're they've wasn't we'd we'd've we'll we're we've weren't what'll what're
what's what've when's where'd where's where've who'd who'd've who'll who're who's who've why'll why're why's won't
would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()
# Apostrophe-less spellings that are ordinary words stay as they are.
_ORDINARY_WORDS = frozenset({"hell", "id", "ill", "its", "shed", "shell", "wed", "well", "were", "whore"})


def _spellings(word: str) -> set[str]:
    """A contraction's spellings with one or all of its apostrophes missing: "couldn't've" -> couldntve, ..."""
    positions = [i for i, c in enumerate(word) if c == "'"]
    forms = {word.replace("'", "")}
    for i in positions:
        forms.add(word[:i] + word[i + 1 :])
    forms.discard(word)
    return forms


CONTRACTIONS = {
    form: word for word in _CONTRACTIONS for form in _spellings(word) if form not in _ORDINARY_WORDS
}


def _strip_punctuation(text: str) -> str:
    """Official rule: a punctuation mark is deleted if it touches a space anywhere in the text (or the text has a
    digit,digit group, so "3,000" -> "3000"), otherwise it becomes a space ("yes/no" -> "yes no")."""
    delete = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete or f"{mark} " in text or f" {mark}" in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out)


def normalize_vqa_answer(text: str) -> str:
    """Normalise an answer the way the official VQA evaluation does before comparing strings."""
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)
