"""Image and video loading for the datasets: one place that turns a media path into pixels or a clear error.

Every failure is a :class:`MediaError` that names the file and the record that referenced it, so a bad file in a
dataset of a million records can be found; ``reason`` groups failures in skip reports.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageStat, UnidentifiedImageError

from mmft.errors import InputError

MISSING = "missing media"
CORRUPT = "corrupt media"
OUTSIDE = "span outside video"


class MediaError(InputError, RuntimeError):
    """A referenced image or video is missing or cannot be decoded.

    The message names the record (``source``, e.g. ``file#index``) and the media file; ``reason`` is
    :data:`MISSING`, :data:`CORRUPT` or :data:`OUTSIDE` and groups failures in skip reports. ``MediaError(message)``
    alone also works, which lets a DataLoader worker re-raise it in the main process with its type intact.
    """

    def __init__(
        self, problem: str, *, path: Path | str | None = None, source: str = "", reason: str = CORRUPT
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.source = source
        self.reason = reason
        parts = [str(part) for part in (source, path) if part]
        super().__init__(": ".join([*parts, problem]))


def load_image(path: Path | str, source: str = "") -> Image.Image:
    """Decode an image file fully (so truncated files fail here, not later in a transform) and return it as RGB."""
    return _decode_image(Path(path), Path(path), source)


def decode_image(data: bytes, name: Path | str, source: str = "") -> Image.Image:
    """An image file's bytes (as streaming shards store them) decoded as :func:`load_image` decodes the file
    ``name``, with the same errors."""
    return _decode_image(io.BytesIO(data), Path(name), source)


def _decode_image(file: Path | BinaryIO, path: Path, source: str) -> Image.Image:
    try:
        with Image.open(file) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise MediaError("image file not found", path=path, source=source, reason=MISSING) from None
    except UnidentifiedImageError as error:  # its message names the file object, a BytesIO for shard bytes
        raise MediaError("corrupt or unreadable image (not a format PIL can identify)", path=path,
                         source=source) from error
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise MediaError(f"corrupt or unreadable image ({error})", path=path, source=source) from error


def mean_color(image: Image.Image) -> tuple[int, int, int]:
    """The image's mean RGB colour, rounded to integers."""
    return tuple(int(round(c)) for c in ImageStat.Stat(image.convert("RGB")).mean[:3])  # type: ignore[return-value]


def pad_to_square(
    image: Image.Image, fill: tuple[int, int, int] | Literal["mean"] = "mean"
) -> Image.Image:
    """Pad the shorter side equally on both sides so the image becomes square, as LLaVA-1.5's ``expand2square``.

    LLaVA pads with its image processor's normalisation mean (``tuple(int(m * 255) for m in image_mean)``): pass that
    as ``fill``. ``fill="mean"`` pads with this image's own mean colour instead.
    """
    width, height = image.size
    if width == height:
        return image
    color = mean_color(image) if fill == "mean" else tuple(fill)
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def uniform_frame_indices(num_total: int, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` frames at the centres of equal segments of the video (repeats if it is shorter)."""
    if num_total <= 0:
        raise ValueError("a video with no frames has nothing to sample")
    centres = (np.arange(num_frames) + 0.5) * num_total / num_frames
    return np.minimum(centres.astype(np.int64), num_total - 1)


class SpanOutsideVideo(ValueError):
    """A time span that shares no frame with the video (raised by :func:`span_frame_indices`)."""


def span_frame_indices(num_total: int, fps: float, span: tuple[float, float], num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` frames spread uniformly over the frames shown during ``span`` (seconds).

    Frame ``t`` is shown during ``[t / fps, (t + 1) / fps)``; the span is clamped to the video, so annotations that
    run a little past the end (common in TVC and YouCook2) still work. A span wholly outside raises
    :class:`SpanOutsideVideo`.
    """
    first, stop = _span_bounds(num_total, fps, span)
    return first + uniform_frame_indices(stop - first, num_frames)


def _span_bounds(num_total: int, fps: float, span: tuple[float, float]) -> tuple[int, int]:
    """``[first, stop)``: the frames shown during ``span``, clamped to the video; SpanOutsideVideo when none are."""
    start, end = span
    # the 1e-6 absorbs float error: 0.7 s * 10 fps is 7.000000000000001, yet a span ending at 0.7 s excludes frame 7
    first = max(0, math.floor(start * fps + 1e-6))
    stop = min(num_total, math.ceil(end * fps - 1e-6))
    if first >= stop:
        duration = num_total / fps if fps > 0 else 0.0
        raise SpanOutsideVideo(f"span {start:g}-{end:g} s lies outside the video ({duration:.2f} s long)")
    return first, stop


def sample_frame_indices(
    num_total: int, fps: float, num_frames: int, span: tuple[float, float] | None = None
) -> np.ndarray:
    """The frames a video example takes: ``num_frames`` spread uniformly over the video, or over ``span`` (seconds).
    One rule for decoded videos and for pre-extracted frame features, so both paths pick the same frames."""
    if span is None:
        return uniform_frame_indices(num_total, num_frames)
    return span_frame_indices(num_total, fps, span, num_frames)


def rate_frame_indices(
    num_total: int, fps: float, rate: float, max_frames: int, span: tuple[float, float] | None = None
) -> np.ndarray:
    """Frames every ``1 / rate`` seconds from the start of the video (or of ``span``), as LLaVA-NeXT/OneVision
    sample videos by ``video_fps``; when that gives more than ``max_frames``, ``max_frames`` spread uniformly instead
    (their ``frames_upbound``). Raises :class:`SpanOutsideVideo` as :func:`span_frame_indices` does."""
    if fps <= 0:
        raise ValueError(f"the video reports {fps} frames per second, so frames cannot be picked by time")
    first, stop = (0, num_total) if span is None else _span_bounds(num_total, fps, span)
    step = fps / rate  # video frames per sampled frame
    count = math.ceil((stop - first) / step - 1e-6)
    if count > max_frames:
        return first + uniform_frame_indices(stop - first, max_frames)
    return first + np.floor(np.arange(count) * step + 1e-6).astype(np.int64)


DEFAULT_NUM_FRAMES = 8


@dataclass(frozen=True)
class FrameSampling:
    """Which frames a video example takes: ``num_frames`` spread uniformly (the default), or, with ``fps`` set,
    one frame every ``1 / fps`` seconds, at most ``max_frames`` (then spread uniformly). Either way inside the
    example's ``video_span`` when it has one."""

    num_frames: int = DEFAULT_NUM_FRAMES
    fps: float | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps is not None and (self.fps <= 0 or self.max_frames is None or self.max_frames < 1):
            raise ValueError(
                f"sampling by fps needs fps > 0 and max_frames >= 1 (the cap), got fps={self.fps}, "
                f"max_frames={self.max_frames}"
            )

    def indices(self, num_total: int, fps: float, span: tuple[float, float] | None = None) -> np.ndarray:
        """The frame indices to decode from a video of ``num_total`` frames at ``fps``."""
        if self.fps is None:
            return sample_frame_indices(num_total, fps, self.num_frames, span)
        return rate_frame_indices(num_total, fps, self.fps, int(self.max_frames), span)  # type: ignore[arg-type]


def frame_sampling_for(num_frames: int | None, video_fps: float | None, max_frames: int | None,
                       model_frames: int | None) -> FrameSampling:
    """The sampling of the data settings when the model fixes ``model_frames`` frames per video (or None): a fixed
    count is the number, and asking for another one (or for a rate) is a ValueError naming both."""
    if model_frames is not None:
        if video_fps is not None or num_frames not in (None, model_frames):
            asked = f"video_fps={video_fps}" if video_fps is not None else f"num_frames={num_frames}"
            raise ValueError(f"{asked}, but the model takes {model_frames} frames per video (VL-BART: its "
                             "max_images): leave num_frames and video_fps unset")
        num_frames = model_frames
    return FrameSampling(DEFAULT_NUM_FRAMES if num_frames is None else num_frames, video_fps, max_frames)


class VideoFrames(NamedTuple):
    """Decoded frames, uint8 ``[T, H, W, C]`` RGB, and the time of each in seconds (when it starts to show)."""

    frames: torch.Tensor
    times: tuple[float, ...]


def load_video_frames(
    path: Path | str,
    sampling: FrameSampling | int,
    source: str = "",
    size: tuple[int, int] | None = None,
    span: tuple[float, float] | None = None,
    data: bytes | None = None,
) -> VideoFrames:
    """Decode the frames ``sampling`` picks (an int: that many, uniformly spaced) with decord, with their times.

    ``size`` is ``(height, width)`` to resize while decoding (cheaper than resizing afterwards). ``span`` is
    ``(start, end)`` in seconds: sample inside that moment only (TVC / YouCook2 captions describe a part of a video);
    None samples the whole video. ``data``: the file's bytes (as streaming shards store them), decoded in place of
    reading ``path``, which then only names the video in errors.
    Note: decord2 3.x fails on frames smaller than about 2048 pixels (e.g. 32x32); such videos raise MediaError.
    """
    import decord  # imported here: decord loads ffmpeg libraries, which image-only users need not pay for

    if isinstance(sampling, int):
        sampling = FrameSampling(num_frames=sampling)
    path = Path(path)
    if data is None and not path.is_file():
        raise MediaError("video file not found", path=path, source=source, reason=MISSING)
    if span is not None and not span[0] < span[1]:
        raise ValueError(f"span must be (start, end) seconds with start < end, got {span!r}")
    height, width = size if size is not None else (-1, -1)
    try:
        file = str(path) if data is None else io.BytesIO(data)
        reader = decord.VideoReader(file, width=width, height=height, num_threads=1)
        fps = reader.get_avg_fps()
        indices = sampling.indices(len(reader), fps, span)
        frames = reader.get_batch(indices.tolist()).asnumpy()
    except SpanOutsideVideo as error:
        raise MediaError(str(error), path=path, source=source, reason=OUTSIDE) from None
    except (RuntimeError, ValueError, decord.DECORDError) as error:
        problem = f"corrupt or unreadable video ({str(error).splitlines()[0]})"
        raise MediaError(problem, path=path, source=source) from error
    return VideoFrames(torch.from_numpy(frames), tuple(float(i) / fps for i in indices))
