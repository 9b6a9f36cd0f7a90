"""Image loading, square padding and video frame sampling (videos written with PyAV, decoded with decord)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_modules.media import (
    FrameSampling,
    MediaError,
    SpanOutsideVideo,
    load_image,
    load_video_frames,
    pad_to_square,
    rate_frame_indices,
    span_frame_indices,
    uniform_frame_indices,
)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK"])
def test_load_image_returns_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    Image.new(mode, (5, 3)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 3)


def test_load_image_errors_name_file_and_record(tmp_path: Path) -> None:
    with pytest.raises(MediaError) as error:
        load_image(tmp_path / "none.png", source="data.json#3 (id 9)")
    assert str(error.value) == f"data.json#3 (id 9): {tmp_path / 'none.png'}: image file not found"
    assert error.value.reason == "missing media" and error.value.path == tmp_path / "none.png"

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\x00not an image at all")
    with pytest.raises(MediaError, match=r"data.json#4: .*garbage\.jpg: corrupt or unreadable image") as error:
        load_image(garbage, source="data.json#4")
    assert error.value.reason == "corrupt media"

    truncated = tmp_path / "truncated.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:400])
    with pytest.raises(MediaError, match=r"truncated\.jpg: corrupt or unreadable image"):
        load_image(truncated)


def test_media_error_survives_a_dataloader_worker_reraise() -> None:
    # torch re-raises a worker's exception as `type(error)(message)`
    error = MediaError("broken", path="x.png", source="f.json#1")
    assert str(MediaError(str(error))) == "f.json#1: x.png: broken"


def test_pad_to_square_centres_the_image_like_expand2square() -> None:
    wide = Image.new("RGB", (6, 2), (200, 0, 0))
    padded = pad_to_square(wide, fill=(1, 2, 3))
    assert padded.size == (6, 6)
    pixels = np.asarray(padded)
    # (6 - 2) // 2 = 2 rows of fill above, the image in rows 2-3, 2 rows of fill below
    assert (pixels[:2] == (1, 2, 3)).all() and (pixels[4:] == (1, 2, 3)).all()
    assert (pixels[2:4] == (200, 0, 0)).all()

    tall = Image.new("RGB", (1, 4), (0, 0, 0))
    tall.putpixel((0, 0), (255, 255, 255))  # mean colour: (255 / 4) rounded = 64 per channel
    pixels = np.asarray(pad_to_square(tall))
    # (4 - 1) // 2 = 1 column of fill left, the image in column 1, 2 columns right
    assert (pixels[:, 0] == 64).all() and (pixels[:, 2:] == 64).all()
    assert tuple(pixels[0, 1]) == (255, 255, 255) and (pixels[1:, 1] == 0).all()

    square = Image.new("RGB", (3, 3))
    assert pad_to_square(square) is square


def test_uniform_frame_indices() -> None:
    # 10 frames in 4 segments of 2.5 frames: centres 1.25, 3.75, 6.25, 8.75
    assert uniform_frame_indices(10, 4).tolist() == [1, 3, 6, 8]
    assert uniform_frame_indices(8, 8).tolist() == list(range(8))
    # a 3-frame video asked for 6 frames repeats frames: centres 0.25, 0.75, 1.25, 1.75, 2.25, 2.75
    assert uniform_frame_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        uniform_frame_indices(0, 4)


def write_gray_ramp_video(path: Path, num_frames: int, size: int = 64) -> list[int]:
    """An mp4 whose frame t is uniformly gray with level 20 + 25 t (easy to recognise after lossy coding)."""
    av = pytest.importorskip("av")
    levels = [20 + 25 * t for t in range(num_frames)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for level in levels:
            frame = np.full((size, size, 3), level, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return levels


def test_load_video_frames_samples_uniformly(tmp_path: Path) -> None:
    path = tmp_path / "ramp.mp4"
    levels = write_gray_ramp_video(path, 10)
    frames, times = load_video_frames(path, 4, source="v.json#0")
    assert times == (1 / 8, 3 / 8, 6 / 8, 8 / 8)  # 8 fps: frame t starts at t / 8 s
    assert frames.dtype.is_floating_point is False and tuple(frames.shape) == (4, 64, 64, 3)
    expected = [levels[i] for i in (1, 3, 6, 8)]
    measured = frames.float().mean(dim=(1, 2, 3)).tolist()
    assert measured == pytest.approx(expected, abs=4)

    resized = load_video_frames(path, 2, size=(48, 80)).frames
    assert tuple(resized.shape) == (2, 48, 80, 3)


def test_load_video_frames_errors(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"v.json#1: .*none\.mp4: video file not found") as error:
        load_video_frames(tmp_path / "none.mp4", 4, source="v.json#1")
    assert error.value.reason == "missing media"

    good = tmp_path / "good.mp4"
    write_gray_ramp_video(good, 8)
    for name, data in (("junk.mp4", b"not a video"), ("cut.mp4", good.read_bytes()[:300])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MediaError, match=rf"v.json#2: .*{name}: corrupt or unreadable video") as error:
            load_video_frames(tmp_path / name, 4, source="v.json#2")
        assert error.value.reason == "corrupt media"


def test_span_frame_indices() -> None:
    # 10 fps: frames 3, 4, 5 and 6 are shown during 0.3-0.7 s (0.7 * 10 is 7.000000000000001: frame 7 stays out)
    assert span_frame_indices(100, 10.0, (0.3, 0.7), 4).tolist() == [3, 4, 5, 6]
    # frames 10-19 in 2 segments of 5 frames: centres 12.5 and 17.5
    assert span_frame_indices(100, 10.0, (1.0, 2.0), 2).tolist() == [12, 17]
    # clamped to the video: frames 8 and 9 of a 10-frame video
    assert span_frame_indices(10, 10.0, (0.8, 5.0), 4).tolist() == [8, 8, 9, 9]
    with pytest.raises(SpanOutsideVideo, match=r"span 1-2 s lies outside the video \(1.00 s long\)"):
        span_frame_indices(10, 10.0, (1.0, 2.0), 4)


def test_load_video_frames_samples_inside_a_span(tmp_path: Path) -> None:
    path = tmp_path / "ramp.mp4"
    levels = write_gray_ramp_video(path, 10)  # 8 fps: frame t is shown during [t / 8, (t + 1) / 8) s

    def measured(span: tuple[float, float], num_frames: int) -> list[float]:
        frames = load_video_frames(path, num_frames, source="v.json#5", span=span).frames
        return frames.float().mean(dim=(1, 2, 3)).tolist()

    assert measured((0.5, 1.0), 4) == pytest.approx([levels[t] for t in (4, 5, 6, 7)], abs=4)
    assert measured((0.5, 1.0), 2) == pytest.approx([levels[5], levels[7]], abs=4)
    # a span running past the end is clamped to frames 2-9: centres of 4 segments of 2 frames
    assert measured((0.25, 60.0), 4) == pytest.approx([levels[t] for t in (3, 5, 7, 9)], abs=4)

    with pytest.raises(MediaError) as error:
        load_video_frames(path, 4, source="v.json#5", span=(2.0, 3.5))
    assert str(error.value) == f"v.json#5: {path}: span 2-3.5 s lies outside the video (1.25 s long)"
    assert error.value.reason == "span outside video"
    with pytest.raises(ValueError, match=r"start < end, got \(1.0, 1.0\)"):
        load_video_frames(path, 4, span=(1.0, 1.0))


def test_rate_frame_indices() -> None:
    # 30 fps video, 2 frames a second: every 15th frame from the start; 100 frames = 3.33 s -> 0, 15, ..., 90
    assert rate_frame_indices(100, 30.0, 2.0, max_frames=64).tolist() == [0, 15, 30, 45, 60, 75, 90]
    # 25 fps at 10 per second: a step of 2.5 frames, floored
    assert rate_frame_indices(10, 25.0, 10.0, max_frames=64).tolist() == [0, 2, 5, 7]
    # more than max_frames: max_frames spread uniformly instead (centres of 3 segments of 100 / 3 frames)
    assert rate_frame_indices(100, 30.0, 2.0, max_frames=3).tolist() == [16, 50, 83]
    # inside a span: frames shown during 1-2 s of a 10 fps video are 10-19, then every 5th
    assert rate_frame_indices(100, 10.0, 2.0, max_frames=64, span=(1.0, 2.0)).tolist() == [10, 15]
    with pytest.raises(SpanOutsideVideo):
        rate_frame_indices(10, 10.0, 2.0, max_frames=8, span=(3.0, 4.0))
    with pytest.raises(ValueError, match="0.0 frames per second"):
        rate_frame_indices(10, 0.0, 2.0, max_frames=8)


def test_frame_sampling_options_are_checked() -> None:
    with pytest.raises(ValueError, match="needs fps > 0 and max_frames"):
        FrameSampling(fps=1.0)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        FrameSampling(0)


def test_load_video_frames_by_fps_inside_a_span_with_times(tmp_path: Path) -> None:
    path = tmp_path / "ramp.mp4"
    levels = write_gray_ramp_video(path, 10)  # 8 fps, 1.25 s
    sampling = FrameSampling(fps=4.0, max_frames=8)  # every 2nd frame
    frames, times = load_video_frames(path, sampling, source="v.json#6")
    assert times == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert frames.float().mean(dim=(1, 2, 3)).tolist() == pytest.approx([levels[t] for t in (0, 2, 4, 6, 8)], abs=4)
    frames, times = load_video_frames(path, sampling, span=(0.5, 1.0))
    assert times == (0.5, 0.75) and frames.shape[0] == 2
    capped = load_video_frames(path, FrameSampling(fps=8.0, max_frames=2))
    assert capped.times == (2 / 8, 7 / 8)  # 10 frames > 2: centres of 2 segments of 5 frames
    with pytest.raises(MediaError) as error:
        load_video_frames(path, sampling, source="v.json#6", span=(2.0, 3.0))
    assert error.value.reason == "span outside video" and "v.json#6" in str(error.value)
