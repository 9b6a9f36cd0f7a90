"""Generate the small synthetic sample data, in the real public file formats, that the tiny configs and tests use.

Images are simple scenes: one to three shapes of one kind and colour on a plain background. Questions about colour,
shape, count and background are answerable from the pixels, so a tiny model learns them in minutes on a CPU, while
the answers vary enough that always giving the most common answer scores far below 100%.

    mmft sample-data --out data/sample

Deterministic for a given seed (the same bytes every run, but for the mp4 files), about 7 MB, a few seconds.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from .benchmarks import make_mmbench, make_pope, make_scienceqa, make_textvqa, make_vizwiz
from .images import (
    make_coco_images,
    make_gqa,
    make_karpathy,
    make_llava,
    make_llava_multi_image,
    make_nlvr2,
    make_source_text,
    make_vqav2,
)
from .ocr import make_ocr
from .scenes import write_json
from .videos import make_llava_video, make_msrvtt_qa, make_tvc, make_tvqa

__all__ = ["main", "make_sample_data"]

def make_sample_data(out: Path | str, seed: int = 0, scale: int = 1, videos: bool = True) -> dict[str, Any]:
    """Write the sample data under ``out`` and return a summary (also written to ``out/manifest.json``).

    ``scale`` multiplies the number of images and questions (1: about 1,600 files, 8 MB). Every dataset draws from
    its own seeded generator, so changing one leaves the others' bytes unchanged.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)

    def rng(name: str) -> random.Random:
        return random.Random(f"{seed}/{name}")

    coco = {
        "train2014": make_coco_images(root, rng("coco-train"), "train2014", 1, 160 * scale),
        "val2014": make_coco_images(root, rng("coco-val"), "val2014", 500_000, 60 * scale),
    }
    train_answers = make_vqav2(root, rng("vqav2-train"), "train2014", coco["train2014"], 3)
    val_answers = make_vqav2(root, rng("vqav2-val"), "val2014", coco["val2014"], 3)
    make_llava(root, rng("llava"), coco["train2014"], 40 * scale)
    make_gqa(root, rng("gqa-train"), "train", 1000, 120 * scale)
    make_gqa(root, rng("gqa-testdev"), "testdev", 9000, 40 * scale)
    nlvr2_train = make_nlvr2(root, rng("nlvr2-train"), "train", 100 * scale)
    nlvr2_dev = make_nlvr2(root, rng("nlvr2-dev"), "dev", 40 * scale)
    karpathy_splits = make_karpathy(root, rng("karpathy"), coco)
    vizwiz = make_vizwiz(root, rng("vizwiz"), 40 * scale)
    scienceqa = make_scienceqa(root, rng("scienceqa"), 40 * scale)
    make_pope(root, rng("pope"), coco["val2014"], 20 * scale)
    make_mmbench(root, rng("mmbench"), 16 * scale)
    make_textvqa(root, rng("textvqa"), 30 * scale)
    make_llava_multi_image(root, rng("llava-multi-image"), coco["train2014"], 24 * scale)
    ocr = make_ocr(root / "ocr", rng("ocr"), scale)
    source_texts = make_source_text(root, rng("source"), coco["val2014"], 64 * scale)
    video_counts = {}
    if videos:
        make_msrvtt_qa(root, rng("msrvtt"), {"train": 64 * scale, "val": 16 * scale})
        video_counts["tvqa"] = make_tvqa(root, rng("tvqa"), {"train": 96 * scale, "val": 24 * scale})
        video_counts["tvc"] = make_tvc(root, rng("tvc"), {"train": 12 * scale, "val": 6 * scale})
        make_llava_video(root)

    majority, _ = Counter(train_answers).most_common(1)[0]
    summary = {
        "seed": seed,
        "scale": scale,
        "vqav2": {
            "train_questions": len(train_answers),
            "val_questions": len(val_answers),
            "train_majority_answer": majority,
            "val_share_of_majority_answer": round(val_answers.count(majority) / len(val_answers), 4),
        },
        "gqa": {"train_images": 120 * scale, "testdev_images": 40 * scale},
        "nlvr2": {
            "train": len(nlvr2_train),
            "dev": len(nlvr2_dev),
            "dev_share_true": round(sum(nlvr2_dev) / len(nlvr2_dev), 4),
        },
        "coco_karpathy": dict(sorted(karpathy_splits.items())),
        "vizwiz": vizwiz,
        "scienceqa": scienceqa,
        "pope": {"questions_per_split": 20 * scale},
        "mmbench": {"questions": 16 * scale},
        "textvqa": {"val_questions": 30 * scale},
        "ocr": ocr,
        "source_texts": source_texts,
        "videos": videos,
        **video_counts,
    }
    write_json(root / "manifest.json", summary, indent=2)
    (root / "README.txt").write_text(readme(summary), encoding="utf-8")
    return summary


def readme(summary: dict[str, Any]) -> str:
    vqa = summary["vqav2"]
    video = """msrvtt_qa/{train,val}_qa.json, msrvtt_qa/videos/video<id>.mp4      MSRVTT-QA format (64x64, 8 frames)
tvqa/tvqa_{train,val}.jsonl, tvqa/tvqa_subtitles.jsonl              VALUE TVQA format: 5-way questions about 2 s
tvqa/videos/<vid_name>.mp4                                          clips (64x64, 16 frames at 8 fps), subtitles;
                                                                    one option order per question type
tvc/tvc_{train,val}.jsonl, tvc/tvc_subtitles.jsonl                  VALUE TVC format: two 1 s moments per video,
tvc/videos/<vid_name>.mp4                                           2 captions each (ts = the moment's seconds)
llava/llava_video_sample.json                                       LLaVA-Video-178K records over those videos
                                                                    (TVC moments with their ts span)
"""
    video_line = video if summary["videos"] else ""
    return f"""mmft sample data (synthetic; made by mmft sample-data, seed {summary['seed']})

Scenes of 1-3 shapes (circle, square, triangle) of one colour (red, green, blue, yellow, purple) on a white, black
or gray background, 64x64 pixels. Every file is in the real public format, so the real readers read it.

coco/train2014/COCO_train2014_<id:012d>.jpg, coco/val2014/...        COCO image folders
vqav2/v2_OpenEnded_mscoco_<split>_questions.json                    VQAv2 questions (train2014, val2014)
vqav2/v2_mscoco_<split>_annotations.json                            VQAv2 annotations, 10 answers each
llava/llava_instruct_sample.json                                    LLaVA instruct JSON (multi-turn, some text-only;
                                                                    image paths relative to this sample folder)
llava/llava_multi_image_sample.json                                 LLaVA-OneVision multi-image records (2-3 images)
gqa/{{train,testdev}}_balanced_questions.json, gqa/images/<id>.jpg    GQA balanced questions
nlvr2/{{train,dev}}.json, nlvr2/images/{{train/<directory>,dev}}/*.png  NLVR2 JSON lines, image pairs
coco_karpathy/dataset_coco.json                                     COCO captions, Karpathy split (5 captions each;
                                                                    images in coco/)
vizwiz/val.json, vizwiz/val/VizWiz_val_<n:08d>.jpg                  VizWiz-VQA (blank photos are unanswerable)
scienceqa/{{problems,pid_splits}}.json, scienceqa/images/<split>/<id>/image.png   ScienceQA (IMG: test with image)
pope/coco_pope_{{random,popular,adversarial}}.json                    POPE in LLaVA's files (images in coco/val2014)
mmbench/mmbench_dev_20230712.tsv                                    MMBench dev TSV (images inline, base64)
textvqa/TextVQA_0.5.1_val.json, textvqa/train_images/<id>.jpg       TextVQA val (a written colour name) and its
textvqa/TextVQA_Rosetta_OCR_v0.2_val.json                           Rosetta OCR tokens
ocr/textvqa/TextVQA_0.5.1_{{train,val}}.json, ocr/textvqa/train_images/  OCR sample: a word of 12 written on a sign,
ocr/docvqa/{{train,val}}_v1.0.json, ocr/docvqa/documents/*.png        a form (title word, number), a book cover
ocr/ocrvqa/dataset.json, ocr/ocrvqa/images/<id>.jpg                   (title word; genre by colour), 64x64
source/captions.jsonl                                               held-out source-domain text ({{"text": ...}} a
                                                                    line: val-image captions) for forgetting
{video_line}manifest.json                                                       counts and the numbers below

VQAv2: {vqa['train_questions']} train / {vqa['val_questions']} val questions; train and val images are disjoint.
Majority-answer baseline: the most common train answer, "{vqa['train_majority_answer']}", is the answer to \
{100 * vqa['val_share_of_majority_answer']:.1f}% of val questions
(its VQA accuracy on val is computed in tests/test_datamodule.py and is of the same size).
NLVR2 dev: {100 * summary['nlvr2']['dev_share_true']:.1f}% "true". Karpathy splits: {summary['coco_karpathy']}.
{video_summary(summary)}"""


def video_summary(summary: dict[str, Any]) -> str:
    if not summary["videos"]:
        return ""
    tvqa, tvc = summary["tvqa"], summary["tvc"]
    return (
        f"TVQA: {tvqa['train_questions']} train / {tvqa['val_questions']} val questions. "
        f"TVC: {tvc['train_clips']} train / {tvc['val_clips']} val moments.\n"
    )


def main(argv: list[str] | None = None) -> int:
    """``mmft sample-data``."""
    parser = argparse.ArgumentParser(prog="mmft sample-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="output folder (default data/sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=1, help="multiply the number of images and questions")
    parser.add_argument("--no-videos", dest="videos", action="store_false", help="skip the mp4 files (needs av)")
    args = parser.parse_args(argv)
    summary = make_sample_data(args.out, args.seed, args.scale, args.videos)
    print(f"wrote {args.out}: {json.dumps(summary)}")
    return 0
