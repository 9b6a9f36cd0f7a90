"""torchmetrics Metrics for VL tasks: VQA accuracy, exact match, CIDEr-D, ANLS, and the LLaVA-1.5 benchmarks' own
scores (VizWiz, ScienceQA letters, POPE, MMBench circular); all correct across processes."""

from mmft.metrics.anls import ANLS, anls_score, levenshtein
from mmft.metrics.choices import CircularAccuracy, LetterAccuracy, extract_choice, parse_rotation_id
from mmft.metrics.cider import CIDErD, cider_d_scores, tokenize_caption
from mmft.metrics.normalize import normalize_vqa_answer
from mmft.metrics.pope import POPE, POPE_SPLITS, pope_answer
from mmft.metrics.vizwiz import VizWizAccuracy
from mmft.metrics.vqa import ExactMatchAccuracy, VQAAccuracy, vqa_score

__all__ = [
    "ANLS",
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
