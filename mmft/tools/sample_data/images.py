"""Image datasets of the sample data: COCO images, VQAv2, LLaVA instruction data (one image, several, text only),
GQA, NLVR2, COCO Karpathy captions and the held-out source text."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from .scenes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    Scene,
    caption_tokens,
    captions,
    draw_scene,
    question_about,
    random_scene,
    save,
    ten_answers,
    write_json,
    write_json_lines,
)


def make_source_text(root: Path, rng: random.Random, scenes: dict[int, Scene], n: int) -> int:
    """``source/captions.jsonl``: held-out text of the source domain (captions of the val images, which no training
    set holds), one ``{"text": ...}`` a line, for measuring what a fine-tuned language model forgets."""
    texts = [caption for scene in scenes.values() for caption in captions(scene, rng)[:2]][:n]
    write_json_lines(root / "source" / "captions.jsonl", [{"text": text} for text in texts])
    return len(texts)



def make_coco_images(root: Path, rng: random.Random, split: str, first_id: int, n: int) -> dict[int, Scene]:
    scenes = {}
    for image_id in range(first_id, first_id + n):
        scene = random_scene(rng)
        save(draw_scene(scene, rng), root / "coco" / split / f"COCO_{split}_{image_id:012d}.jpg")
        scenes[image_id] = scene
    return scenes


def make_vqav2(root: Path, rng: random.Random, split: str, scenes: dict[int, Scene], per_image: int) -> list[str]:
    questions, annotations = [], []
    for image_id, scene in scenes.items():
        asked = set()
        for k in range(per_image):
            question, answer, question_type, answer_type = question_about(scene, rng)
            if question in asked:
                continue
            asked.add(question)
            question_id = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": question, "question_id": question_id})
            answers = ten_answers(answer, answer_type, rng)
            annotations.append(
                {
                    "question_type": question_type,
                    "multiple_choice_answer": answer,
                    "answers": [
                        {"answer": a, "answer_confidence": rng.choice(["yes", "yes", "maybe"]), "answer_id": i + 1}
                        for i, a in enumerate(answers)
                    ],
                    "image_id": image_id,
                    "answer_type": answer_type,
                    "question_id": question_id,
                }
            )
    info = {"description": "mmft synthetic sample in the VQAv2 format", "version": "2.0"}
    common = {"info": info, "license": {"name": "CC0"}, "data_type": "mscoco", "data_subtype": split}
    folder = root / "vqav2"
    questions_file = {**common, "task_type": "Open-Ended", "questions": questions}
    write_json(folder / f"v2_OpenEnded_mscoco_{split}_questions.json", questions_file)
    write_json(folder / f"v2_mscoco_{split}_annotations.json", {**common, "annotations": annotations})
    return [a["multiple_choice_answer"] for a in annotations]


def make_llava(root: Path, rng: random.Random, scenes: dict[int, Scene], text_only: int) -> None:
    """LLaVA-Instruct-style records: 1-3 rounds of questions per image, plus text-only records."""
    records = []
    for image_id, scene in scenes.items():
        rounds = rng.choice((1, 2, 2, 3))
        conversation, asked = [], set()
        while len(conversation) < 2 * rounds:
            question, answer, _, answer_type = question_about(scene, rng)
            if question in asked:
                continue
            asked.add(question)
            if answer_type == "yes/no":
                reply = f"{answer.capitalize()}."
            elif rng.random() < 0.5:
                reply = answer
            else:
                reply = f"The answer is {answer}."
            conversation += [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]
        first = conversation[0]["value"]
        conversation[0]["value"] = f"<image>\n{first}" if rng.random() < 0.7 else f"{first}\n<image>"
        records.append(
            {
                "id": f"{image_id:012d}",
                "image": f"coco/train2014/COCO_train2014_{image_id:012d}.jpg",
                "conversations": conversation,
            }
        )
    for k in range(text_only):
        shape = rng.choice(SHAPES)
        corners = {"circle": "no corners", "square": "4 corners", "triangle": "3 corners"}[shape]
        a, b = rng.sample(list(COLORS), 2)
        conversation = [
            {"from": "human", "value": f"How many corners does a {shape} have?"},
            {"from": "gpt", "value": f"A {shape} has {corners}."},
        ]
        if rng.random() < 0.5:
            conversation += [
                {"from": "human", "value": f"Name two colors, one of them {a}."},
                {"from": "gpt", "value": f"{a.capitalize()} and {b}."},
            ]
        records.append({"id": f"text-{k:05d}", "conversations": conversation})
    rng.shuffle(records)
    write_json(root / "llava" / "llava_instruct_sample.json", records, indent=2)


def make_llava_multi_image(root: Path, rng: random.Random, scenes: dict[int, Scene], n: int) -> None:
    """LLaVA-OneVision-style records with two or three images each, their ``<image>`` markers in the order of
    ``image``: interleaved with the question text, and a third image introduced in a later turn."""
    ids = sorted(scenes)
    records = []
    for k in range(n):
        chosen = rng.sample(ids, rng.choice((2, 3)))
        first, second = scenes[chosen[0]], scenes[chosen[1]]
        conversation = [
            {"from": "human", "value": "Image 1: <image>\nImage 2: <image>\nWhat color is the shape in image 2?"},
            {"from": "gpt", "value": second.color},
            {"from": "human", "value": "Do both images show the same shape?"},
            {"from": "gpt", "value": "Yes" if first.shape == second.shape else "No"},
        ]
        if len(chosen) == 3:
            conversation += [
                {"from": "human", "value": "<image>\nWhat shape is in this new image?"},
                {"from": "gpt", "value": scenes[chosen[2]].shape},
            ]
        images = [f"coco/train2014/COCO_train2014_{image_id:012d}.jpg" for image_id in chosen]
        records.append({"id": f"multi-{k:04d}", "image": images, "conversations": conversation})
    write_json(root / "llava" / "llava_multi_image_sample.json", records, indent=2)

def make_gqa(root: Path, rng: random.Random, name: str, first_id: int, n: int) -> None:
    questions = {}
    for image_id in range(first_id, first_id + n):
        scene = random_scene(rng)
        image_name = f"n{image_id}"
        save(draw_scene(scene, rng), root / "gqa" / "images" / f"{image_name}.jpg")
        other = rng.choice([s for s in SHAPES if s != scene.shape])
        pair = [scene.shape, other] if rng.random() < 0.5 else [other, scene.shape]
        color = scene.color if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != scene.color])
        same = color == scene.color
        items = [
            (f"Which color is the {scene.shape}?", scene.color, f"The {scene.shape} is {scene.color}.", "query"),
            (f"Is it a {pair[0]} or a {pair[1]}?", scene.shape, f"It is a {scene.shape}.", "choose"),
            (f"Is the {scene.shape} {color}?", "yes" if same else "no",
             f"{'Yes' if same else 'No'}, the {scene.shape} is {scene.color}.", "verify"),
            ("What color is the background?", scene.background, f"The background is {scene.background}.", "query"),
        ]
        for k, (question, answer, full, structural) in enumerate(rng.sample(items, 2)):
            questions[f"{image_id}{k:02d}"] = {
                "semantic": [],
                "entailed": [],
                "equivalent": [f"{image_id}{k:02d}"],
                "question": question,
                "imageId": image_name,
                "isBalanced": True,
                "groups": {"global": None, "local": structural},
                "answer": answer,
                "semanticStr": "",
                "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
                "types": {"detailed": structural, "semantic": "attr", "structural": structural},
                "fullAnswer": full,
            }
    write_json(root / "gqa" / f"{name}_balanced_questions.json", questions)


def nlvr2_statement(left: Scene, right: Scene, rng: random.Random, want: bool) -> tuple[str, bool]:
    """A sentence about the image pair and its truth, preferably equal to ``want`` (to balance the labels)."""
    for _ in range(20):
        kind = rng.randrange(4)
        if kind == 0:
            sentence, truth = "The left image contains more shapes than the right image.", left.count > right.count
        elif kind == 1:
            color = rng.choice([left.color, right.color, rng.choice(list(COLORS))])
            sentence, truth = f"Both images contain {color} shapes.", left.color == color == right.color
        elif kind == 2:
            shape = rng.choice(SHAPES)
            sentence, truth = f"At least one image contains a {shape}.", shape in (left.shape, right.shape)
        else:
            background = rng.choice(list(BACKGROUNDS))
            sentence, truth = f"The right image has a {background} background.", right.background == background
        if truth == want:
            break
    return sentence, truth


def make_nlvr2(root: Path, rng: random.Random, split: str, pairs: int) -> list[bool]:
    lines, labels = [], []
    for pair in range(pairs):
        set_id = 100 + pair // 2
        stem = f"{split}-{set_id}-{pair % 2}"
        directory = set_id % 4 if split == "train" else None
        folder = root / "nlvr2" / "images" / split / (str(directory) if directory is not None else "")
        scenes = [random_scene(rng), random_scene(rng)]
        for side, scene in enumerate(scenes):
            save(draw_scene(scene, rng), folder / f"{stem}-img{side}.png")
        for sentence_index in range(rng.choice((1, 2))):
            sentence, truth = nlvr2_statement(scenes[0], scenes[1], rng, want=rng.random() < 0.5)
            labels.append(truth)
            record = {
                "validation": {},
                "sentence": sentence,
                "left_url": f"https://example.invalid/{stem}-img0.png",
                "writer": "synthetic",
                "label": "True" if truth else "False",
                "right_url": f"https://example.invalid/{stem}-img1.png",
                "synset": "shape",
                "query": "synthetic shapes",
                "identifier": f"{stem}-{sentence_index}",
                "extra_validations": {},
            }
            if directory is not None:
                record["directory"] = directory
            lines.append(json.dumps(record))
    (root / "nlvr2").mkdir(parents=True, exist_ok=True)
    (root / "nlvr2" / f"{split}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return labels


def make_karpathy(root: Path, rng: random.Random, coco: dict[str, dict[int, Scene]]) -> Counter:
    """dataset_coco.json over the COCO images: train2014 -> train; val2014 split into restval, val and test."""
    images = []
    sentence_id = 0
    val_ids = sorted(coco["val2014"])
    third = len(val_ids) // 3
    split_of = {i: "train" for i in coco["train2014"]}
    split_of.update({i: "restval" for i in val_ids[:third]})
    split_of.update({i: "val" for i in val_ids[third : 2 * third]})
    split_of.update({i: "test" for i in val_ids[2 * third :]})
    for folder in ("train2014", "val2014"):
        for image_id, scene in coco[folder].items():
            sentences = []
            for text in captions(scene, rng):
                sentences.append(
                    {"tokens": caption_tokens(text), "raw": text, "imgid": len(images), "sentid": sentence_id}
                )
                sentence_id += 1
            images.append(
                {
                    "filepath": folder,
                    "sentids": [s["sentid"] for s in sentences],
                    "filename": f"COCO_{folder}_{image_id:012d}.jpg",
                    "imgid": len(images),
                    "split": split_of[image_id],
                    "sentences": sentences,
                    "cocoid": image_id,
                }
            )
    write_json(root / "coco_karpathy" / "dataset_coco.json", {"images": images, "dataset": "coco"})
    return Counter(image["split"] for image in images)
