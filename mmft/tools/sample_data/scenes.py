"""The sample data's scenes (one to three shapes of one kind and colour on a plain background), the questions
and captions about them, and the file writers every dataset uses."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

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


def write_json_lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
