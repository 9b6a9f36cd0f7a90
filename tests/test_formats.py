"""Dataset readers: the real formats (on the generated sample data) and every bad-input path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from data_modules.formats import (
    GQA,
    MSRVTTQA,
    NLVR2,
    CocoKarpathy,
    DataFormatError,
    DocVQA,
    LlavaInstruct,
    TextVQA,
    VQAv2,
)
from data_modules.media import MediaError


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def make_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


# ------------------------------------------------------------------------------------------------ sample data


def test_llava_sample(sample_data: Path) -> None:
    examples = LlavaInstruct(sample_data / "llava" / "llava_instruct_sample.json", sample_data).read()
    with_image = [e for e in examples if e.images]
    text_only = [e for e in examples if not e.images]
    assert len(with_image) == 160 and len(text_only) == 40
    assert any(len(e.turns) >= 4 for e in with_image), "multi-turn conversations"
    for e in examples:
        assert e.task == "llava_instruct"
        assert [t.role for t in e.turns] == ["user", "assistant"] * (len(e.turns) // 2)
        assert all("<image>" not in t.text and t.text == t.text.strip() for t in e.turns)
        assert e.target == e.turns[-1].text and e.references == (e.target,)
    assert all(e.images[0].is_file() for e in with_image)


def test_vqav2_sample(sample_data: Path) -> None:
    folder = sample_data / "vqav2"
    questions = folder / "v2_OpenEnded_mscoco_val2014_questions.json"
    annotations = folder / "v2_mscoco_val2014_annotations.json"
    examples = VQAv2(questions, sample_data / "coco" / "val2014", "val2014", annotations=annotations).read()
    raw = {a["question_id"]: a for a in json.loads(annotations.read_text())["annotations"]}
    assert len(examples) == len(raw)
    for e in examples:
        annotation = raw[int(e.id)]
        assert e.target == annotation["multiple_choice_answer"]
        assert e.references == tuple(a["answer"] for a in annotation["answers"]) and len(e.references) == 10
        assert e.images[0].name == f"COCO_val2014_{annotation['image_id']:012d}.jpg"
        assert e.prompt.endswith("?")
    unanswered = VQAv2(questions, sample_data / "coco" / "val2014", "val2014", task="vqav2_test").read()
    assert all(e.target is None and e.references == () and e.task == "vqav2_test" for e in unanswered)


def test_vqav2_train_and_val_images_are_disjoint(sample_data: Path) -> None:
    def image_ids(split: str) -> set[int]:
        path = sample_data / "vqav2" / f"v2_OpenEnded_mscoco_{split}_questions.json"
        return {q["image_id"] for q in json.loads(path.read_text())["questions"]}

    assert not image_ids("train2014") & image_ids("val2014")


def test_gqa_nlvr2_msrvtt_samples(sample_data: Path) -> None:
    gqa = GQA(sample_data / "gqa" / "testdev_balanced_questions.json", sample_data / "gqa" / "images").read()
    assert len(gqa) == 80 and all(e.target and e.references == (e.target,) for e in gqa)

    train = NLVR2(sample_data / "nlvr2" / "train.json", sample_data / "nlvr2" / "images" / "train").read()
    dev = NLVR2(sample_data / "nlvr2" / "dev.json", sample_data / "nlvr2" / "images" / "dev").read()
    for e in train + dev:
        assert e.target in ("true", "false") and len(e.images) == 2
        stem = e.id.rsplit("-", 1)[0]
        assert [p.name for p in e.images] == [f"{stem}-img0.png", f"{stem}-img1.png"]
    assert all(e.images[0].parent.name.isdigit() for e in train), "train images live in <directory>/ subfolders"
    assert {e.target for e in dev} == {"true", "false"}

    videos = MSRVTTQA(sample_data / "msrvtt_qa" / "val_qa.json", sample_data / "msrvtt_qa" / "videos").read()
    assert videos and all(e.video is not None and e.video.is_file() and not e.images for e in videos)


def test_coco_karpathy_sample(sample_data: Path) -> None:
    dataset = sample_data / "coco_karpathy" / "dataset_coco.json"
    splits = {}
    for image in json.loads(dataset.read_text())["images"]:
        splits.setdefault(image["split"], []).append(image)
    train = CocoKarpathy(dataset, sample_data / "coco", "train").read()
    # one Example per caption, restval included
    assert len(train) == 5 * (len(splits["train"]) + len(splits["restval"]))
    assert {e.id.split("_")[1] for e in train} == {"0", "1", "2", "3", "4"}
    test = CocoKarpathy(dataset, sample_data / "coco", "test").read()
    assert len(test) == len(splits["test"])  # one Example per image
    for e in test:
        assert len(e.references) == 5 and e.target == e.references[0] and e.prompt == ""
        assert e.images[0].is_file()
    per_image_train = CocoKarpathy(dataset, sample_data / "coco", "train", per_caption=False, prompt="Describe.")
    examples = per_image_train.read()
    assert len(examples) == len(splits["train"]) + len(splits["restval"])
    assert examples[0].prompt == "Describe."


# ------------------------------------------------------------------------------------------------ LLaVA errors

GOOD_TURNS = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
TWO_MARKERS = [{"from": "human", "value": "<image><image>"}, GOOD_TURNS[1]]
LATE_MARKER = [*GOOD_TURNS, {"from": "human", "value": "<image>"}, GOOD_TURNS[1]]
EMPTY_ANSWER = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": " "}]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "r", "image": "a.png"}, "missing key 'conversations'"),
        ({"image": "a.png", "conversations": GOOD_TURNS}, "missing key 'id'"),
        ({"id": "r", "image": "a.png", "conversations": []}, "empty conversation"),
        ({"id": "r", "conversations": [{"from": "human", "value": "Hi"}]}, "ends with a human turn"),
        (
            {"id": "r", "conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Hey"}]},
            "turn 0: 'from' is 'gpt', expected 'human'",
        ),
        (
            {"id": "r", "conversations": [{"from": "human", "value": "Hi"}, {"from": "human", "value": "Hey"}]},
            "turn 1: 'from' is 'human', expected 'gpt'",
        ),
        ({"id": "r", "conversations": [{"from": "human"}, GOOD_TURNS[1]]}, "turn 0: missing key 'value'"),
        ({"id": "r", "conversations": [{"from": "human", "value": 3}, GOOD_TURNS[1]]}, "should be str"),
        ({"id": "r", "conversations": GOOD_TURNS}, "has an <image> marker but no 'image'"),
        (
            {"id": "r", "image": "a.png", "conversations": [{"from": "human", "value": "Hi"}, GOOD_TURNS[1]]},
            "has an 'image' but no <image> marker",
        ),
        (
            {"id": "r", "image": "a.png", "conversations": TWO_MARKERS},
            "2 <image> markers",
        ),
        (
            {"id": "r", "image": "a.png", "conversations": LATE_MARKER},
            "turn 2: <image> marker outside the first human turn",
        ),
        ({"id": "r", "image": ["a.png", "b.png"], "conversations": GOOD_TURNS}, "has 2 images but 1 <image> marker"),
        ({"id": "r", "conversations": EMPTY_ANSWER}, "turn 1: empty"),
        ("just a string", "expected a JSON object"),
    ],
)
def test_llava_malformed_record_names_file_index_and_id(tmp_path: Path, record, message: str) -> None:
    make_image(tmp_path / "a.png")
    good = {"id": "ok", "image": "a.png", "conversations": GOOD_TURNS}
    path = write_json(tmp_path / "llava.json", [good, record])
    with pytest.raises(DataFormatError) as error:
        LlavaInstruct(path, tmp_path).read()
    text = str(error.value)
    assert f"{path}#1" in text and message in text
    if isinstance(record, dict) and "id" in record:
        assert "(id r)" in text


def test_llava_image_marker_rules(tmp_path: Path) -> None:
    make_image(tmp_path / "img" / "a.png")
    def turns(*texts: str) -> list[dict]:
        return [{"from": "human" if k % 2 == 0 else "gpt", "value": text} for k, text in enumerate(texts)]

    records = [
        {"id": 7, "image": "img/a.png", "conversations": turns("Describe it.\n<image>", "A square.")},
        {"id": "t", "conversations": turns("2+2?", "4", "And 3+3?", "6")},
        {"id": "only-image", "image": "img/a.png", "conversations": turns("<image>", "A square.")},
    ]
    image, text, only_image = LlavaInstruct(write_json(tmp_path / "l.json", records), tmp_path, task="it").read()
    assert image.id == "7" and image.prompt == "Describe it." and image.images == (tmp_path / "img" / "a.png",)
    assert text.images == () and text.target == "6" and len(text.turns) == 4 and text.task == "it"
    assert only_image.prompt == ""


def test_missing_and_invalid_files_are_file_errors_even_when_skipping(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"nope\.json: file not found \(given as `json_path`\)"):
        LlavaInstruct(tmp_path / "nope.json", tmp_path, on_error="skip").read()
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    with pytest.raises(DataFormatError, match=r"bad\.json: not valid JSON: .*line 1 column 3"):
        LlavaInstruct(bad, tmp_path, on_error="skip").read()
    with pytest.raises(DataFormatError, match=r"obj\.json: expected a JSON list of records, got dict"):
        LlavaInstruct(write_json(tmp_path / "obj.json", {"a": 1}), tmp_path, on_error="skip").read()


def test_missing_image_is_a_media_error_naming_file_and_record(tmp_path: Path) -> None:
    records = [{"id": "x1", "image": "missing.jpg", "conversations": GOOD_TURNS}]
    path = write_json(tmp_path / "l.json", records)
    with pytest.raises(MediaError) as error:
        LlavaInstruct(path, tmp_path).read()
    assert str(error.value) == f"{path}#0 (id x1): {tmp_path / 'missing.jpg'}: file not found"
    assert error.value.reason == "missing media"


def test_duplicate_ids_are_errors(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    good = {"id": "same", "image": "a.png", "conversations": GOOD_TURNS}
    path = write_json(tmp_path / "l.json", [good, good])
    with pytest.raises(DataFormatError, match=r"l\.json#1 \(id same\): duplicate id 'same' \(first seen at .*#0"):
        LlavaInstruct(path, tmp_path).read()


# ------------------------------------------------------------------------------------------------ skip policy


def test_skip_policy_drops_counts_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_image(tmp_path / "a.png")
    good = [{"id": f"g{k}", "image": "a.png", "conversations": GOOD_TURNS} for k in range(3)]
    bad = [
        {"id": "b1", "image": "gone.png", "conversations": GOOD_TURNS},
        {"id": "b2", "image": "gone2.png", "conversations": GOOD_TURNS},
        {"id": "b3", "conversations": [{"from": "gpt", "value": "?"}]},
        {"id": "g0", "image": "a.png", "conversations": GOOD_TURNS},
    ]
    path = write_json(tmp_path / "mixed.json", good[:2] + bad + good[2:])
    reader = LlavaInstruct(path, tmp_path, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="data_modules"):
        examples = reader.read()
    assert [e.id for e in examples] == ["g0", "g1", "g2"]
    report = reader.skipped
    assert report.seen == 7 and report.total == 4
    assert dict(report.counts) == {"missing media": 2, "malformed record": 1, "duplicate id": 1}
    summary = report.summary()
    assert "skipped 4 of 7" in summary and "2 missing media" in summary and "gone.png" in summary
    assert "mixed.json#4 (id b3)" in summary
    assert summary in caplog.text


def test_reader_policy_overrides_the_callers(tmp_path: Path) -> None:
    path = write_json(tmp_path / "l.json", [{"id": "b", "conversations": []}])
    assert LlavaInstruct(path, tmp_path).read(on_error="skip") == []
    with pytest.raises(DataFormatError):
        LlavaInstruct(path, tmp_path, on_error="raise").read(on_error="skip")
    with pytest.raises(ValueError, match="on_error must be"):
        LlavaInstruct(path, tmp_path, on_error="ignore")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ other formats


def vqa_files(tmp_path: Path, question: dict, annotation: dict | None) -> tuple[Path, Path]:
    questions = write_json(tmp_path / "q.json", {"questions": [question]})
    annotations = write_json(tmp_path / "a.json", {"annotations": [annotation] if annotation else []})
    return questions, annotations


ANSWERS = [{"answer": "red", "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)]


@pytest.mark.parametrize(
    ("question", "annotation", "message"),
    [
        ({"image_id": 1, "question": "Q?"}, None, "missing key 'question_id'"),
        ({"question_id": 5, "image_id": "1", "question": "Q?"}, None, "'image_id' should be int, got str"),
        ({"question_id": 5, "image_id": 1, "question": ""}, None, "'question' is empty"),
        ({"question_id": 5, "image_id": 1, "question": "Q?"}, None, "no annotation with this question_id"),
        (
            {"question_id": 5, "image_id": 1, "question": "Q?"},
            {"question_id": 5, "image_id": 2, "multiple_choice_answer": "red", "answers": ANSWERS},
            "image_id 2 differs from the question's (1)",
        ),
        (
            {"question_id": 5, "image_id": 1, "question": "Q?"},
            {"question_id": 5, "image_id": 1, "answers": ANSWERS},
            "missing key 'multiple_choice_answer'",
        ),
        (
            {"question_id": 5, "image_id": 1, "question": "Q?"},
            {"question_id": 5, "image_id": 1, "multiple_choice_answer": "red", "answers": [{"answer": 3}]},
            "answer 0: 'answer' should be str",
        ),
    ],
)
def test_vqav2_malformed(tmp_path: Path, question: dict, annotation: dict | None, message: str) -> None:
    questions, annotations = vqa_files(tmp_path, question, annotation)
    with pytest.raises(DataFormatError) as error:
        VQAv2(questions, tmp_path, "val2014", annotations=annotations).read()
    assert message in str(error.value)
    assert f"{questions}#0" in str(error.value) or f"{annotations} (question_id 5)" in str(error.value)


def test_vqav2_file_errors(tmp_path: Path) -> None:
    questions = write_json(tmp_path / "q.json", {"questions": [{"question_id": 1, "image_id": 1, "question": "Q"}]})
    with pytest.raises(DataFormatError, match=r"x\.json: expected a JSON object with a list under 'questions'"):
        VQAv2(write_json(tmp_path / "x.json", [1]), tmp_path, "val2014").read()
    # the questions file given as annotations
    with pytest.raises(DataFormatError, match="list under 'annotations'"):
        VQAv2(questions, tmp_path, "val2014", annotations=questions).read()
    not_annotations = write_json(tmp_path / "a.json", {"annotations": [{"image_id": 3}]})
    with pytest.raises(DataFormatError, match=r"a\.json#0: annotation without an integer 'question_id'"):
        VQAv2(questions, tmp_path, "val2014", annotations=not_annotations).read()


def test_gqa_errors_and_unanswered(tmp_path: Path) -> None:
    make_image(tmp_path / "n1.jpg")
    path = write_json(tmp_path / "g.json", {"q1": {"imageId": "n1", "question": "Q?"}, "q2": {"question": "Q?"}})
    with pytest.raises(DataFormatError, match=r"g\.json#q2: missing key 'imageId'"):
        GQA(path, tmp_path).read()
    (example,) = GQA(path, tmp_path, on_error="skip").read()
    assert example.id == "q1" and example.target is None
    with pytest.raises(DataFormatError, match="expected a JSON object question id -> question"):
        GQA(write_json(tmp_path / "l.json", []), tmp_path).read()


def test_nlvr2_errors(tmp_path: Path) -> None:
    for side in (0, 1):
        make_image(tmp_path / f"dev-1-2-img{side}.png")
    good = {"identifier": "dev-1-2-0", "sentence": "S.", "label": "True"}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "identifier": "dev-1-2-1", "label": "maybe"}),
        json.dumps({**good, "identifier": "dev12"}),
        "",
        json.dumps({"identifier": "dev-1-2-3", "sentence": "S."}),
    ]
    path = tmp_path / "dev.json"
    path.write_text("\n".join(lines))
    reader = NLVR2(path, tmp_path, on_error="skip")
    examples = reader.read()
    assert [(e.id, e.target) for e in examples] == [("dev-1-2-0", "true"), ("dev-1-2-3", None)]
    messages = [m for ms in reader.skipped.examples.values() for m in ms]
    assert any(f"{path}:2: not valid JSON" in m for m in messages)
    assert any(f"{path}:3 (identifier dev-1-2-1): 'label' should be 'True' or 'False'" in m for m in messages)
    assert any(f"{path}:4 (identifier dev12): identifier 'dev12' is not" in m for m in messages)
    with pytest.raises(DataFormatError, match=f"{path}:2: not valid JSON"):
        NLVR2(path, tmp_path).read()


def test_coco_karpathy_errors(tmp_path: Path) -> None:
    make_image(tmp_path / "val2014" / "x.jpg")
    images = [
        {"filepath": "val2014", "filename": "x.jpg", "cocoid": 1, "split": "test", "sentences": [{"raw": "A cat."}]},
        {"filepath": "val2014", "filename": "x.jpg", "cocoid": 2, "split": "test", "sentences": []},
        {"filepath": "val2014", "filename": "x.jpg", "cocoid": 3, "sentences": [{"raw": "A dog."}]},
        {"filepath": "val2014", "filename": "x.jpg", "cocoid": 4, "split": "train", "sentences": "oops"},
    ]
    path = write_json(tmp_path / "dataset_coco.json", {"images": images})
    reader = CocoKarpathy(path, tmp_path, "test", on_error="skip")
    assert [e.id for e in reader.read()] == ["1"]
    assert reader.skipped.counts["malformed record"] == 2  # the train record is not this split's business
    with pytest.raises(DataFormatError, match=r"dataset_coco\.json#1 \(cocoid 2\): no captions"):
        CocoKarpathy(path, tmp_path, "test").read()
    with pytest.raises(ValueError, match="split must be one of"):
        CocoKarpathy(path, tmp_path, "testing")  # type: ignore[arg-type]


def test_textvqa_and_docvqa(tmp_path: Path) -> None:
    make_image(tmp_path / "abc.jpg")
    make_image(tmp_path / "documents" / "d1.png")
    answers = ["stop"] * 6 + ["stop sign"] * 4
    records = [
        {"question": "What does it say?", "question_id": 3, "image_id": "abc", "answers": answers},
        {"question": "Q?", "question_id": 4, "image_id": "abc", "answers": []},
        {"question": "Q?", "question_id": 5, "image_id": "abc"},
    ]
    textvqa = write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": records})
    reader = TextVQA(textvqa, tmp_path, on_error="skip")
    first, unanswered = reader.read()
    assert first.target == "stop" and first.references == tuple(answers) and first.images == (tmp_path / "abc.jpg",)
    assert unanswered.target is None
    assert "#1 (question_id 4): 'answers' should be a non-empty list" in reader.skipped.summary()

    records = [
        {"questionId": 9, "question": "Date?", "image": "documents/d1.png", "answers": ["1 May", "May 1"]},
        {"questionId": 10, "question": "Date?", "answers": ["x"]},
    ]
    docvqa = write_json(tmp_path / "val_v1.0.json", {"data": records})
    with pytest.raises(DataFormatError, match=r"val_v1\.0\.json#1 \(questionId 10\): missing key 'image'"):
        DocVQA(docvqa, tmp_path).read()
    (example,) = DocVQA(docvqa, tmp_path, on_error="skip").read()
    assert example.target == "1 May" and example.references == ("1 May", "May 1") and example.task == "docvqa"


def test_msrvtt_qa_errors(tmp_path: Path) -> None:
    path = write_json(tmp_path / "val_qa.json", [{"id": 1, "video_id": 7, "question": "what?", "answer": "x"}])
    with pytest.raises(MediaError, match=r"val_qa\.json#0 \(id 1\): .*video7\.mp4: file not found"):
        MSRVTTQA(path, tmp_path).read()


# ------------------------------------------------------------------------------------------------ faults in files


def test_a_non_utf8_line_is_a_named_skippable_record_error(tmp_path: Path) -> None:
    make_image(tmp_path / "images" / "a-b-0-img0.png")
    make_image(tmp_path / "images" / "a-b-0-img1.png")
    good = {"identifier": "a-b-0-0", "sentence": "Two dogs.", "label": "True"}
    path = tmp_path / "dev.json"
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"identifier": "caf\xe9-b-0-1"}\n')
    with pytest.raises(DataFormatError, match=r"dev\.json:2: not UTF-8 text"):
        NLVR2(path, tmp_path / "images").read()
    reader = NLVR2(path, tmp_path / "images", on_error="skip")
    assert [e.id for e in reader.read()] == ["a-b-0-0"]
    assert reader.skipped.counts == {"not UTF-8": 1}


@pytest.mark.parametrize("image", ["../secret.png", "sub/../../secret.png", "/etc/secret.png"])
def test_media_paths_leaving_the_folder_are_refused_unless_allowed(tmp_path: Path, image: str) -> None:
    folder = tmp_path / "images"
    make_image(folder / "sub" / "ok.png")
    make_image(tmp_path / "secret.png")
    turns = [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]
    path = write_json(tmp_path / "l.json", [{"id": "ok", "image": "sub/ok.png", "conversations": turns},
                                            {"id": "bad", "image": image, "conversations": turns}])
    with pytest.raises(DataFormatError, match=rf"l\.json#1 \(id bad\): media path '{image}' leaves the folder"):
        LlavaInstruct(path, folder).read(check_media=False)
    skipping = LlavaInstruct(path, folder, on_error="skip")
    assert [e.id for e in skipping.read(check_media=False)] == ["ok"]
    assert skipping.skipped.counts == {"path outside its folder": 1}
    allowed = LlavaInstruct(path, folder).read(check_media=False, allow_outside_paths=True)
    assert allowed[1].images == (folder / image,)


def test_video_names_leaving_the_folder_are_refused(tmp_path: Path) -> None:
    from data_modules.formats.value import TVQA

    record = {"vid_name": "../../etc/x", "q": "Q?", "qid": 1, "answer_idx": 0,
              **{f"a{k}": f"choice {k}" for k in range(5)}}
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps(record) + "\n")
    subtitles = tmp_path / "subs.jsonl"
    subtitles.write_text("")
    with pytest.raises(DataFormatError, match=r"qa\.jsonl:1 \(qid 1\): media path '\.\./\.\./etc/x\.mp4' leaves"):
        TVQA(qa, subtitles, tmp_path / "videos").read(check_media=False)


def test_a_duplicate_annotation_is_an_error_or_a_counted_skip(tmp_path: Path) -> None:
    questions = write_json(tmp_path / "q.json", {"questions": [{"question_id": 5, "image_id": 1, "question": "Q?"},
                                                               {"question_id": 6, "image_id": 1, "question": "R?"}]})
    annotation = {"question_id": 5, "image_id": 1, "multiple_choice_answer": "red", "answers": ANSWERS}
    other = {**annotation, "multiple_choice_answer": "blue"}
    sixth = {**annotation, "question_id": 6}
    annotations = write_json(tmp_path / "a.json", {"annotations": [annotation, sixth, other]})
    with pytest.raises(DataFormatError, match=r"q\.json#0 \(question_id 5\): 2 annotations .*records #0, #2"):
        VQAv2(questions, tmp_path, "val2014", annotations=annotations).read(check_media=False)
    reader = VQAv2(questions, tmp_path, "val2014", annotations=annotations, on_error="skip")
    assert [e.id for e in reader.read(check_media=False)] == ["6"]
    assert reader.skipped.counts == {"duplicate id": 1}
