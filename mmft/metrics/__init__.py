"""torchmetrics Metrics for VL tasks: VQA accuracy, exact match, CIDEr-D, ANLS, and the LLaVA-1.5 benchmarks' own
scores (VizWiz, ScienceQA letters, POPE, MMBench circular); all correct across processes. Each benchmark's default
metric reproduces the pipeline behind its published numbers; ``Lenient*`` metrics normalise more, under their own
names."""

from mmft.metrics.anls import ANLS, LenientANLS, anls_score, competition_anls_score, levenshtein
from mmft.metrics.choices import (
    CircularAccuracy,
    LenientCircularAccuracy,
    LetterAccuracy,
    ScienceQAAccuracy,
    extract_choice,
    mmbench_choice,
    parse_rotation_id,
    scienceqa_choice,
)
from mmft.metrics.cider import CIDErD, cider_d_scores, tokenize_caption
from mmft.metrics.normalize import normalize_vqa_answer
from mmft.metrics.pope import POPE, POPE_SPLITS, pope_answer
from mmft.metrics.vizwiz import LenientVizWizAccuracy, VizWizAccuracy
from mmft.metrics.vqa import (
    ExactMatchAccuracy,
    GQAAccuracy,
    LenientVQAAccuracy,
    TextVQAAccuracy,
    VQAAccuracy,
    gqa_answer,
    vqa_score,
)
from mmft.metrics.vqa_eval import evalai_answer, textvqa_score, vizwiz_score, vqa_eval_score, vqav2_score

__all__ = [
    "ANLS",
    "GQAAccuracy",
    "LenientANLS",
    "LenientCircularAccuracy",
    "LenientVQAAccuracy",
    "LenientVizWizAccuracy",
    "ScienceQAAccuracy",
    "TextVQAAccuracy",
    "competition_anls_score",
    "evalai_answer",
    "gqa_answer",
    "mmbench_choice",
    "scienceqa_choice",
    "textvqa_score",
    "vizwiz_score",
    "vqa_eval_score",
    "vqav2_score",
    "CIDErD",
    "POPE",
    "POPE_SPLITS",
    "CircularAccuracy",
    "ExactMatchAccuracy",
    "LetterAccuracy",
    "VQAAccuracy",
    "VizWizAccuracy",
    "anls_score",
    "cider_d_scores",
    "extract_choice",
    "levenshtein",
    "normalize_vqa_answer",
    "parse_rotation_id",
    "pope_answer",
    "tokenize_caption",
    "vqa_score",
]
