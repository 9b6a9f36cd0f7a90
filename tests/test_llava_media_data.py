"""LLaVA JSON with several images or a video (LLaVA-OneVision / LLaVA-Video-178K layout), decoded into Samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from test_media import write_gray_ramp_video

from data_modules import ExampleDataset, LlavaInstruct, MultitaskDataModule
from data_modules.formats import DataFormatError
from data_modules.media import MediaError
from data_modules.multitask import DataConfigError


def turns(*texts: str) -> list[dict]:
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": text} for k, text in enumerate(texts)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("llava_media")
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name)
    (root / "videos").mkdir()
    write_gray_ramp_video(root / "videos" / "ramp.mp4", 10)  # 8 fps, 1.25 s
    (root / "videos" / "junk.mp4").write_bytes(b"not a video")
    return root


def read(folder: Path, *records: dict, **kwargs) -> list:
    path = folder / "llava.json"
    path.write_text(json.dumps(list(records)), encoding="utf-8")
    return LlavaInstruct(path, folder, video_folder=folder / "videos", **kwargs).read()


def test_several_images_keep_their_markers_in_order_in_any_human_turn(folder: Path) -> None:
    record = {
        "id": "m",
        "image": ["b.png", "a.png", "c.png"],
        "conversations": turns("<image>\n<image>\nWhich is brighter?", "The first.", "And this one? <image>", "Dark."),
    }
    (example,) = read(folder, record)
    assert example.images == (folder / "b.png", folder / "a.png", folder / "c.png")
    assert [t.text for t in example.turns] == [
        "<image>\n<image>\nWhich is brighter?", "The first.", "And this one? <image>", "Dark."
    ]
    # one image as a list is the single-image case: the marker is removed, the collate places the image
    (single,) = read(folder, {"id": "s", "image": ["a.png"], "conversations": turns("<image>\nWhat?", "A.")})
    assert single.images == (folder / "a.png",) and single.prompt == "What?"


def test_video_records_with_either_marker_and_an_optional_span(folder: Path) -> None:
    records = [
        {"id": "v1", "video": "ramp.mp4", "conversations": turns("<video>\nWhat happens?", "It brightens.")},
        {"id": "v2", "video": "ramp.mp4", "ts": [0.5, 1.0], "conversations": turns("<image>\nAnd here?", "Same.")},
    ]
    whole, moment = read(folder, *records)
    assert whole.video == folder / "videos" / "ramp.mp4" and whole.images == () and whole.video_span is None
    assert whole.prompt == "What happens?" and moment.prompt == "And here?"
    assert moment.video_span == (0.5, 1.0)


MEDIA_ERRORS = [
    ({"image": ["a.png", "b.png"], "conversations": turns("<image> x", "y")}, "has 2 images but 1 <image> markers"),
    (
        {"image": ["a.png", "b.png"], "conversations": turns("<image><image> x", "y", "<image>", "z")},
        "has 2 images but 3 <image> markers",
    ),
    ({"conversations": turns("<image> x", "y")}, "has an <image> marker but no 'image'"),
    ({"conversations": turns("<video> x", "y")}, "turn 0: <video> marker in a record without a 'video'"),
    ({"image": "a.png", "video": "ramp.mp4", "conversations": turns("<image> x", "y")}, "both 'image' and 'video'"),
    ({"video": "ramp.mp4", "conversations": turns("x", "y")}, "has a 'video' but 0 <image>/<video> markers"),
    ({"video": "ramp.mp4", "conversations": turns("<video><image> x", "y")}, "but 2 <image>/<video> markers"),
    ({"video": "ramp.mp4", "conversations": turns("<video> x", "y", "<video> z", "w")}, "turn 2: <video> marker outside"),
    ({"image": ["a.png", "b.png"], "conversations": turns("<image> x", "<image>")}, "turn 1: <image> marker in a gpt"),
    ({"image": ["a.png", ""], "conversations": turns("<image><image>", "y")}, "non-empty list of them"),
    ({"image": [], "conversations": turns("x", "y")}, "non-empty list of them"),
    ({"video": ["ramp.mp4"], "conversations": turns("<video>", "y")}, "'video' should be one relative path"),
    ({"image": ["a.png", "../b.png"], "conversations": turns("<image><image>", "y")}, "media path '../b.png' leaves"),
    ({"video": "/etc/passwd", "conversations": turns("<video>", "y")}, "media path '/etc/passwd' leaves"),
    ({"video": "ramp.mp4", "ts": [2, 1], "conversations": turns("<video>", "y")}, "'ts' should be [start, end]"),
    ({"ts": [0, 1], "conversations": turns("x", "y")}, "has a 'ts' time span but no 'video'"),
]


@pytest.mark.parametrize(("record", "message"), MEDIA_ERRORS)
def test_bad_media_records_are_named_errors(folder: Path, record: dict, message: str) -> None:
    good = {"id": "ok", "image": "a.png", "conversations": turns("<image> x", "y")}
    with pytest.raises(DataFormatError) as error:
        read(folder, good, {"id": "r", **record})
    assert "llava.json#1 (id r)" in str(error.value) and message in str(error.value)


def test_bad_media_records_are_counted_when_skipping(folder: Path) -> None:
    good = {"id": "ok", "image": ["a.png", "b.png"], "conversations": turns("<image><image> x", "y")}
    bad = [{"id": f"r{k}", **record} for k, (record, _) in enumerate(MEDIA_ERRORS)]
    missing = {"id": "gone", "video": "none.mp4", "conversations": turns("<video>", "y")}
    path = folder / "skip.json"
    path.write_text(json.dumps([good, *bad, missing]), encoding="utf-8")
    reader = LlavaInstruct(path, folder, video_folder=folder / "videos", on_error="skip")
    assert [e.id for e in reader.read()] == ["ok"]
    assert dict(reader.skipped.counts) == {
        "malformed record": len(MEDIA_ERRORS) - 2, "path outside its folder": 2, "missing media": 1
    }


def test_decoded_videos_carry_frame_times_and_bad_videos_are_named_media_errors(folder: Path) -> None:
    records = [
        {"id": "whole", "video": "ramp.mp4", "conversations": turns("<video>", "y")},
        {"id": "moment", "video": "ramp.mp4", "ts": [0.5, 1.0], "conversations": turns("<video>", "y")},
        {"id": "late", "video": "ramp.mp4", "ts": [5, 6], "conversations": turns("<video>", "y")},
        {"id": "junk", "video": "junk.mp4", "conversations": turns("<video>", "y")},
    ]
    whole, moment, late, junk = read(folder, *records)
    by_count = ExampleDataset([whole, moment], num_frames=2)
    assert by_count[0].frame_times == (2 / 8, 7 / 8) and tuple(by_count[0].frames.shape) == (2, 64, 64, 3)
    assert by_count[1].frame_times == (5 / 8, 7 / 8)
    by_rate = ExampleDataset([whole, moment], video_fps=4.0, max_frames=16)
    assert by_rate[0].frame_times == (0.0, 0.25, 0.5, 0.75, 1.0) and by_rate[1].frame_times == (0.5, 0.75)
    assert ExampleDataset([whole], load_media=False)[0].frame_times is None

    for example, reason, text in ((late, "span outside video", "span 5-6 s lies outside the video"),
                                  (junk, "corrupt media", "corrupt or unreadable video")):
        with pytest.raises(MediaError) as error:
            ExampleDataset([example])[0]
        assert f"llava.json#{records.index(next(r for r in records if r['id'] == example.id))}" in str(error.value)
        assert text in str(error.value) and error.value.reason == reason
        assert ExampleDataset([example], on_error="skip")[0].reason == reason


def test_datamodule_frame_options(folder: Path) -> None:
    record = {"id": "whole", "video": "ramp.mp4", "conversations": turns("<video>", "y")}
    path = folder / "dm.json"
    path.write_text(json.dumps([record]), encoding="utf-8")
    reader = LlavaInstruct(path, folder, video_folder=folder / "videos")
    datamodule = MultitaskDataModule(val=[reader], video_fps=2.0, max_frames=4, collate_fn=lambda samples: samples)
    datamodule.setup("validate")
    (batch,) = list(datamodule.val_dataloader()[0])
    assert batch[0].frame_times == (0.0, 0.5, 1.0)
    with pytest.raises(DataConfigError, match="data.num_frames / data.video_fps / data.max_frames: .*max_frames"):
        MultitaskDataModule(val=[reader], video_fps=2.0)
