"""The tasks mmft knows, in one table: what a new dataset adds in one place.

For each task (the ``task`` name its reader gives its examples):

- ``instruction``: the text a chat model's collate appends to every question (after a newline), LLaVA-1.5's
  evaluation instructions (the strings of its evaluation question files, which lmms-eval's task configs repeat);
- ``vlbart_prefix``: the text VL-BART puts before the encoder's prompt (VL-Adapter's task prefixes);
- ``metric``: the score of the task's published numbers, reading answers as that evaluation does (the VQA
  normaliser, the option letter of a multiple-choice reply, ...); used when a recipe's ``metrics`` names none;
- ``vlbart_metric``: VL-Adapter's score where it differs (exact match on GQA).

A recipe overrides any of them: ``model.init_args.instructions``, ``prefixes``, ``metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torchmetrics import Metric

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
UNANSWERABLE_SUFFIX = (
    f"When the provided information is insufficient, respond with 'Unanswerable'.\n{SHORT_ANSWER_SUFFIX}"
)
LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."
# the VALUE readers' targets are the choice labels a0..a4, listed in the prompt as "a0: <choice>"
CHOICE_SUFFIX = "Answer with the option's label (a0 to a4) from the given choices directly."
CAPTION_SUFFIX = "Describe what happens in the video in one sentence."


def _metric(name: str, **kwargs: object) -> Callable[[], Metric]:
    """A factory of ``mmft.metrics.<name>`` (imported when called: the metrics import the tables they score by)."""

    def build() -> Metric:
        import mmft.metrics

        return getattr(mmft.metrics, name)(**kwargs)

    return build


@dataclass(frozen=True)
class Task:
    """One task's instruction, VL-BART prefix and metrics (see the module docstring)."""

    instruction: str | None = None
    vlbart_prefix: str | None = None
    metric: Callable[[], Metric] | None = None
    vlbart_metric: Callable[[], Metric] | None = None


TASKS: dict[str, Task] = {
    "vqav2": Task(SHORT_ANSWER_SUFFIX, "vqa: ", _metric("VQAAccuracy")),
    "gqa": Task(SHORT_ANSWER_SUFFIX, "gqa: ", _metric("GQAAccuracy"), _metric("ExactMatchAccuracy")),
    "nlvr2": Task(None, "nlvr: ", _metric("ExactMatchAccuracy")),
    "coco_caption": Task(None, "caption: ", _metric("CIDErD")),
    "okvqa": Task(SHORT_ANSWER_SUFFIX, None, _metric("VQAAccuracy")),
    "textvqa": Task(SHORT_ANSWER_SUFFIX, None, _metric("TextVQAAccuracy")),
    "docvqa": Task(SHORT_ANSWER_SUFFIX, None, _metric("ANLS")),
    "ocrvqa": Task(SHORT_ANSWER_SUFFIX, None, _metric("ExactMatchAccuracy")),
    "vizwiz": Task(UNANSWERABLE_SUFFIX, None, _metric("VizWizAccuracy")),
    "scienceqa": Task(LETTER_SUFFIX, None, _metric("ScienceQAAccuracy")),
    "pope": Task(SHORT_ANSWER_SUFFIX, None, _metric("POPE")),
    "mmbench": Task(LETTER_SUFFIX, None, _metric("CircularAccuracy")),
    "msrvtt_qa": Task(SHORT_ANSWER_SUFFIX, None, _metric("ExactMatchAccuracy")),
    "tvqa": Task(CHOICE_SUFFIX, "tvqa: ", _metric("ExactMatchAccuracy")),
    "how2qa": Task(CHOICE_SUFFIX, "how2qa: ", _metric("ExactMatchAccuracy")),
    "tvc": Task(CAPTION_SUFFIX, "tvc: ", _metric("CIDErD")),
    "yc2c": Task(CAPTION_SUFFIX, "yc2c: ", _metric("CIDErD")),
}

# the table's columns as the collates take them (task -> text)
LLAVA_INSTRUCTIONS = {name: task.instruction for name, task in TASKS.items() if task.instruction}
VLBART_PREFIXES = {name: task.vlbart_prefix for name, task in TASKS.items() if task.vlbart_prefix}


def default_metric(task: str) -> Metric | None:
    """A new instance of ``task``'s metric, or None for a task the table does not score."""
    known = TASKS.get(task)
    return known.metric() if known is not None and known.metric is not None else None


def vlbart_metrics() -> dict[str, Metric]:
    """VL-Adapter's metrics where they differ from the table's (the others come from :func:`default_metric`)."""
    return {name: task.vlbart_metric() for name, task in TASKS.items() if task.vlbart_metric is not None}
