"""Readers of the LLaVA-1.5 benchmarks (VizWiz, ScienceQA, POPE, MMBench, TextVQA with OCR tokens): the official
layouts on the generated sample data and on hand-written files, LLaVA-1.5's prompts, and every bad-input path."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from data_modules.formats import POPE, DataFormatError, MMBench, ScienceQA, TextVQA, VizWiz
from mmft.tasks import LLAVA_INSTRUCTIONS


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def make_image(path: Path, color=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path


def png_base64(color) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ------------------------------------------------------------------------------------------------ prompts


def test_llava15_instructions_are_the_evaluation_strings() -> None:
    """LLaVA-1.5's eval question files and lmms-eval's task configs (vizwiz_vqa, scienceqa_img, mmbench_en, pope,
    textvqa) end each question with these, after a newline."""
    short = "Answer the question using a single word or phrase."
    assert LLAVA_INSTRUCTIONS["vizwiz"] == (
        "When the provided information is insufficient, respond with 'Unanswerable'.\n" + short
    )
    letter = "Answer with the option's letter from the given choices directly."
    assert LLAVA_INSTRUCTIONS["scienceqa"] == LLAVA_INSTRUCTIONS["mmbench"] == letter
    assert LLAVA_INSTRUCTIONS["pope"] == LLAVA_INSTRUCTIONS["textvqa"] == LLAVA_INSTRUCTIONS["vqav2"] == short


# ------------------------------------------------------------------------------------------------ sample data


def test_benchmark_samples(sample_data: Path) -> None:
    vizwiz = VizWiz(sample_data / "vizwiz" / "val.json", sample_data / "vizwiz" / "val").read()
    assert len(vizwiz) == 40 and {e.category for e in vizwiz} <= {"yes/no", "number", "other", "unanswerable"}
    assert sum(e.category == "unanswerable" for e in vizwiz) == 7 and all(len(e.references) == 10 for e in vizwiz)

    problems = json.loads((sample_data / "scienceqa" / "problems.json").read_text())
    sqa = ScienceQA(
        sample_data / "scienceqa" / "problems.json",
        sample_data / "scienceqa" / "pid_splits.json",
        sample_data / "scienceqa" / "images" / "test",
    ).read()
    assert len(sqa) == 19 and all(problems[e.id]["split"] == "test" and problems[e.id]["image"] for e in sqa)

    pope = POPE(sample_data / "pope", sample_data / "coco" / "val2014").read()
    assert [sum(e.category == s for e in pope) for s in ("random", "popular", "adversarial")] == [20, 20, 20]
    assert {e.target for e in pope} == {"yes", "no"}

    mmbench = MMBench(sample_data / "mmbench" / "mmbench_dev_20230712.tsv", sample_data / "mmbench" / "images").read()
    assert len({e.id.split("/")[0] for e in mmbench}) == 16
    assert mmbench[-1].images[0].read_bytes() == mmbench[0].images[0].read_bytes()  # shared by index

    textvqa = TextVQA(
        sample_data / "textvqa" / "TextVQA_0.5.1_val.json",
        sample_data / "textvqa" / "train_images",
        reference_ocr=True,
        ocr_json=sample_data / "textvqa" / "TextVQA_Rosetta_OCR_v0.2_val.json",
    ).read()
    assert len(textvqa) == 30 and all(e.target.upper() in e.prompt for e in textvqa)


# ------------------------------------------------------------------------------------------------ VizWiz


def test_vizwiz_answer_types_unanswerable_and_test_split(tmp_path: Path) -> None:
    make_image(tmp_path / "val" / "VizWiz_val_00000000.jpg")
    make_image(tmp_path / "val" / "VizWiz_val_00000001.jpg")
    answers = [{"answer": "unanswerable", "answer_confidence": "yes"}] * 9
    answers.append({"answer": "red", "answer_confidence": "no"})
    records = [
        {"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answers": answers,
         "answer_type": "unanswerable", "answerable": 0},
        # marked unanswerable although typed "other": answerable wins, as the official unanswerability score uses it
        {"image": "VizWiz_val_00000001.jpg", "question": "Color?", "answers": answers, "answer_type": "other",
         "answerable": 0},
    ]
    first, second = VizWiz(write_json(tmp_path / "val.json", records), tmp_path / "val").read()
    assert first.id == "VizWiz_val_00000000" and first.target == "unanswerable" and first.category == "unanswerable"
    assert first.references == ("unanswerable",) * 9 + ("red",) and second.category == "unanswerable"

    test = [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?"}]
    (unanswered,) = VizWiz(write_json(tmp_path / "test.json", test), tmp_path / "val").read()
    assert unanswered.target is None and unanswered.category is None

    bad = [{"image": "VizWiz_val_00000000.jpg", "question": "Q?", "answers": answers, "answer_type": "color",
            "answerable": 1}]
    with pytest.raises(DataFormatError, match=r"bad\.json#0 \(image VizWiz_val_00000000\.jpg\): 'answer_type' 'color'"):
        VizWiz(write_json(tmp_path / "bad.json", bad), tmp_path / "val").read()
    del bad[0]["answerable"]
    with pytest.raises(DataFormatError, match="missing key 'answerable'"):
        VizWiz(write_json(tmp_path / "bad.json", bad), tmp_path / "val").read()


# ------------------------------------------------------------------------------------------------ ScienceQA


def scienceqa_files(tmp_path: Path, problems: dict, splits: dict) -> tuple[Path, Path]:
    return write_json(tmp_path / "problems.json", problems), write_json(tmp_path / "pid_splits.json", splits)


def test_scienceqa_img_subset_and_llava_prompt(tmp_path: Path) -> None:
    make_image(tmp_path / "images" / "test" / "7" / "image.png")
    problem = {"question": "Which is a mammal?", "choices": ["frog", "whale", "trout"], "answer": 1,
               "hint": "Mammals have fur or hair.", "image": "image.png", "split": "test"}
    problems = {
        "7": problem,
        "8": {**problem, "image": None},  # no image: not in ScienceQA-IMG
        "9": {**problem, "split": "train"},  # not in the test split
    }
    paths = scienceqa_files(tmp_path, problems, {"test": ["7", "8"], "train": ["9"]})
    (example,) = ScienceQA(*paths, tmp_path / "images" / "test").read()
    assert example.prompt == "Context: Mammals have fur or hair.\nWhich is a mammal?\nA. frog\nB. whale\nC. trout"
    assert example.target == "B" and example.references == ("B",) and example.id == "7"
    assert example.images == (tmp_path / "images" / "test" / "7" / "image.png",)

    everything = ScienceQA(*paths, tmp_path / "images" / "test", images_only=False).read()
    assert [e.id for e in everything] == ["7", "8"] and everything[1].images == ()
    no_hint = scienceqa_files(tmp_path, {"8": {**problem, "image": None, "hint": ""}}, {"test": ["8"]})
    (bare,) = ScienceQA(*no_hint, tmp_path, images_only=False).read()
    assert bare.prompt == "Which is a mammal?\nA. frog\nB. whale\nC. trout"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": 3}, "'answer' 3 is not an index into its 3 choices"),
        ({"choices": ["only"]}, "'choices' should be a list of 2 or more strings"),
        ({"question": ""}, "'question' is empty"),
    ],
)
def test_scienceqa_malformed(tmp_path: Path, change: dict, message: str) -> None:
    problem = {"question": "Q?", "choices": ["a", "b", "c"], "answer": 0, "hint": "", "image": None}
    paths = scienceqa_files(tmp_path, {"5": {**problem, **change}}, {"test": ["5"]})
    with pytest.raises(DataFormatError, match=rf"problems\.json#5: {message}"):
        ScienceQA(*paths, tmp_path, images_only=False).read()


def test_scienceqa_split_errors(tmp_path: Path) -> None:
    paths = scienceqa_files(tmp_path, {}, {"test": ["404"]})
    with pytest.raises(DataFormatError, match=r"problems\.json#404: listed in .*pid_splits\.json but not in"):
        ScienceQA(*paths, tmp_path).read()
    with pytest.raises(DataFormatError, match=r"no list of problem ids under 'minival'"):
        ScienceQA(*paths, tmp_path, split="minival").read()


# ------------------------------------------------------------------------------------------------ POPE


def test_pope_splits_ids_and_errors(tmp_path: Path) -> None:
    make_image(tmp_path / "coco" / "COCO_val2014_000000000042.jpg")
    line = {"question_id": 1, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?"}
    for split, label in (("random", "yes"), ("popular", "no"), ("adversarial", "No")):
        (tmp_path / f"coco_pope_{split}.json").write_text(json.dumps({**line, "label": label}) + "\n")
    examples = POPE(tmp_path, tmp_path / "coco").read()
    assert [e.id for e in examples] == ["random/1", "popular/1", "adversarial/1"]  # ids repeat across split files
    assert [e.category for e in examples] == ["random", "popular", "adversarial"]
    assert [e.target for e in examples] == ["yes", "no", "no"] and examples[0].prompt == line["text"]

    (only,) = POPE(tmp_path, tmp_path / "coco", splits=["popular"]).read()
    assert only.id == "popular/1"
    with pytest.raises(ValueError, match="POPE splits must be some of"):
        POPE(tmp_path, tmp_path, splits=["val"])
    (tmp_path / "coco_pope_random.json").write_text(json.dumps({**line, "label": "maybe"}) + "\n")
    with pytest.raises(DataFormatError, match=r"coco_pope_random\.json:1 \(question_id 1\): 'label' should be"):
        POPE(tmp_path, tmp_path / "coco").read()
    (tmp_path / "coco_pope_random.json").unlink()
    with pytest.raises(DataFormatError, match=r"coco_pope_random\.json: file not found \(given as `folder`\)"):
        POPE(tmp_path, tmp_path / "coco").read()


# ------------------------------------------------------------------------------------------------ MMBench


def write_tsv(path: Path, rows: list[dict]) -> Path:
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows([{c: row.get(c, "") for c in columns} for row in rows])
    return path


def test_mmbench_rotations_prompt_and_images(tmp_path: Path) -> None:
    rows = [
        {"index": "10", "question": "What color?", "hint": "A plain picture.", "A": "red", "B": "green",
         "C": "blue", "answer": "B", "image": png_base64((200, 0, 0))},
        {"index": "11", "question": "Which shape?", "hint": "nan", "A": "circle", "B": "square", "C": "nan",
         "answer": "A", "image": "10"},  # the image of row 10, by index
    ]
    examples = MMBench(write_tsv(tmp_path / "dev.tsv", rows), tmp_path / "images").read()
    assert [e.id for e in examples] == ["10/0of3", "10/1of3", "10/2of3", "11/0of2", "11/1of2"]
    # LLaVA's --all-rounds: the options shift by one each round, the right letter follows "green"
    assert examples[0].prompt == "A plain picture.\nWhat color?\nA. red\nB. green\nC. blue"
    assert examples[1].prompt == "A plain picture.\nWhat color?\nA. green\nB. blue\nC. red"
    assert examples[2].prompt == "A plain picture.\nWhat color?\nA. blue\nB. red\nC. green"
    assert [e.target for e in examples[:3]] == ["B", "A", "C"]
    assert examples[3].prompt == "Which shape?\nA. circle\nB. square" and [e.target for e in examples[3:]] == ["A", "B"]
    assert examples[0].images == (tmp_path / "images" / "10.png",)
    assert Image.open(examples[3].images[0]).getpixel((0, 0)) == (200, 0, 0)
    written = examples[0].images[0].stat().st_mtime_ns
    MMBench(tmp_path / "dev.tsv", tmp_path / "images").read()
    assert examples[0].images[0].stat().st_mtime_ns == written  # unchanged images are not rewritten
    assert not list((tmp_path / "images").glob(".*.tmp"))

    test_rows = [{**rows[0], "answer": ""}]
    unanswered = MMBench(write_tsv(tmp_path / "test.tsv", test_rows), tmp_path / "images").read()
    assert len(unanswered) == 3 and all(e.target is None and e.references == () for e in unanswered)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answer": "D"}, "'answer' 'D' is not one of its option letters"),
        ({"B": ""}, "fewer than two options"),
        ({"image": "not base64!"}, "'image' is neither base64 data nor the index of a row"),
        ({"image": "x" * 70}, "'image' is not valid base64"),
        ({"index": "ten"}, "'index' should be an integer"),
    ],
)
def test_mmbench_malformed(tmp_path: Path, change: dict, message: str) -> None:
    row = {"index": "3", "question": "Q?", "A": "a", "B": "b", "answer": "A", "image": png_base64((0, 0, 0))}
    path = write_tsv(tmp_path / "dev.tsv", [{**row, **change}])
    with pytest.raises(DataFormatError, match=rf"dev\.tsv:2 \(index {change.get('index', '3')}\): {message}"):
        MMBench(path, tmp_path / "images").read()


def test_mmbench_wrong_columns(tmp_path: Path) -> None:
    (tmp_path / "x.tsv").write_text("id\tquery\n1\tq\n")
    with pytest.raises(DataFormatError, match="expected MMBench's TSV columns"):
        MMBench(tmp_path / "x.tsv", tmp_path).read()


# ------------------------------------------------------------------------------------------------ TextVQA + OCR


def test_textvqa_reference_ocr_tokens(tmp_path: Path) -> None:
    make_image(tmp_path / "abc.jpg")
    record = {"question": "what brand is it?", "question_id": 3, "image_id": "abc", "answers": ["dakota"] * 10}
    questions = write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [record]})
    (plain,) = TextVQA(questions, tmp_path).read()
    assert plain.prompt == "what brand is it?"

    ocr = write_json(tmp_path / "ocr.json", {"data": [{"image_id": "abc", "ocr_tokens": ["DAKOTA", "Digital"]}]})
    (with_ocr,) = TextVQA(questions, tmp_path, reference_ocr=True, ocr_json=ocr).read()
    assert with_ocr.prompt == "what brand is it?\nReference OCR token: DAKOTA, Digital"

    own = write_json(tmp_path / "own.json", {"data": [{**record, "ocr_tokens": ["stop"]}]})
    (from_record,) = TextVQA(own, tmp_path, reference_ocr=True).read()
    assert from_record.prompt == "what brand is it?\nReference OCR token: stop"

    missing = r"TextVQA_0\.5\.1_val\.json#0 \(question_id 3\): missing key 'ocr_tokens'"
    with pytest.raises(DataFormatError, match=missing):
        TextVQA(questions, tmp_path, reference_ocr=True).read()
    other = write_json(tmp_path / "other_ocr.json", {"data": [{"image_id": "zzz", "ocr_tokens": []}]})
    with pytest.raises(DataFormatError, match=r"image 'abc' has no entry in .*other_ocr\.json"):
        TextVQA(questions, tmp_path, reference_ocr=True, ocr_json=other).read()
    with pytest.raises(ValueError, match="set reference_ocr: true"):
        TextVQA(questions, tmp_path, ocr_json=ocr)


def test_media_paths_must_stay_in_their_folder(tmp_path: Path) -> None:
    make_image(tmp_path / "secret.jpg")
    records = [{"image": "../secret.jpg", "question": "Q?"}]
    with pytest.raises(DataFormatError, match=r"media path '\.\./secret\.jpg' leaves the folder"):
        VizWiz(write_json(tmp_path / "val" / "val.json", records), tmp_path / "val").read()
    line = {"question_id": 1, "image": "/etc/passwd", "text": "Is there a dog?", "label": "no"}
    (tmp_path / "coco_pope_random.json").write_text(json.dumps(line) + "\n")
    with pytest.raises(DataFormatError, match="leaves the folder"):
        POPE(tmp_path, tmp_path / "coco", splits=["random"]).read()
    problem = {"question": "Q?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "../../secret.jpg"}
    paths = scienceqa_files(tmp_path, {"7": problem}, {"test": ["7"]})
    with pytest.raises(DataFormatError, match="leaves the folder"):
        ScienceQA(*paths, tmp_path / "images").read()
