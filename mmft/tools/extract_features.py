"""Pre-extract VL-BART's visual features: run the frozen visual encoder of a config over image or video folders once,
and write one safetensors file keyed by file name (``[grid², channels]`` per image; ``[frames, grid², channels]``
per video, for the frames taken at ``--video-fps``, with that rate beside it).

    mmft extract-features --config configs/vlbart_image.yaml --config configs/methods/dora.yaml \\
        --images /data/coco/train2014 /data/coco/val2014 --out features/coco.safetensors
    mmft extract-features --config configs/vlbart_video.yaml --config configs/methods/dora.yaml \\
        --videos /data/tvqa/videos --video-fps 3 --out features/tvqa.safetensors

A video example then takes ``model.init_args.max_images`` of the stored frames, spread over its clip (or its caption's
span) by the rule that picks decoded frames; with ``--video-fps 0`` (every frame) the features equal the end-to-end
ones exactly.

The encoder settings come from the config's ``model.init_args.visual``, read by the ``mmft`` CLI's own parser
(``--config`` files compose as they do for ``mmft fit``), so the features equal those the model computes end to end
from the same images. Train on them by listing the files under ``model.init_args.visual.features``. The file records
the settings it was made with; a model configured differently refuses it.

Memory: the features are held until the file is written (36 x 2048 values per image: 295 KB in float32, 147 KB in
float16), so write one file per image folder (COCO, GQA, NLVR2) rather than one for everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from data_modules.media import load_image
from mmft.models.visual_features import (
    FPS_SUFFIX,
    ImageTransform,
    VisualConfig,
    VisualEncoder,
    VisualFeatureError,
    feature_key,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def visual_config_from(config_files: Sequence[Path]) -> VisualConfig:
    """``model.init_args.visual`` of the configs as the CLI composes them (without ``features``: extraction makes
    them)."""
    from mmft.cli import resolve_config

    for path in config_files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--config {path}: no such file")
    config = resolve_config([arg for path in config_files for arg in ("--config", str(path))])
    visual = (config.get("model") or {}).get("init_args", {}).get("visual")
    if not isinstance(visual, dict):
        raise VisualFeatureError(
            f"{', '.join(map(str, config_files))}: no model.init_args.visual section (a VL-BART config is needed)"
        )
    return VisualConfig(**{**visual, "features": None})


def find_images(folders: Sequence[Path]) -> list[Path]:
    """Every image under ``folders`` (recursively), sorted."""
    return find_media(folders, IMAGE_SUFFIXES, "images")


def find_videos(folders: Sequence[Path]) -> list[Path]:
    """Every video under ``folders`` (recursively), sorted."""
    return find_media(folders, VIDEO_SUFFIXES, "videos")


def find_media(folders: Sequence[Path], suffixes: set[str], kind: str) -> list[Path]:
    """Files with ``suffixes`` under ``folders``; two with one file name are an error, since features are keyed by
    file name."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"--{kind} {folder}: no such folder")
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() not in suffixes or not path.is_file():
                continue
            key = feature_key(path)
            if key in found:
                raise VisualFeatureError(
                    f"two {kind} named {key!r}: {found[key]} and {path}; features are keyed by file name, so "
                    "extract them into separate files"
                )
            found[key] = path
    if not found:
        raise FileNotFoundError(f"no {'/'.join(sorted(suffixes))} {kind} under {', '.join(map(str, folders))}")
    return list(found.values())


class ImageFiles(Dataset):
    """Images decoded and preprocessed exactly as the model's collate does it (in DataLoader workers)."""

    def __init__(self, paths: list[Path], transform: ImageTransform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform([load_image(self.paths[index])])[0]


def extract(
    config: VisualConfig,
    images: Sequence[Path],
    out: Path,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: str = "float32",
    num_workers: int = 0,
    videos: Sequence[Path] = (),
    video_fps: float = 0.0,
) -> dict[str, int]:
    """Write the features of ``images`` and ``videos`` to ``out``; returns the counts written."""
    from safetensors.torch import save_file

    encoder = VisualEncoder(config).to(device)
    tensors: dict[str, torch.Tensor] = {}
    if images:
        loader = DataLoader(ImageFiles(list(images), encoder.image_transform()), batch_size=batch_size,
                            num_workers=num_workers)
        done = 0
        start = time.time()
        for pixels in loader:
            features = encoder(pixels.to(device)).to("cpu", DTYPES[dtype])
            for path, feature in zip(images[done : done + len(features)], features):
                tensors[feature_key(path)] = feature.contiguous()
            done += len(features)
            print(f"\r{done}/{len(images)} images, {done / (time.time() - start):.1f}/s", end="", file=sys.stderr)
        print(file=sys.stderr)
    frames = 0
    for number, path in enumerate(videos, start=1):
        features, fps = video_features(encoder, path, video_fps, batch_size, device)
        tensors[feature_key(path)] = features.to(DTYPES[dtype]).contiguous()
        tensors[feature_key(path) + FPS_SUFFIX] = torch.tensor(fps, dtype=torch.float64)
        frames += len(features)
        print(f"\r{number}/{len(videos)} videos, {frames} frames", end="", file=sys.stderr)
    if videos:
        print(file=sys.stderr)
    metadata = {**config.metadata(), "feature_dim": str(encoder.feature_dim), "dtype": dtype}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")  # renamed into place once whole
    save_file(tensors, str(partial), metadata=metadata)
    partial.replace(out)
    return {"images": len(images), "videos": len(videos), "frames": frames,
            "tokens_per_image": config.tokens_per_image, "feature_dim": encoder.feature_dim}


def video_features(encoder: VisualEncoder, path: Path, video_fps: float, batch_size: int, device: str
                   ) -> tuple[torch.Tensor, float]:
    """Features of every k-th frame of ``path`` (k from the video's rate and ``video_fps``; 0: every frame), and
    the rate of the frames kept."""
    import decord
    from PIL import Image

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        native = float(reader.get_avg_fps())
        step = 1 if video_fps <= 0 else max(1, round(native / video_fps))
        indices = list(range(0, len(reader), step))
        transform = encoder.image_transform()
        chunks = []
        for start in range(0, len(indices), batch_size):
            decoded = reader.get_batch(indices[start : start + batch_size]).asnumpy()
            pixels = transform([Image.fromarray(frame) for frame in decoded])
            chunks.append(encoder(pixels.to(device)).cpu())
    except (RuntimeError, decord.DECORDError) as error:
        raise VisualFeatureError(f"{path}: cannot decode the video ({str(error).splitlines()[0]})") from None
    return torch.cat(chunks), native / step


def main(argv: Sequence[str] | None = None) -> int:
    """``mmft extract-features``."""
    parser = argparse.ArgumentParser(prog="mmft extract-features", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="mmft VL-BART config(s); the visual encoder comes from model.init_args.visual")
    parser.add_argument("--images", type=Path, nargs="+", default=[], help="image folders (searched recursively)")
    parser.add_argument("--videos", type=Path, nargs="+", default=[], help="video folders (searched recursively)")
    parser.add_argument("--video-fps", type=float, default=0.0,
                        help="frames per second of video to keep (the nearest whole step; 0: every frame)")
    parser.add_argument("--out", type=Path, required=True, help="the safetensors file to write")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="stored precision (float32: exactly the end-to-end features; float16 halves the file)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    args = parser.parse_args(argv)
    if not args.images and not args.videos:
        parser.error("give --images and/or --videos folders")
    try:
        config = visual_config_from(args.config)
        images = find_images(args.images) if args.images else []
        videos = find_videos(args.videos) if args.videos else []
        counts = extract(config, images, args.out, args.batch_size, args.device, args.dtype, args.num_workers, videos,
                         args.video_fps)
    except (VisualFeatureError, FileNotFoundError) as error:
        print(f"mmft extract-features: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {counts['images']} images and {counts['videos']} videos ({counts['frames']} frames) x "
          f"{counts['tokens_per_image']} tokens x {counts['feature_dim']} ({config.encoder}, {config.image_size} px, "
          f"{args.dtype})")
    return 0
