"""The map-style Dataset over Examples, and the collate wrapper that drops samples whose media failed to load.

Media is decoded in ``__getitem__``, so in DataLoader workers. With ``on_error="skip"`` a sample whose image or video
cannot be decoded comes back as a :class:`SkippedSample`; :class:`SkipFilteringCollate` leaves it out of the batch and
hands it on under ``batch[SKIPPED_KEY]``, where ``MultitaskDataModule.on_before_batch_transfer`` counts and reports it
in the main process (a count kept inside a worker would die with the worker).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from data_modules.formats.base import OnError
from data_modules.media import FrameSampling, MediaError, load_image, load_video_frames
from data_modules.records import Example, RejectedSamples, Sample

SKIPPED_KEY = "skipped_samples"
REJECTED_MEDIA = "media the model's processor rejects"


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for a sample whose media could not be decoded (``on_error="skip"``): plain strings, so it pickles."""

    source: str
    reason: str
    message: str


class ExampleDataset(Dataset):
    """Examples as :class:`Sample` objects with their images (PIL, RGB) and video frames decoded.

    ``load_media=False`` yields Samples without pixels (for text-only models or inspecting data).
    ``num_frames`` frames are sampled uniformly from an Example's video, or from its ``video_span`` when set; with
    ``video_fps``, one frame every ``1 / video_fps`` seconds, at most ``max_frames`` (see :class:`FrameSampling`).
    Each video Sample carries its frames' times in seconds (``frame_times``), for models with temporal positions.
    ``on_error`` is one policy for every example or one per example (the DataModule pools several readers, each with
    its own policy).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        load_media: bool = True,
        on_error: OnError | Sequence[OnError] = "raise",
        num_frames: int = 8,
        video_fps: float | None = None,
        max_frames: int | None = None,
    ) -> None:
        self.examples = list(examples)
        policies = [on_error] * len(self.examples) if isinstance(on_error, str) else list(on_error)
        if len(policies) != len(self.examples) or any(p not in ("raise", "skip") for p in policies):
            raise ValueError(f"on_error must be 'raise' or 'skip', or one of those per example, got {on_error!r:.80}")
        self.load_media = load_media
        self.on_error = policies
        self.frame_sampling = FrameSampling(num_frames, video_fps, max_frames)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Sample | SkippedSample:
        example = self.examples[index]
        policy = self.on_error[index]
        if not self.load_media:
            return Sample(example, on_error=policy)
        try:
            images = [load_image(path, example.source) for path in example.images]
            video = None
            if example.video is not None:
                video = load_video_frames(example.video, self.frame_sampling, example.source, span=example.video_span)
        except MediaError as error:
            if policy == "raise":
                raise
            return SkippedSample(example.source, error.reason, str(error))
        if video is None:
            return Sample(example, images, on_error=policy)
        return Sample(example, images, video.frames, video.times, on_error=policy)


class SkipFilteringCollate:
    """Wraps a model's collate: drops :class:`SkippedSample` items and reports them under ``batch[SKIPPED_KEY]``;
    samples the collate rejects (:class:`RejectedSamples`) are dropped and reported too when their policy is skip.

    A batch whose samples were all skipped becomes ``{SKIPPED_KEY: [...]}`` alone, which the DataModule turns into
    ``None`` (Lightning skips a ``None`` training batch; evaluation steps receive ``None`` and should return early).
    A class rather than a closure so DataLoader workers started with "spawn" can pickle it.
    """

    def __init__(self, collate_fn: Callable[[list[Sample]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Sample | SkippedSample]) -> Any:
        samples = [item for item in items if isinstance(item, Sample)]
        skipped = [item for item in items if isinstance(item, SkippedSample)]
        while True:
            if not samples:
                return {SKIPPED_KEY: skipped}
            try:
                batch = self.collate_fn(samples)
                break
            except RejectedSamples as error:  # the model refuses some samples' media: skip them or let it stand
                if any(samples[i].on_error != "skip" for i in error.rejected):
                    raise
                skipped += [SkippedSample(samples[i].example.source or f"{samples[i].example.task} example "
                                          f"{samples[i].example.id}", REJECTED_MEDIA, message)
                            for i, message in error.rejected.items()]
                samples = [sample for i, sample in enumerate(samples) if i not in error.rejected]
        if skipped:
            if not isinstance(batch, MutableMapping):
                raise TypeError(
                    f"the collate function returned a {type(batch).__name__}; it must return a dict so that "
                    f"samples skipped under on_error='skip' can be reported (first: {skipped[0].message})"
                )
            batch[SKIPPED_KEY] = skipped
        return batch
