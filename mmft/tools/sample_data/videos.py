"""Video datasets of the sample data: MSRVTT-QA, VALUE's TVQA and TVC (moving shapes with subtitles), and
LLaVA-Video-178K records over the TVC clips."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .scenes import BACKGROUNDS, COLORS, SHAPES, VIDEO_SIZE, draw_shape, write_json, write_json_lines


def write_video(path: Path, frames: list[np.ndarray], fps: int = 8) -> None:
    import av  # a dev dependency (pip install av); only the video sample needs it

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def make_msrvtt_qa(root: Path, rng: random.Random, counts: dict[str, int], num_frames: int = 8) -> None:
    """Tiny videos of a shape moving left, right, up or down, with MSRVTT-QA-style questions."""
    directions = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    video_id, question_id = 0, 0
    for split, n in counts.items():
        records = []
        for _ in range(n):
            color, shape, background = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
            direction = rng.choice(list(directions))
            dx, dy = directions[direction]
            frames = []
            for t in range(num_frames):
                image = Image.new("RGB", (VIDEO_SIZE, VIDEO_SIZE), BACKGROUNDS[background])
                offset = (t - num_frames // 2) * 5
                x, y = 24 + dx * offset, 24 + dy * offset
                draw_shape(ImageDraw.Draw(image), shape, (x, y, x + 16, y + 16), COLORS[color])
                frames.append(np.asarray(image))
            write_video(root / "msrvtt_qa" / "videos" / f"video{video_id}.mp4", frames)
            asked = [(f"which direction does the {shape} move?", direction), ("what color is the moving shape?", color)]
            for question, answer in asked:
                records.append({"id": question_id, "video_id": video_id, "question": question, "answer": answer})
                question_id += 1
            video_id += 1
        write_json(root / "msrvtt_qa" / f"{split}_qa.json", records)


MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
STILL = "nowhere"
VIDEO_FPS = 8
VIDEO_SHAPE = 16  # pixels


def moving_shape_frames(
    color: str, shape: str, background: str, velocities: list[tuple[int, int]]
) -> list[np.ndarray]:
    """One frame per velocity: the shape moves 2 pixels per frame that way, its whole path centred in the frame."""
    path, x, y = [], 0, 0
    for dx, dy in velocities:
        path.append((x, y))
        x, y = x + 2 * dx, y + 2 * dy
    xs, ys = zip(*path)
    shift_x = (VIDEO_SIZE - VIDEO_SHAPE - min(xs) - max(xs)) // 2
    shift_y = (VIDEO_SIZE - VIDEO_SHAPE - min(ys) - max(ys)) // 2
    frames = []
    for x, y in path:
        image = Image.new("RGB", (VIDEO_SIZE, VIDEO_SIZE), BACKGROUNDS[background])
        box = (x + shift_x, y + shift_y, x + shift_x + VIDEO_SHAPE, y + shift_y + VIDEO_SHAPE)
        draw_shape(ImageDraw.Draw(image), shape, box, COLORS[color])
        frames.append(np.asarray(image))
    return frames


def subtitle_record(vid_name: str, lines: list[tuple[float, float, str]]) -> dict[str, Any]:
    return {"vid_name": vid_name, "sub": [{"start": start, "end": end, "text": text} for start, end, text in lines]}


def multiple_choice(question: str, answer: str, options: list[str]) -> dict[str, Any]:
    """A TVQA-style question: the five options in the order given, ``answer_idx`` pointing at the answer."""
    return {"q": question, **{f"a{k}": o for k, o in enumerate(options)}, "answer_idx": options.index(answer)}


def make_tvqa(root: Path, rng: random.Random, counts: dict[str, int], num_frames: int = 16) -> dict[str, int]:
    """VALUE's TVQA format: 2-second clips of a shape moving one way (or not at all), two five-way questions each.

    "Which way does it move" needs the video; the colour is in the pixels and, for most clips, in the subtitles.
    Each question type lists its options in one fixed order, so an answer always has the same label and the tiny
    video models can learn it as they learn MSRVTT-QA's words. With the options shuffled per question (as real TVQA
    does), answering means finding the seen answer among the choices and copying its label: the tiny LLaVA-OneVision
    video config then learned its 24 training questions by heart (all right) and stayed at chance on val, and did so
    again with 96.
    """
    seconds = num_frames / VIDEO_FPS
    middle = seconds / 2
    subtitles, questions, qid = [], {}, 0
    for split, n in counts.items():
        records = []
        for k in range(n):
            vid_name = f"{split}_clip_{k:03d}"
            color, shape, background = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
            motion = rng.choice([*MOTIONS, STILL])
            frames = moving_shape_frames(color, shape, background, [MOTIONS.get(motion, (0, 0))] * num_frames)
            write_video(root / "tvqa" / "videos" / f"{vid_name}.mp4", frames, VIDEO_FPS)
            if rng.random() < 0.8:  # the others have no subtitle line, as some real clips
                lines = [(0.0, middle, f"look at the {color} {shape}"), (middle, seconds, "what is it doing?")]
                subtitles.append(subtitle_record(vid_name, lines))
            asked = [
                multiple_choice(f"which way does the {shape} move?", motion, [*MOTIONS, STILL]),
                multiple_choice(f"what color is the {shape}?", color, list(COLORS)),
            ]
            for question in asked:
                records.append({"vid_name": vid_name, **question, "qid": qid, "ts": f"0.00-{seconds:.2f}"})
                qid += 1
        write_json_lines(root / "tvqa" / f"tvqa_{split}.jsonl", records)
        questions[f"{split}_questions"] = len(records)
    write_json_lines(root / "tvqa" / "tvqa_subtitles.jsonl", subtitles)
    return questions


def moment_captions(color: str, shape: str, motion: str, rng: random.Random) -> list[dict[str, str]]:
    """Two TVC-style descriptions of one moment."""
    templates = [
        f"the {color} {shape} moves {motion}",
        f"a {color} {shape} slides {motion}",
        f"the {shape} goes {motion}",
        f"a {color} {shape} heading {motion}",
    ]
    return [{"desc": desc} for desc in rng.sample(templates, 2)]


def make_tvc(root: Path, rng: random.Random, counts: dict[str, int], num_frames: int = 16) -> dict[str, int]:
    """VALUE's TVC format: in each 2-second video the shape moves one way during the first second and another way
    during the second; each second is a moment (``ts``) with two captions, so a model must look inside the span."""
    seconds, half = num_frames / VIDEO_FPS, num_frames // 2
    middle = seconds / 2
    subtitles, clips, clip_id = [], {}, 0
    for split, n in counts.items():
        records = []
        for k in range(n):
            vid_name = f"{split}_video_{k:03d}"
            color, shape, background = rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(list(BACKGROUNDS))
            motions = rng.sample(list(MOTIONS), 2)
            velocities = [MOTIONS[motions[0]]] * half + [MOTIONS[motions[1]]] * (num_frames - half)
            frames = moving_shape_frames(color, shape, background, velocities)
            write_video(root / "tvc" / "videos" / f"{vid_name}.mp4", frames, VIDEO_FPS)
            lines = [(0.1, middle - 0.1, f"a {color} {shape} appears"), (middle + 0.1, seconds - 0.1, "now it turns")]
            subtitles.append(subtitle_record(vid_name, lines))
            for ts, motion in zip(([0.0, middle], [middle, seconds]), motions):
                descs = moment_captions(color, shape, motion, rng)
                record = {"vid_name": vid_name, "duration": seconds, "ts": ts, "clip_id": clip_id, "descs": descs}
                records.append(record)
                clip_id += 1
        write_json_lines(root / "tvc" / f"tvc_{split}.jsonl", records)
        clips[f"{split}_clips"] = len(records)
    write_json_lines(root / "tvc" / "tvc_subtitles.jsonl", subtitles)
    return clips

def make_llava_video(root: Path) -> None:
    """LLaVA-Video-178K-style records over the MSRVTT-QA and TVC sample videos (paths relative to the sample
    folder): a conversation per MSRVTT-QA video, and one per TVC moment with its ``ts`` span."""
    records = []
    by_video: dict[int, list[dict]] = {}
    for qa in json.loads((root / "msrvtt_qa" / "train_qa.json").read_text(encoding="utf-8")):
        by_video.setdefault(qa["video_id"], []).append(qa)
    for video_id, questions in by_video.items():
        conversation = []
        for qa in questions:
            conversation += [{"from": "human", "value": qa["question"]}, {"from": "gpt", "value": qa["answer"]}]
        conversation[0]["value"] = "<video>\n" + conversation[0]["value"]
        records.append({"id": f"msrvtt-{video_id}", "video": f"msrvtt_qa/videos/video{video_id}.mp4",
                        "conversations": conversation, "data_source": "msrvtt_qa"})
    for line in (root / "tvc" / "tvc_train.jsonl").read_text(encoding="utf-8").splitlines():
        moment = json.loads(line)
        records.append(
            {
                "id": f"tvc-{moment['clip_id']}",
                "video": f"tvc/videos/{moment['vid_name']}.mp4",
                "ts": moment["ts"],
                "conversations": [{"from": "human", "value": "<image>\nWhat happens in this part of the video?"},
                                  {"from": "gpt", "value": moment["descs"][0]["desc"]}],
                "data_source": "tvc",
            }
        )
    write_json(root / "llava" / "llava_video_sample.json", records, indent=2)
