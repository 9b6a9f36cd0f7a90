"""torchmetrics Metrics for VL tasks: VQA accuracy, exact match, CIDEr-D, ANLS (all correct across processes)."""

from mmft.metrics.anls import ANLS, anls_score, levenshtein
from mmft.metrics.cider import CIDErD, cider_d_scores, tokenize_caption
from mmft.metrics.normalize import normalize_vqa_answer
from mmft.metrics.vqa import ExactMatchAccuracy, VQAAccuracy, vqa_score

__all__ = [
    "ANLS",
    "CIDErD",
    "ExactMatchAccuracy",
    "VQAAccuracy",
    "anls_score",
    "cider_d_scores",
    "levenshtein",
    "normalize_vqa_answer",
    "tokenize_caption",
    "vqa_score",
]
