"""data_modules: dataset readers, media decoding, the Dataset over Examples and the multitask DataModule.

Imports nothing from ``mmft.models``: data and models meet only at the Example record and the model's collate.
"""

from data_modules.datasets import SKIPPED_KEY, ExampleDataset, SkipFilteringCollate, SkippedSample
from data_modules.formats import (
    GQA,
    MSRVTTQA,
    NLVR2,
    OCRVQA,
    POPE,
    TVQA,
    CocoKarpathy,
    DataFormatError,
    DocVQA,
    LlavaInstruct,
    MMBench,
    OnError,
    Reader,
    ScienceQA,
    SkipReport,
    TextVQA,
    VideoCaptions,
    VizWiz,
    VQAv2,
)
from data_modules.media import FrameSampling, MediaError, VideoFrames, load_image, load_video_frames, pad_to_square
from data_modules.multitask import DataConfigError, MultitaskDataModule
from data_modules.records import Example, Sample, Turn
from data_modules.sampler import MultitaskBatchSampler
from data_modules.shard_index import ShardIndexError
from data_modules.streaming import DamagedShardError, StreamingShards

__all__ = [
    "GQA",
    "MSRVTTQA",
    "NLVR2",
    "OCRVQA",
    "POPE",
    "SKIPPED_KEY",
    "TVQA",
    "CocoKarpathy",
    "DataConfigError",
    "DamagedShardError",
    "DataFormatError",
    "DocVQA",
    "Example",
    "ExampleDataset",
    "FrameSampling",
    "LlavaInstruct",
    "MMBench",
    "MediaError",
    "MultitaskBatchSampler",
    "MultitaskDataModule",
    "OnError",
    "Reader",
    "Sample",
    "ScienceQA",
    "ShardIndexError",
    "SkipFilteringCollate",
    "SkipReport",
    "SkippedSample",
    "StreamingShards",
    "TextVQA",
    "Turn",
    "VQAv2",
    "VideoCaptions",
    "VideoFrames",
    "VizWiz",
    "load_image",
    "load_video_frames",
    "pad_to_square",
]
