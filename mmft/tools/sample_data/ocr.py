"""OCR sample data: rendered words to read (TextVQA-, DocVQA- and OCR-VQA-format)."""

from __future__ import annotations

import functools
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .scenes import BACKGROUNDS, COLORS, save, write_json

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
            cover = draw_lines([(title.upper(), 16)], GENRES[genre], (250, 250, 250), rng)
            save(cover, root / "images" / f"{book_id}.jpg")
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
