"""Streaming shards with videos stored as pre-extracted frames (`mmft optimize --video-frames`): the frames and times
the in-memory path decodes (exactly with PNG, within JPEG's rounding with JPEG), a training config that samples
frames otherwise refused by name, a video that cannot be decoded at write time raised or skipped and counted, and
shards written before frames existed (format 1) still read."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from data_modules import FrameSampling, LlavaInstruct, MultitaskDataModule, Sample, StreamingShards, load_video_frames
from data_modules.shards import FrameExtraction, FrameSamplingMismatch, example_to_item, item_to_example
from data_modules.streaming import DecodeShardItem
from mmft.tools import optimize

ROOT = Path(__file__).resolve().parents[1]
# PNG with a count of frames, JPEG by rate with a cap: both samplings, both codecs
SAMPLINGS = {"png": FrameSampling(num_frames=3), "jpeg": FrameSampling(fps=4.0, max_frames=6)}


def video_examples(root: Path) -> list:
    """Eight MSRVTT-QA videos and eight TVC moments (frames from a ``ts`` span) of the LLaVA video sample."""
    examples = LlavaInstruct(root / "llava" / "llava_video_sample.json", root).read()
    return examples[:8] + examples[-8:]


@pytest.fixture(scope="module")
def frame_shards(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frame_shards")
    for codec, sampling in SAMPLINGS.items():
        skipped = optimize.write_shards(video_examples(sample_data), str(folder / codec), 1, "64MB",
                                        frames=FrameExtraction(sampling, codec))
        assert skipped == []
    return folder


def samples_of(samples: list[Sample]) -> dict:
    return {"samples": samples}


def streamed(input_dir: Path, sampling: FrameSampling, on_error: str = "raise") -> list[Sample]:
    data = MultitaskDataModule(train=[StreamingShards(str(input_dir))], batch_size=4, sampling="concat",
                               on_error=on_error, num_frames=sampling.num_frames, video_fps=sampling.fps,
                               max_frames=sampling.max_frames, collate_fn=samples_of)
    data.setup("fit")
    return [sample for batch in data.train_dataloader() for sample in batch["samples"]]


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_frames_shards_give_the_in_memory_frames_and_times(frame_shards: Path, sample_data: Path, codec: str) -> None:
    sampling = SAMPLINGS[codec]
    samples = streamed(frame_shards / codec, sampling)
    assert sorted(s.example.id for s in samples) == sorted(e.id for e in video_examples(sample_data))
    assert sum(s.example.video_span is not None for s in samples) == 8
    for sample in samples:
        example = sample.example
        # what the in-memory dataset decodes for this example, from the video file
        expected = load_video_frames(example.video, sampling, example.source, span=example.video_span)
        assert sample.frame_times == expected.times  # exact: the times are stored, not recomputed
        assert sample.frames.dtype == torch.uint8 and sample.frames.shape == expected.frames.shape
        difference = (sample.frames.int() - expected.frames.int()).abs()
        if codec == "png":
            assert difference.max() == 0
        else:  # quality 95 without chroma subsampling: about a level per pixel, more on the shapes' sharp edges
            assert difference.float().mean() < 1.0 and difference.max() <= 48
    if codec == "jpeg":  # by rate: 4 frames a second from 1 s videos and 1 s spans, under the cap of 6
        assert {len(s.frame_times) for s in samples} == {4}


def test_a_config_that_samples_frames_otherwise_is_refused_by_name(frame_shards: Path) -> None:
    """Never skipped as a bad sample, even under on_error: skip: every video would be dropped."""
    with pytest.raises(FrameSamplingMismatch, match=r"sampled with \{'num_frames': 3\}, but data\.num_frames / "
                                                     r"data\.video_fps / data\.max_frames ask for \{'num_frames': 8\}"):
        streamed(frame_shards / "png", FrameSampling(num_frames=8), on_error="skip")
    with pytest.raises(FrameSamplingMismatch, match=r"ask for \{'video_fps': 4\.0, 'max_frames': 5\}.*--video-frames"):
        streamed(frame_shards / "jpeg", FrameSampling(fps=4.0, max_frames=5))


def write_video_records(folder: Path, sample_data: Path) -> Path:
    """Two LLaVA video records: one whose video is not a video (found only when decoded), one good."""
    folder.mkdir()
    (folder / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    shutil.copy(sample_data / "msrvtt_qa" / "videos" / "video0.mp4", folder / "good.mp4")
    turns = [{"from": "human", "value": "<video>\nWhich way?"}, {"from": "gpt", "value": "left"}]
    records = [{"id": "corrupt", "video": "bad.mp4", "conversations": turns},
               {"id": "fine", "video": "good.mp4", "conversations": turns}]
    (folder / "videos.json").write_text(json.dumps(records))
    return folder / "videos.json"


def run_optimize(folder: Path, records: Path, on_error: str, out: str) -> tuple[int, str]:
    """`mmft optimize --video-frames png` (the tool's main, in process) over ``records`` under ``on_error``."""
    overlay = {"data": {"init_args": {"on_error": on_error, "num_frames": 2, "train": [
        {"class_path": "data_modules.LlavaInstruct",
         "init_args": {"json_path": str(records), "image_folder": str(records.parent)}}]}}}
    (folder / f"{on_error}.yaml").write_text(yaml.safe_dump(overlay))
    argv = ["--config", str(ROOT / "configs/tiny/llava.yaml"), "--config", str(folder / f"{on_error}.yaml"),
            "--out", out, "--video-frames", "png"]
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
        code = optimize.main(argv)
    return code, printed.getvalue()


def test_a_corrupt_video_at_optimize_time_is_raised_or_skipped_and_counted(tmp_path: Path, sample_data: Path) -> None:
    records = write_video_records(tmp_path / "records", sample_data)
    code, printed = run_optimize(tmp_path, records, "raise", str(tmp_path / "raised"))
    assert code == 2
    assert "mmft optimize: " in printed and "videos.json#0 (id corrupt)" in printed and "bad.mp4: corrupt" in printed
    assert not (tmp_path / "raised").exists() and not list(tmp_path.glob(".*.partial"))

    code, printed = run_optimize(tmp_path, records, "skip", str(tmp_path / "skipped"))
    assert code == 0
    assert "media read by mmft optimize (2 examples): skipped 1 (1 corrupt media)" in printed
    assert "videos.json#0 (id corrupt)" in printed and f"wrote {tmp_path / 'skipped'}: 1 examples" in printed
    [sample] = streamed(tmp_path / "skipped", FrameSampling(num_frames=2))
    assert sample.example.id == "fine" and sample.frames.shape[0] == 2


def test_format_1_items_still_read_and_unknown_formats_are_refused(sample_data: Path) -> None:
    example = video_examples(sample_data)[-1]  # a TVC moment: the span is applied when reading the bytes
    item = example_to_item(example)  # videos as file bytes: format 1's layout, plus an empty video_frames
    record = json.loads(item["record"])
    assert record["video_frames"] is None
    del record["video_frames"]
    old = {"record": json.dumps({**record, "format": 1}), "media": item["media"]}
    sample = DecodeShardItem(None, "raise", frame_sampling=3)(*item_to_example(old))
    expected = load_video_frames(example.video, 3, span=example.video_span)
    assert torch.equal(sample.frames, expected.frames) and sample.frame_times == expected.times
    with pytest.raises(ValueError, match=r"format 3, expected one of \(1, 2\): rewrite the shards"):
        item_to_example({"record": json.dumps({**record, "format": 3}), "media": item["media"]})
