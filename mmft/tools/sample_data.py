"""Generate the small synthetic sample data, in the real public file formats, that the tiny configs and tests use.

Images are simple scenes: one to three shapes of one kind and colour on a plain background. Questions about colour,
shape, count and background are answerable from the pixels, so a tiny model learns them in minutes on a CPU, while
the answers vary enough that always giving the most common answer scores far below 100%.

    mmft sample-data --out data/sample

Deterministic for a given seed (the same bytes every run, but for the mp4 files), about 7 MB, a few seconds.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 205, 30),
    "purple": (145, 60, 185),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (250, 250, 250), "black": (12, 12, 12), "gray": (128, 128, 128)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
SIZE = 64
VIDEO_SIZE = 64  # decord2 cannot decode frames much smaller than this (about 2048 pixels)


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    count: int
    background: str

    @property
    def noun(self) -> str:
        return self.shape if self.count == 1 else f"{self.shape}s"


def random_scene(rng: random.Random) -> Scene:
    return Scene(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice((1, 1, 2, 3)), rng.choice(list(BACKGROUNDS)))


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], color: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=color)


def draw_scene(scene: Scene, rng: random.Random, size: int = SIZE) -> Image.Image:
    """The scene's shapes in distinct cells of a 3x3 grid, with a little jitter in position and size."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = size // 3
    for index in rng.sample(range(9), scene.count):
        side = rng.randint(cell * 6 // 10, cell - 2)
        x = (index % 3) * cell + rng.randint(0, cell - side)
        y = (index // 3) * cell + rng.randint(0, cell - side)
        draw_shape(draw, scene.shape, (x, y, x + side, y + side), COLORS[scene.color])
    return image


def save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        image.save(path, quality=92)
    else:
        image.save(path, optimize=False)


def write_json(path: Path, data: Any, indent: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- questions and captions about one scene


def question_about(scene: Scene, rng: random.Random) -> tuple[str, str, str, str]:
    """``(question, answer, question_type, answer_type)`` with VQA-style types; about 40% yes/no questions."""
    kind = rng.choices(["color", "shape", "count", "background", "yes/no"], weights=[20, 15, 15, 10, 40])[0]
    if kind == "color":
        verb = "is the" if scene.count == 1 else "are the"
        return f"What color {verb} {scene.noun}?", scene.color, "what color is the", "other"
    if kind == "shape":
        return "What shape is shown?", scene.shape, "what", "other"
    if kind == "count":
        return f"How many {scene.shape}s are there?", str(scene.count), "how many", "number"
    if kind == "background":
        return "What color is the background?", scene.background, "what color is the", "other"
    if rng.random() < 0.5:
        color = scene.color if rng.random() < 0.5 else rng.choice([c for c in COLORS if c != scene.color])
        return f"Is the {scene.shape} {color}?", "yes" if color == scene.color else "no", "is the", "yes/no"
    shape = scene.shape if rng.random() < 0.5 else rng.choice([s for s in SHAPES if s != scene.shape])
    return f"Is there a {shape} in the picture?", "yes" if shape == scene.shape else "no", "is there a", "yes/no"


def alternatives(answer: str, answer_type: str) -> list[str]:
    """Plausible wrong answers of the same kind, for annotator noise."""
    for pool in (list(COLORS) + list(BACKGROUNDS), list(SHAPES), ["1", "2", "3", "4"], ["yes", "no"]):
        if answer in pool:
            return [a for a in pool if a != answer]
    return ["yes", "no"] if answer_type == "yes/no" else ["1"]


def ten_answers(answer: str, answer_type: str, rng: random.Random) -> list[str]:
    """Ten annotator answers: mostly the truth (sometimes spelt "two" or "Red"), a few plausible mistakes."""
    correct = rng.choices([10, 9, 8, 7, 5], weights=[45, 25, 15, 10, 5])[0]
    answers = []
    for _ in range(correct):
        spelling = answer
        if answer.isdigit() and rng.random() < 0.15:
            spelling = COUNT_WORDS.get(int(answer), answer)
        elif rng.random() < 0.05:
            spelling = answer.capitalize()
        answers.append(spelling)
    answers += [rng.choice(alternatives(answer, answer_type)) for _ in range(10 - correct)]
    rng.shuffle(answers)
    return answers


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """Five COCO-style captions, with COCO's irregular capitalisation and final periods."""
    article = {1: "a", 2: "two", 3: "three"}[scene.count]
    thing = f"{article} {scene.color} {scene.noun}"
    templates = [
        f"{thing} on a {scene.background} background",
        f"{thing} against a plain {scene.background} backdrop",
        f"a {scene.background} picture with {thing}",
        f"there {'is' if scene.count == 1 else 'are'} {thing} on {scene.background}",
        f"{COUNT_WORDS[scene.count]} {scene.color} {scene.noun} in front of {scene.background}",
        f"simple drawing of {thing}",
    ]
    chosen = rng.sample(templates, 5)
    out = []
    for text in chosen:
        if rng.random() < 0.6:
            text = text[0].upper() + text[1:]
        if rng.random() < 0.5:
            text += "."
        out.append(text)
    return out


def caption_tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


# ---------------------------------------------------------------- datasets


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


def make_llava_video(root: Path) -> None:
    """LLaVA-Video-178K-style records over the MSRVTT-QA and TVC sample videos (paths relative to the sample
    folder): a conversation per MSRVTT-QA video, and one per TVC moment with its ``ts`` span."""
    records = []
    by_video: dict[int, list[dict]] = {}
    for qa in json.loads((root / "msrvtt_qa" / "train_qa.json").read_text(encoding="utf-8")):
        by_video.setdefault(qa["video_id"], []).append(qa)
    for video_id, questions in by_video.items():
        conversation = []
        for qa in questions:
            conversation += [{"from": "human", "value": qa["question"]}, {"from": "gpt", "value": qa["answer"]}]
        conversation[0]["value"] = "<video>\n" + conversation[0]["value"]
        records.append({"id": f"msrvtt-{video_id}", "video": f"msrvtt_qa/videos/video{video_id}.mp4",
                        "conversations": conversation, "data_source": "msrvtt_qa"})
    for line in (root / "tvc" / "tvc_train.jsonl").read_text(encoding="utf-8").splitlines():
        moment = json.loads(line)
        records.append(
            {
                "id": f"tvc-{moment['clip_id']}",
                "video": f"tvc/videos/{moment['vid_name']}.mp4",
                "ts": moment["ts"],
                "conversations": [{"from": "human", "value": "<image>\nWhat happens in this part of the video?"},
                                  {"from": "gpt", "value": moment["descs"][0]["desc"]}],
                "data_source": "tvc",
            }
        )
    write_json(root / "llava" / "llava_video_sample.json", records, indent=2)


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


def write_video(path: Path, frames: list[np.ndarray], fps: int = 8) -> None:
    import av  # a dev dependency (pip install av); only the video sample needs it

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def make_msrvtt_qa(root: Path, rng: random.Random, counts: dict[str, int], num_frames: int = 8) -> None:
    """Tiny videos of a shape moving left, right, up or down, with MSRVTT-QA-style questions."""
    directions = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    video_id, question_id = 0, 0
    for split, n in counts.items():
        records = []
        for _ in range(n):
            color, shape, background = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
            direction = rng.choice(list(directions))
            dx, dy = directions[direction]
            frames = []
            for t in range(num_frames):
                image = Image.new("RGB", (VIDEO_SIZE, VIDEO_SIZE), BACKGROUNDS[background])
                offset = (t - num_frames // 2) * 5
                x, y = 24 + dx * offset, 24 + dy * offset
                draw_shape(ImageDraw.Draw(image), shape, (x, y, x + 16, y + 16), COLORS[color])
                frames.append(np.asarray(image))
            write_video(root / "msrvtt_qa" / "videos" / f"video{video_id}.mp4", frames)
            asked = [(f"which direction does the {shape} move?", direction), ("what color is the moving shape?", color)]
            for question, answer in asked:
                records.append({"id": question_id, "video_id": video_id, "question": question, "answer": answer})
                question_id += 1
            video_id += 1
        write_json(root / "msrvtt_qa" / f"{split}_qa.json", records)


MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
STILL = "nowhere"
VIDEO_FPS = 8
VIDEO_SHAPE = 16  # pixels


def moving_shape_frames(
    color: str, shape: str, background: str, velocities: list[tuple[int, int]]
) -> list[np.ndarray]:
    """One frame per velocity: the shape moves 2 pixels per frame that way, its whole path centred in the frame."""
    path, x, y = [], 0, 0
    for dx, dy in velocities:
        path.append((x, y))
        x, y = x + 2 * dx, y + 2 * dy
    xs, ys = zip(*path)
    shift_x = (VIDEO_SIZE - VIDEO_SHAPE - min(xs) - max(xs)) // 2
    shift_y = (VIDEO_SIZE - VIDEO_SHAPE - min(ys) - max(ys)) // 2
    frames = []
    for x, y in path:
        image = Image.new("RGB", (VIDEO_SIZE, VIDEO_SIZE), BACKGROUNDS[background])
        box = (x + shift_x, y + shift_y, x + shift_x + VIDEO_SHAPE, y + shift_y + VIDEO_SHAPE)
        draw_shape(ImageDraw.Draw(image), shape, box, COLORS[color])
        frames.append(np.asarray(image))
    return frames


def write_json_lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def subtitle_record(vid_name: str, lines: list[tuple[float, float, str]]) -> dict[str, Any]:
    return {"vid_name": vid_name, "sub": [{"start": start, "end": end, "text": text} for start, end, text in lines]}


def multiple_choice(question: str, answer: str, options: list[str]) -> dict[str, Any]:
    """A TVQA-style question: the five options in the order given, ``answer_idx`` pointing at the answer."""
    return {"q": question, **{f"a{k}": o for k, o in enumerate(options)}, "answer_idx": options.index(answer)}


def make_tvqa(root: Path, rng: random.Random, counts: dict[str, int], num_frames: int = 16) -> dict[str, int]:
    """VALUE's TVQA format: 2-second clips of a shape moving one way (or not at all), two five-way questions each.

    "Which way does it move" needs the video; the colour is in the pixels and, for most clips, in the subtitles.
    Each question type lists its options in one fixed order, so an answer always has the same label and the tiny
    video models can learn it as they learn MSRVTT-QA's words. With the options shuffled per question (as real TVQA
    does), answering means finding the seen answer among the choices and copying its label: the tiny LLaVA-OneVision
    video config then learned its 24 training questions by heart (all right) and stayed at chance on val, and did so
    again with 96.
    """
    seconds = num_frames / VIDEO_FPS
    middle = seconds / 2
    subtitles, questions, qid = [], {}, 0
    for split, n in counts.items():
        records = []
        for k in range(n):
            vid_name = f"{split}_clip_{k:03d}"
            color, shape, background = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
            motion = rng.choice([*MOTIONS, STILL])
            frames = moving_shape_frames(color, shape, background, [MOTIONS.get(motion, (0, 0))] * num_frames)
            write_video(root / "tvqa" / "videos" / f"{vid_name}.mp4", frames, VIDEO_FPS)
            if rng.random() < 0.8:  # the others have no subtitle line, as some real clips
                lines = [(0.0, middle, f"look at the {color} {shape}"), (middle, seconds, "what is it doing?")]
                subtitles.append(subtitle_record(vid_name, lines))
            asked = [
                multiple_choice(f"which way does the {shape} move?", motion, [*MOTIONS, STILL]),
                multiple_choice(f"what color is the {shape}?", color, list(COLORS)),
            ]
            for question in asked:
                records.append({"vid_name": vid_name, **question, "qid": qid, "ts": f"0.00-{seconds:.2f}"})
                qid += 1
        write_json_lines(root / "tvqa" / f"tvqa_{split}.jsonl", records)
        questions[f"{split}_questions"] = len(records)
    write_json_lines(root / "tvqa" / "tvqa_subtitles.jsonl", subtitles)
    return questions


def moment_captions(color: str, shape: str, motion: str, rng: random.Random) -> list[dict[str, str]]:
    """Two TVC-style descriptions of one moment."""
    templates = [
        f"the {color} {shape} moves {motion}",
        f"a {color} {shape} slides {motion}",
        f"the {shape} goes {motion}",
        f"a {color} {shape} heading {motion}",
    ]
    return [{"desc": desc} for desc in rng.sample(templates, 2)]


def make_tvc(root: Path, rng: random.Random, counts: dict[str, int], num_frames: int = 16) -> dict[str, int]:
    """VALUE's TVC format: in each 2-second video the shape moves one way during the first second and another way
    during the second; each second is a moment (``ts``) with two captions, so a model must look inside the span."""
    seconds, half = num_frames / VIDEO_FPS, num_frames // 2
    middle = seconds / 2
    subtitles, clips, clip_id = [], {}, 0
    for split, n in counts.items():
        records = []
        for k in range(n):
            vid_name = f"{split}_video_{k:03d}"
            color, shape, background = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
            motions = rng.sample(list(MOTIONS), 2)
            velocities = [MOTIONS[motions[0]]] * half + [MOTIONS[motions[1]]] * (num_frames - half)
            frames = moving_shape_frames(color, shape, background, velocities)
            write_video(root / "tvc" / "videos" / f"{vid_name}.mp4", frames, VIDEO_FPS)
            lines = [(0.1, middle - 0.1, f"a {color} {shape} appears"), (middle + 0.1, seconds - 0.1, "now it turns")]
            subtitles.append(subtitle_record(vid_name, lines))
            for ts, motion in zip(([0.0, middle], [middle, seconds]), motions):
                descs = moment_captions(color, shape, motion, rng)
                record = {"vid_name": vid_name, "duration": seconds, "ts": ts, "clip_id": clip_id, "descs": descs}
                records.append(record)
                clip_id += 1
        write_json_lines(root / "tvc" / f"tvc_{split}.jsonl", records)
        clips[f"{split}_clips"] = len(records)
    write_json_lines(root / "tvc" / "tvc_subtitles.jsonl", subtitles)
    return clips


# ---------------------------------------------------------------- the LLaVA-1.5 benchmarks


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
    from PIL import ImageFont

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


# ---------------------------------------------------------------- OCR: rendered words to read

OCR_WORDS = ("STOP", "OPEN", "SALE", "EXIT", "CAFE", "BANK", "TAXI", "HOTEL", "PARK", "MILK", "BOOK", "FISH")
OCR_NUMBERS = ("12", "25", "38", "47", "56", "63", "74", "89")
OCR_SIZE = 64
# OCR-VQA genre of a cover, told by its colour
GENRES = {"Travel": (40, 80, 225), "Comics": (40, 170, 60), "Romance": (220, 40, 40), "History": (145, 60, 185)}


@functools.lru_cache(maxsize=None)
def ocr_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (the same glyphs on every machine with the same Pillow)."""
    return ImageFont.load_default(size=size)


def draw_lines(lines: list[tuple[str, int]], background: tuple, ink: tuple, rng: random.Random) -> Image.Image:
    """``OCR_SIZE`` square image with each ``(text, font size)`` line centred, stacked, moved a few pixels at random."""
    image = Image.new("RGB", (OCR_SIZE, OCR_SIZE), background)
    draw = ImageDraw.Draw(image)
    fonts = [ocr_font(size) for _, size in lines]
    boxes = [draw.textbbox((0, 0), text, font=font) for (text, _), font in zip(lines, fonts)]
    gap = 4
    height = sum(box[3] - box[1] for box in boxes) + gap * (len(lines) - 1)
    y = (OCR_SIZE - height) // 2 + rng.randint(-2, 2)
    for (text, _), font, box in zip(lines, fonts, boxes):
        x = (OCR_SIZE - (box[2] - box[0])) // 2 + rng.randint(-2, 2)
        draw.text((x - box[0], y - box[1]), text, fill=ink, font=font)
        y += box[3] - box[1] + gap
    return image


def sign_colors(rng: random.Random) -> tuple[tuple, tuple]:
    """Dark letters on a white or yellow sign, or white letters on a blue one."""
    background = rng.choice([BACKGROUNDS["white"], COLORS["yellow"], COLORS["blue"]])
    ink = (250, 250, 250) if background == COLORS["blue"] else (12, 12, 12)
    return background, ink


def noisy_answers(answer: str, pool: tuple[str, ...], rng: random.Random) -> list[str]:
    """Ten TextVQA-style answers: mostly the word (sometimes as written, in capitals), a few misreadings."""
    correct = rng.choices([10, 9, 8, 7], weights=[50, 25, 15, 10])[0]
    answers = [answer.upper() if rng.random() < 0.1 else answer.lower() for _ in range(correct)]
    answers += [rng.choice([w for w in pool if w != answer]).lower() for _ in range(10 - correct)]
    rng.shuffle(answers)
    return answers


def make_ocr_textvqa(root: Path, rng: random.Random, counts: dict[str, int]) -> None:
    """TextVQA train and val: signs with one word of ``OCR_WORDS`` written on them."""
    questions_asked = ("what does the sign say?", "what word is written on the sign?", "what is written here?")
    first = 0
    for split, n in counts.items():
        questions = []
        for k in range(first, first + n):
            image_id = f"{k:016x}"
            word = rng.choice(OCR_WORDS)
            save(draw_lines([(word, 18)], *sign_colors(rng), rng), root / "train_images" / f"{image_id}.jpg")
            question = rng.choice(questions_asked)
            questions.append(
                {
                    "question": question,
                    "image_id": image_id,
                    "image_classes": ["Street sign"],
                    "image_width": OCR_SIZE,
                    "image_height": OCR_SIZE,
                    "answers": noisy_answers(word, OCR_WORDS, rng),
                    "question_tokens": question.rstrip("?").split(),
                    "question_id": k,
                    "set_name": split,
                }
            )
        first += n
        header = {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1"}
        write_json(root / f"TextVQA_0.5.1_{split}.json", {**header, "data": questions})


def make_ocr_docvqa(root: Path, rng: random.Random, counts: dict[str, int]) -> None:
    """DocVQA train and val: forms with a title word and a number line, a question about each."""
    first = 0
    for split, n in counts.items():
        records = []
        for k in range(first, first + n):
            word, number = rng.choice(OCR_WORDS), rng.choice(OCR_NUMBERS)
            name = f"documents/doc{k:05d}_1.png"
            save(draw_lines([(word, 16), (f"NO. {number}", 12)], (250, 250, 250), (12, 12, 12), rng), root / name)
            asked = [("What is the title of the document?", word, "layout"),
                     ("What is the number written below the title?", number, "form")]
            for q, (question, answer, kind) in enumerate(asked):
                records.append(
                    {
                        "questionId": 2 * k + q,
                        "question": question,
                        "question_types": [kind],
                        "image": name,
                        "docId": k,
                        "ucsf_document_id": f"mmft{k:05d}",
                        "ucsf_document_page_no": "1",
                        "answers": [answer.lower(), answer] if answer.isalpha() else [answer],
                        "data_split": split,
                    }
                )
        first += n
        header = {"dataset_name": "docvqa", "dataset_split": split, "dataset_version": "1.0"}
        write_json(root / f"{split}_v1.0.json", {**header, "data": records})


def make_ocr_vqa(root: Path, rng: random.Random, counts: dict[str, int]) -> None:
    """OCR-VQA's ``dataset.json``: book covers with a title word on a genre's colour."""
    books, first = {}, 0
    for split_number, n in enumerate(counts.values(), start=1):
        for k in range(first, first + n):
            book_id = f"B{k:09d}"
            title, genre = rng.choice(OCR_WORDS).lower(), rng.choice(list(GENRES))
            save(draw_lines([(title.upper(), 16)], GENRES[genre], (250, 250, 250), rng), root / "images" / f"{book_id}.jpg")
            other = genre if rng.random() < 0.5 else rng.choice([g for g in GENRES if g != genre])
            books[book_id] = {
                "imageURL": f"http://images.example.invalid/images/I/{book_id}.jpg",
                "questions": ["What is the title of this book?", "What is the genre of this book?",
                              f"Is this book related to {other}?"],
                "answers": [title, genre.lower(), "yes" if other == genre else "no"],
                "title": title,
                "authorName": "Anonymous",
                "genre": genre,
                "split": split_number,
            }
        first += n
    write_json(root / "dataset.json", books)


def make_ocr(root: Path, rng: random.Random, scale: int) -> dict[str, int]:
    """The OCR sample: TextVQA, DocVQA and OCR-VQA files whose answers are words written in the images (in capitals),
    answered in lower case in all three, so that a model learns one spelling of each word."""
    make_ocr_textvqa(root / "textvqa", rng, {"train": 240 * scale, "val": 60 * scale})
    make_ocr_docvqa(root / "docvqa", rng, {"train": 120 * scale, "val": 30 * scale})
    make_ocr_vqa(root / "ocrvqa", rng, {"train": 120 * scale, "val": 30 * scale})
    return {"textvqa_train_questions": 240 * scale, "docvqa_train_questions": 240 * scale,
            "ocrvqa_train_questions": 360 * scale}


# ---------------------------------------------------------------- entry points


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
