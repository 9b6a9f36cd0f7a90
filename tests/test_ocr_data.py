"""The OCR sample (TextVQA, DocVQA and OCR-VQA formats with rendered words), its baselines, and the OCR-VQA reader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from data_modules import OCRVQA, DocVQA, TextVQA
from data_modules.formats import DataFormatError
from data_modules.media import MediaError
from mmft.metrics import ANLS, ExactMatchAccuracy, TextVQAAccuracy
from mmft.tools.sample_data.ocr import OCR_WORDS


def read_ocr(sample_data: Path, split: str) -> dict[str, list]:
    ocr = sample_data / "ocr"
    docvqa = "train_v1.0.json" if split == "train" else "val_v1.0.json"
    return {
        "textvqa": TextVQA(ocr / "textvqa" / f"TextVQA_0.5.1_{split}.json", ocr / "textvqa" / "train_images").read(),
        "docvqa": DocVQA(ocr / "docvqa" / docvqa, ocr / "docvqa").read(),
        "ocrvqa": OCRVQA(ocr / "ocrvqa" / "dataset.json", ocr / "ocrvqa" / "images", split=split).read(),
    }


def test_the_ocr_sample_reads_in_the_public_formats(sample_data: Path) -> None:
    train, val = read_ocr(sample_data, "train"), read_ocr(sample_data, "val")
    assert {task: len(examples) for task, examples in train.items()} == {"textvqa": 240, "docvqa": 240, "ocrvqa": 360}
    assert {task: len(examples) for task, examples in val.items()} == {"textvqa": 60, "docvqa": 60, "ocrvqa": 90}
    words = {w.lower() for w in OCR_WORDS}
    assert all(e.target.lower() in words and len(e.references) == 10 for e in train["textvqa"])
    assert all(Image.open(e.images[0]).size == (64, 64) for e in val["textvqa"][:5] + val["docvqa"][:5])
    assert {e.id.split("_")[1] for e in train["ocrvqa"]} == {"0", "1", "2"}  # three questions per cover
    train_ids = {e.images[0] for e in train["textvqa"]}
    assert not train_ids & {e.images[0] for e in val["textvqa"]}  # different signs


def majority_scores(sample_data: Path) -> dict[str, float]:
    """Each task's commonest training answer given to every val question, scored by the task's metric."""
    train, val = read_ocr(sample_data, "train"), read_ocr(sample_data, "val")
    scores = {}
    for task, metric in (("textvqa", TextVQAAccuracy()), ("docvqa", ANLS()), ("ocrvqa", ExactMatchAccuracy())):
        majority = Counter(e.target for e in train[task]).most_common(1)[0][0]
        metric.update([majority] * len(val[task]), [list(e.references) for e in val[task]])
        scores[task] = float(metric.compute())
    return scores


def test_guessing_the_commonest_answer_scores_low(sample_data: Path) -> None:
    """The baselines the OCR config must beat (README: Reading text in images)."""
    scores = majority_scores(sample_data)
    assert scores == pytest.approx({"textvqa": 0.097, "docvqa": 0.067, "ocrvqa": 0.156}, abs=5e-4)


@pytest.fixture
def books(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for book in ("B1", "B2"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{book}.jpg")
    return tmp_path


def book(split: int = 1, **changes) -> dict:
    return {"imageURL": "http://x.invalid/I/B1.jpg", "questions": ["What is the title of this book?", "Genre?"],
            "answers": ["Cafe", "Travel"], "title": "Cafe", "genre": "Travel", "split": split, **changes}


def test_ocrvqa_reads_one_example_per_question_of_its_split(books: Path) -> None:
    path = books / "dataset.json"
    path.write_text(json.dumps({"B1": book(), "B2": book(split=2, imageURL="http://x.invalid/I/B2")}))
    train = OCRVQA(path, books / "images").read()
    assert [(e.id, e.prompt, e.target, e.references) for e in train] == [
        ("B1_0", "What is the title of this book?", "Cafe", ("Cafe",)), ("B1_1", "Genre?", "Travel", ("Travel",))
    ]
    assert train[0].images == (books / "images" / "B1.jpg",) and train[0].source == f"{path}#B1"
    (val_title, _) = OCRVQA(path, books / "images", split="val").read()
    assert val_title.images == (books / "images" / "B2.jpg",)  # no extension in the URL: .jpg
    assert OCRVQA(path, books / "images", split="test").read() == []
    with pytest.raises(ValueError, match="split must be one of"):
        OCRVQA(path, books / "images", split="dev")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (book(answers=["Cafe"]), "same length, got 2 and 1"),
        (book(split=4), "'split' should be 1 (train), 2 (val) or 3 (test), got 4"),
        (book(questions=["", "Genre?"]), "non-empty string"),
        ({"questions": [], "answers": []}, "missing key 'split'"),
        ("a cover", "expected a JSON object"),
    ],
)
def test_ocrvqa_bad_records_name_the_file_and_book(books: Path, record, message: str) -> None:
    path = books / "dataset.json"
    path.write_text(json.dumps({"B1": book(), "B2": record}))
    with pytest.raises(DataFormatError) as error:
        OCRVQA(path, books / "images").read()
    assert "dataset.json#B2" in str(error.value) and message in str(error.value)
    skipping = OCRVQA(path, books / "images", on_error="skip")
    assert len(skipping.read()) == 2 and skipping.skipped.total == 1


def test_ocrvqa_missing_cover_and_bad_file(books: Path) -> None:
    path = books / "dataset.json"
    path.write_text(json.dumps({"B9": book(imageURL="http://x.invalid/I/B9.png")}))
    with pytest.raises(MediaError, match=r"dataset.json#B9: .*B9\.png: file not found"):
        OCRVQA(path, books / "images").read()
    path.write_text(json.dumps([book()]))
    with pytest.raises(DataFormatError, match="expected a JSON object of book id -> record, got list"):
        OCRVQA(path, books / "images", on_error="skip").read()
