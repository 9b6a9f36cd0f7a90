"""VALUE's video formats (TVQA / How2QA, TVC / YC2C): the generated sample data and every bad-input path."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from data_modules import TVQA, DataFormatError, ExampleDataset, MediaError, VideoCaptions

CHOICES = {f"a{k}": f"choice {k}" for k in range(5)}
QUESTION = {"vid_name": "clip1", "q": "Who?", **CHOICES, "answer_idx": 2, "qid": 7, "ts": "0.5-1.5"}
MOMENT = {"vid_name": "clip1", "duration": 9.0, "ts": [1.0, 3.0], "clip_id": "c9", "descs": [{"desc": "a cat"}]}
LINES = [{"start": 0.0, "end": 1.5, "text": "Hi."}, {"start": 4, "end": 5, "text": " Bye"}]
SUBTITLES = {"vid_name": "clip1", "sub": LINES}


def write_lines(path: Path, *records: dict | str) -> Path:
    """A JSON-lines file; a str record is written as is (to make broken lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with (empty) videos clip1.mp4 and clip2.mp4 and a subtitles file for clip1."""
    for name in ("clip1", "clip2"):
        (tmp_path / f"{name}.mp4").touch()
    write_lines(tmp_path / "subs.jsonl", SUBTITLES)
    return tmp_path


def tvqa(folder: Path, *records: dict | str, **kwargs) -> TVQA:
    return TVQA(write_lines(folder / "qa.jsonl", *records), folder / "subs.jsonl", folder, **kwargs)


def captions(folder: Path, *records: dict | str, **kwargs) -> VideoCaptions:
    return VideoCaptions(write_lines(folder / "captions.jsonl", *records), folder, **kwargs)


# ------------------------------------------------------------------------------------------------ sample data


def test_tvqa_sample(sample_data: Path) -> None:
    folder = sample_data / "tvqa"
    train = TVQA(folder / "tvqa_train.jsonl", folder / "tvqa_subtitles.jsonl", folder / "videos").read()
    val = TVQA(folder / "tvqa_val.jsonl", folder / "tvqa_subtitles.jsonl", folder / "videos").read()
    assert (len(train), len(val)) == (192, 48)
    raw = json.loads((folder / "tvqa_val.jsonl").read_text().splitlines()[0])
    subtitles = {s["vid_name"]: s["sub"] for s in map(json.loads, (folder / "tvqa_subtitles.jsonl").open())}
    subs = " ".join(line["text"] for line in subtitles.get(raw["vid_name"], []))
    choices = " ".join(f"a{k}: {raw[f'a{k}']}" for k in range(5))
    assert val[0].prompt == f"[Subs] {subs} [Q] {raw['q']} [Choices] {choices}"
    assert val[0].id == str(raw["qid"]) and val[0].target == f"a{raw['answer_idx']}"
    for e in train + val:
        assert e.task == "tvqa" and e.video_span is None and e.video.is_file() and not e.images
        assert e.target in {"a0", "a1", "a2", "a3", "a4"} and e.references == (e.target,)
    colours = [e for e in val if "color" in e.prompt and e.prompt.startswith("[Subs] look at")]
    assert colours, "some colour questions have subtitles"
    for e in colours:  # the answer's colour is in the subtitles
        answer = e.prompt.split(f"{e.target}: ")[1].split(" ")[0]
        assert answer in e.prompt.split(" [Q] ")[0]
    # one option order per question type, so a label always means the same answer (learnable by the tiny models)
    records = [json.loads(line) for split in ("train", "val") for line in (folder / f"tvqa_{split}.jsonl").open()]
    orders = {(r["q"].split()[0], tuple(r[f"a{k}"] for k in range(5))) for r in records}
    assert orders == {("which", ("left", "right", "up", "down", "nowhere")),
                      ("what", ("red", "green", "blue", "yellow", "purple"))}
    # every answer occurs in training, so no val label is unseen
    assert {e.target for e in train} == {e.target for e in train + val} == {f"a{k}" for k in range(5)}
    # the baseline the README's tiny video rows quote: each question type's commonest training label (best of ties)
    kinds = ("which way", "what color")
    best = 0
    for labels in itertools.product(*(most_common_labels(train, kind) for kind in kinds)):
        choice = dict(zip(kinds, labels))
        best = max(best, sum(e.target == choice[kind] for e in val for kind in kinds if kind in e.prompt))
    assert best / len(val) == pytest.approx(0.229, abs=5e-4)


def most_common_labels(examples: list, kind: str) -> list[str]:
    counts = Counter(e.target for e in examples if kind in e.prompt)
    return [label for label, n in counts.items() if n == max(counts.values())]


def test_video_captions_sample(sample_data: Path) -> None:
    folder = sample_data / "tvc"
    train = VideoCaptions(folder / "tvc_train.jsonl", folder / "videos", per_caption=True).read()
    assert len(train) == 48 and {e.id.rsplit("_", 1)[1] for e in train} == {"0", "1"}
    val = VideoCaptions(folder / "tvc_val.jsonl", folder / "videos", folder / "tvc_subtitles.jsonl").read()
    assert len(val) == 12 and len({e.video for e in val}) == 6
    first, second = val[:2]
    assert (first.video_span, second.video_span) == ((0.0, 1.0), (1.0, 2.0))
    assert first.prompt.startswith("[Subs] a ") and first.prompt.endswith(" appears")
    assert second.prompt == "[Subs] now it turns"
    for e in train + val:
        assert e.task == "tvc" and e.video.is_file() and len(e.references) == 2 and e.target in e.references
    assert all(e.target == e.references[0] for e in val)
    without_subtitles = VideoCaptions(folder / "tvc_val.jsonl", folder / "videos").read()
    assert {e.prompt for e in without_subtitles} == {""}


def shape_centre(frame: torch.Tensor) -> torch.Tensor:
    """(x, y) centre of the pixels that differ from the background (the top-left pixel, never under the shape)."""
    mask = (frame.int() - frame[0, 0].int()).abs().sum(-1) > 60
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.stack([xs.float().mean(), ys.float().mean()])


def test_frames_come_from_the_span_the_caption_describes(sample_data: Path) -> None:
    folder = sample_data / "tvc"
    val = VideoCaptions(folder / "tvc_val.jsonl", folder / "videos").read()
    directions = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    dataset = ExampleDataset(val[:4], num_frames=4)
    for sample in (dataset[i] for i in range(len(dataset))):
        dx, dy = (shape_centre(sample.frames[-1]) - shape_centre(sample.frames[0])).tolist()
        # 4 of the span's 8 frames, 2 apart; the shape moves 2 pixels a frame: 12 pixels from first to last
        moved = (round(dx / 12), round(dy / 12))
        assert moved == directions[sample.example.target.split()[-1]], (sample.example.id, dx, dy)


# ------------------------------------------------------------------------------------------------ prompts


def test_tvqa_prompt_unanswered_and_how2qa(folder: Path) -> None:
    unanswered = {k: v for k, v in QUESTION.items() if k != "answer_idx"}
    reader = tvqa(folder, QUESTION, {**unanswered, "vid_name": "clip2", "qid": 8}, task="how2qa")
    answered, test = reader.read()
    choices = "a0: choice 0 a1: choice 1 a2: choice 2 a3: choice 3 a4: choice 4"
    assert answered.prompt == f"[Subs] Hi. Bye [Q] Who? [Choices] {choices}"
    assert (answered.id, answered.target, answered.references) == ("7", "a2", ("a2",))
    assert answered.video == folder / "clip1.mp4" and answered.task == "how2qa" and answered.video_span is None
    assert test.prompt == f"[Subs]  [Q] Who? [Choices] {choices}"  # clip2 has no subtitles
    assert (test.target, test.references) == (None, ())
    (webm,) = tvqa(folder, QUESTION, video_extension=".webm").read(check_media=False)
    assert webm.video == folder / "clip1.webm"


def test_video_captions_prompt_and_per_caption(folder: Path) -> None:
    moment = {**MOMENT, "descs": [{"desc": "a cat"}, {"desc": "one cat "}]}
    late = {**MOMENT, "clip_id": 10, "ts": [4.5, 6]}
    (example, after) = captions(folder, moment, late, subtitles=folder / "subs.jsonl", task="yc2c").read()
    assert example.prompt == "[Subs] Hi." and after.prompt == "[Subs] Bye"  # only subtitles overlapping ts
    assert (example.id, example.target, example.references) == ("c9", "a cat", ("a cat", "one cat"))
    assert example.video_span == (1.0, 3.0) and example.task == "yc2c" and example.video == folder / "clip1.mp4"
    per_caption = captions(folder, moment, per_caption=True).read()
    assert [(e.id, e.target, e.prompt) for e in per_caption] == [("c9_0", "a cat", ""), ("c9_1", "one cat", "")]
    assert all(e.references == ("a cat", "one cat") and e.video_span == (1.0, 3.0) for e in per_caption)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"q": None}, "'q' should be str"),
        ({"a3": ""}, "'a3' is empty"),
        ({"answer_idx": 5}, "'answer_idx' should be 0..4, got 5"),
        ({"answer_idx": -1}, "'answer_idx' should be 0..4, got -1"),
        ({"answer_idx": "1"}, "'answer_idx' should be int, got str"),
        ({"answer_idx": True}, "'answer_idx' should be int, got bool"),
        ({"vid_name": 3}, "'vid_name' should be str"),
    ],
)
def test_tvqa_malformed_record_names_file_line_and_qid(folder: Path, change: dict, message: str) -> None:
    reader = tvqa(folder, QUESTION, {**QUESTION, "qid": 9, **change})
    with pytest.raises(DataFormatError) as error:
        reader.read()
    assert f"{reader.path}:2 (qid 9): {message}" in str(error.value)


def test_tvqa_missing_key(folder: Path) -> None:
    reader = tvqa(folder, {k: v for k, v in QUESTION.items() if k != "a4"})
    with pytest.raises(DataFormatError, match=r"qa\.jsonl:1 \(qid 7\): missing key 'a4'"):
        reader.read()
    with pytest.raises(DataFormatError, match=r"qa\.jsonl:1: missing key 'qid'"):
        tvqa(folder, {k: v for k, v in QUESTION.items() if k != "qid"}).read()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ts": [3.0, 1.0]}, "'ts' should be [start, end] seconds with 0 <= start < end, got [3.0, 1.0]"),
        ({"ts": [2, 2]}, "0 <= start < end, got [2, 2]"),
        ({"ts": [-1, 2]}, "0 <= start < end, got [-1, 2]"),
        ({"ts": [1.0]}, "0 <= start < end, got [1.0]"),
        ({"ts": [0, True]}, "0 <= start < end, got [0, True]"),
        ({"ts": ["0", "1"]}, "0 <= start < end, got ['0', '1']"),
        ({"ts": "0-1"}, "'ts' should be list, got str"),
        ({"descs": []}, "no captions in 'descs'"),
        ({"descs": [{"desc": "ok"}, {"text": "x"}]}, "desc 1: missing key 'desc'"),
        ({"descs": [" "]}, "desc 0: expected a JSON object, got str"),
        ({"vid_name": ""}, "'vid_name' is empty"),
    ],
)
def test_video_captions_malformed_record_names_file_line_and_clip(folder: Path, change: dict, message: str) -> None:
    reader = captions(folder, MOMENT, {**MOMENT, "clip_id": "c10", **change})
    with pytest.raises(DataFormatError) as error:
        reader.read()
    assert str(error.value).startswith(f"{reader.path}:2 (clip_id c10)") and message in str(error.value)


def test_missing_files_and_broken_lines(folder: Path) -> None:
    with pytest.raises(DataFormatError, match=r"nope\.jsonl: file not found \(given as `qa_path`\)"):
        TVQA(folder / "nope.jsonl", folder / "subs.jsonl", folder, on_error="skip").read()
    with pytest.raises(DataFormatError, match=r"nosubs\.jsonl: file not found \(given as `subtitles`\)"):
        TVQA(write_lines(folder / "qa.jsonl", QUESTION), folder / "nosubs.jsonl", folder).read()
    with pytest.raises(DataFormatError, match=r"none\.jsonl: file not found \(given as `caption_path`\)"):
        VideoCaptions(folder / "none.jsonl", folder).read()
    with pytest.raises(DataFormatError, match=r"qa\.jsonl:2: not valid JSON"):
        tvqa(folder, QUESTION, '{"qid": 8,').read()
    with pytest.raises(DataFormatError, match=r"captions\.jsonl:1: not valid JSON"):
        captions(folder, "[1, 2").read()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"vid_name": "clip2", "sub": [{"start": 0, "end": 1}]}, r":2 \(vid_name clip2\) sub 0: missing key 'text'"),
        ({"vid_name": "clip2", "sub": [{"start": "0", "end": 1, "text": ""}]}, r":2 .* 'start' should be int or float"),
        ({"vid_name": "clip2", "sub": "Hi"}, r":2 \(vid_name clip2\): 'sub' should be list, got str"),
        ({"sub": []}, r":2: missing key 'vid_name'"),
        ("{broken", r":2: not valid JSON"),
        (SUBTITLES, r":2 \(vid_name clip1\): duplicate vid_name \(first seen at .*subs\.jsonl:1\)"),
    ],
)
def test_a_bad_subtitle_line_is_an_error_naming_file_and_line_or_a_counted_skip(folder: Path, line: dict | str,
                                                                                 message: str) -> None:
    """A bad subtitle line fails the read naming file and line; under on_error="skip" it is counted in the reader's
    skip report and the questions and captions are still read."""
    write_lines(folder / "subs.jsonl", SUBTITLES, line)
    with pytest.raises(DataFormatError, match=rf"subs\.jsonl{message}"):
        tvqa(folder, QUESTION).read()
    with pytest.raises(DataFormatError, match=rf"subs\.jsonl{message}"):
        captions(folder, MOMENT, subtitles=folder / "subs.jsonl").read()
    for reader in (tvqa(folder, QUESTION, on_error="skip"),
                   captions(folder, MOMENT, subtitles=folder / "subs.jsonl", on_error="skip")):
        assert len(reader.read()) == 1
        assert reader.skipped.total == 1
        assert re.search(rf"subs\.jsonl{message}", reader.skipped.summary())


def test_skip_policy_counts_bad_records(folder: Path) -> None:
    bad_questions = [
        {**QUESTION, "qid": 8, "answer_idx": 7},
        "not json",
        {**QUESTION, "qid": 9, "vid_name": "gone"},
        {**QUESTION},
    ]
    reader = tvqa(folder, QUESTION, *bad_questions, on_error="skip")
    assert [e.id for e in reader.read()] == ["7"]
    assert dict(reader.skipped.counts) == {"malformed record": 2, "missing media": 1, "duplicate id": 1}
    assert "qa.jsonl:2 (qid 8)" in reader.skipped.summary()

    bad_moments = [{**MOMENT, "clip_id": 1, "ts": [5, 1]}, {**MOMENT, "clip_id": 2, "descs": []}]
    reader = captions(folder, MOMENT, *bad_moments, per_caption=True, on_error="skip")
    assert [e.id for e in reader.read()] == ["c9_0"]
    assert reader.skipped.seen == 3 and dict(reader.skipped.counts) == {"malformed record": 2}


def test_a_span_outside_the_video_fails_when_decoding(sample_data: Path, tmp_path: Path) -> None:
    folder = sample_data / "tvc"
    raw = json.loads((folder / "tvc_val.jsonl").read_text().splitlines()[0])
    path = write_lines(tmp_path / "captions.jsonl", {**raw, "ts": [30, 40]})
    (example,) = VideoCaptions(path, folder / "videos").read()
    dataset = ExampleDataset([example], num_frames=2, on_error="skip")
    with pytest.raises(MediaError, match=r"captions\.jsonl:1 \(clip_id \d+\): .*: span 30-40 s lies outside the video"):
        ExampleDataset([example], num_frames=2)[0]
    assert dataset[0].reason == "span outside video"
