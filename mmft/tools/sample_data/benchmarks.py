"""The LLaVA-1.5 benchmarks in their official layouts: VizWiz, ScienceQA, POPE, MMBench, TextVQA."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .scenes import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZE,
    Scene,
    draw_scene,
    question_about,
    random_scene,
    save,
    ten_answers,
    write_json,
    write_json_lines,
)


def make_vizwiz(root: Path, rng: random.Random, n: int) -> dict[str, int]:
    """VizWiz-VQA's ``val.json``: about a quarter of the photos show no shape (blank, as a blind photographer's
    missed shot), and their "What color is the shape?" is answered "unanswerable" by most annotators."""
    records = []
    for k in range(n):
        name = f"VizWiz_val_{k:08d}.jpg"
        scene = random_scene(rng)
        if rng.random() < 0.25:
            save(Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[scene.background]), root / "vizwiz" / "val" / name)
            unanswerable = rng.choice([8, 9, 10])
            answers = ["unanswerable"] * unanswerable + [rng.choice(list(COLORS))] * (10 - unanswerable)
            question, answer_type, answerable = "What color is the shape?", "unanswerable", 0
        else:
            save(draw_scene(scene, rng), root / "vizwiz" / "val" / name)
            question, answer, _, answer_type = question_about(scene, rng)
            answer_type = {"yes/no": "yes/no", "number": "number"}.get(answer_type, "other")
            answers = ten_answers(answer, answer_type, rng)
            if rng.random() < 0.2:  # a few annotators always find something unanswerable
                answers[rng.randrange(10)] = "unanswerable"
            answerable = 1
        rng.shuffle(answers)
        records.append(
            {
                "image": name,
                "question": question,
                "answers": [{"answer": a, "answer_confidence": rng.choice(["yes", "maybe"])} for a in answers],
                "answer_type": answer_type,
                "answerable": answerable,
            }
        )
    write_json(root / "vizwiz" / "val.json", records)
    return {"questions": len(records), "unanswerable": sum(r["answerable"] == 0 for r in records)}


def make_scienceqa(root: Path, rng: random.Random, n: int) -> dict[str, int]:
    """ScienceQA's ``problems.json`` and ``pid_splits.json``: multiple-choice shape and colour questions, two
    thirds with an image (the IMG subset); a few train problems that the IMG test subset must leave out."""
    problems, splits = {}, {"train": [], "val": [], "test": []}
    for k in range(n):
        pid = str(1000 + k)
        split = "test" if k < n * 3 // 4 else "train"
        scene = random_scene(rng)
        with_image = rng.random() < 2 / 3
        if with_image:
            save(draw_scene(scene, rng), root / "scienceqa" / "images" / split / pid / "image.png")
            question, answer, pool = "Which shape is shown?", scene.shape, list(SHAPES)
        else:
            question, answer, pool = "Which of these is a color?", scene.color, [scene.color, *SHAPES]
        choices = rng.sample([answer, *[c for c in pool if c != answer]], rng.choice((2, 3)) if len(pool) > 2 else 2)
        if answer not in choices:
            choices[rng.randrange(len(choices))] = answer
        problems[pid] = {
            "question": question,
            "choices": choices,
            "answer": choices.index(answer),
            "hint": "The picture shows shapes of one kind." if with_image and rng.random() < 0.5 else "",
            "image": "image.png" if with_image else None,
            "task": "closed choice",
            "grade": "grade2",
            "subject": "natural science",
            "topic": "shapes",
            "category": "Identify shapes",
            "skill": "shapes",
            "lecture": "",
            "solution": "",
            "split": split,
        }
        splits[split].append(pid)
    write_json(root / "scienceqa" / "problems.json", problems)
    write_json(root / "scienceqa" / "pid_splits.json", splits)
    img_test = sum(1 for pid in splits["test"] if problems[pid]["image"])
    return {"test_problems": len(splits["test"]), "test_with_image": img_test}


def make_pope(root: Path, rng: random.Random, scenes: dict[int, Scene], per_split: int) -> None:
    """LLaVA's POPE files over the COCO val images: half "yes" (the shape shown), half "no" (a shape not shown:
    any other for random, the commonest for popular, the one drawn most like it for adversarial)."""
    image_ids = sorted(scenes)
    nearest = {"circle": "square", "square": "circle", "triangle": "square"}
    for split in ("random", "popular", "adversarial"):
        lines = []
        for question_id, image_id in enumerate(rng.sample(image_ids, per_split), start=1):
            scene = scenes[image_id]
            if question_id % 2:
                shape, label = scene.shape, "yes"
            elif split == "random":
                shape, label = rng.choice([s for s in SHAPES if s != scene.shape]), "no"
            elif split == "popular":
                shape = "circle" if scene.shape != "circle" else "square"
                label = "no"
            else:
                shape, label = nearest[scene.shape], "no"
            lines.append(
                {
                    "question_id": question_id,
                    "image": f"COCO_val2014_{image_id:012d}.jpg",
                    "text": f"Is there a {shape} in the image?",
                    "label": label,
                }
            )
        write_json_lines(root / "pope" / f"coco_pope_{split}.json", lines)


def make_mmbench(root: Path, rng: random.Random, n: int) -> None:
    """An MMBench dev TSV: 2 to 4 options, some hints, images inline as base64 PNG; the last row asks about the
    first row's image and gives that row's index instead of the data, as MMBench does for repeated images."""
    import base64
    import csv
    import io

    scenes = [random_scene(rng) for _ in range(n - 1)]
    scenes.append(scenes[0])
    rows = []
    for index, scene in enumerate(scenes):
        if index % 2:
            question, answer, pool = "What color is the shape?", scene.color, list(COLORS)
        else:
            question, answer, pool = "Which shape is shown?", scene.shape, list(SHAPES)
        others = [option for option in pool if option != answer]
        options = [answer, *rng.sample(others, min(len(others), rng.choice((1, 2, 3))))]
        rng.shuffle(options)
        if index == n - 1:
            image = "0"
        else:
            buffer = io.BytesIO()
            draw_scene(scene, rng).save(buffer, format="PNG", optimize=False)
            image = base64.b64encode(buffer.getvalue()).decode("ascii")
        rows.append(
            {
                "index": str(index),
                "question": question,
                "hint": "Look at the picture." if rng.random() < 0.3 else "nan",
                **{letter: options[k] if k < len(options) else "" for k, letter in enumerate("ABCD")},
                "answer": "ABCD"[options.index(answer)],
                "category": "attribute_recognition" if index % 2 else "object_localization",
                "l2-category": "perception",
                "image": image,
            }
        )
    path = root / "mmbench" / "mmbench_dev_20230712.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def make_textvqa(root: Path, rng: random.Random, n: int) -> None:
    """TextVQA val with its Rosetta OCR file: a colour name written on each image; OCR reads it (sometimes with a
    stray token) and the question asks for the written word."""

    font = ImageFont.load_default()
    questions, ocr = [], []
    for k in range(n):
        image_id = f"{k:016x}"
        word = rng.choice(list(COLORS))
        background = rng.choice(list(BACKGROUNDS))
        image = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[background])
        ink = (250, 250, 250) if background == "black" else (12, 12, 12)
        ImageDraw.Draw(image).text((4, SIZE // 2 - 6), word.upper(), fill=ink, font=font)
        save(image, root / "textvqa" / "train_images" / f"{image_id}.jpg")
        tokens = [word.upper()] + ([rng.choice(["sale", "open", "10"])] if rng.random() < 0.5 else [])
        ocr.append({"image_id": image_id, "ocr_tokens": tokens, "set_name": "val"})
        answers = ten_answers(word, "other", rng)
        questions.append(
            {
                "question": "what word is written on the picture?",
                "image_id": image_id,
                "image_classes": ["text"],
                "image_width": SIZE,
                "image_height": SIZE,
                "answers": answers,
                "question_tokens": ["what", "word", "is", "written", "on", "the", "picture"],
                "question_id": 40_000 + k,
                "set_name": "val",
            }
        )
    header = {"dataset_type": "val", "dataset_name": "textvqa"}
    write_json(root / "textvqa" / "TextVQA_0.5.1_val.json", {**header, "data": questions})
    write_json(root / "textvqa" / "TextVQA_Rosetta_OCR_v0.2_val.json", {"dataset_type": "val", "data": ocr})
