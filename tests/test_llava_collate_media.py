"""The LLaVA-1.5 collate with several images per conversation and with video frames as images; the video readers'
examples through it with their instructions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

from lightning.pytorch import Trainer
from test_llava_collate import VICUNA_V1_SYSTEM

from data_modules import MSRVTTQA, TVQA, ExampleDataset, LlavaInstruct, MultitaskDataModule
from mmft.adapters import AdapterConfig
from mmft.models import LlavaFromConfig, LlavaModule
from data_modules.records import Example, Sample, Turn
from mmft.models.llava_collate import (
    CHOICE_SUFFIX,
    IGNORE_INDEX,
    SHORT_ANSWER_SUFFIX,
    CollateError,
    HFImageTransform,
    LlavaCollate,
)

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TOKENS = 4  # 16 px crops, 8 px patches: 2 x 2


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ROOT / "configs" / "tiny" / "tokenizer")


@pytest.fixture(scope="module")
def processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})


def make_collate(tokenizer, processor, **kwargs) -> LlavaCollate:
    return LlavaCollate(tokenizer, HFImageTransform(processor), IMAGE_TOKENS, **kwargs)


def example(turns, task="llava_instruct", images=0, video=False) -> Example:
    return Example(
        task=task,
        id="e1",
        turns=tuple(Turn(role, text) for role, text in turns),
        images=tuple(Path(f"img{k}.png") for k in range(images)),
        video=Path("clip.mp4") if video else None,
        source="test.json#0 (id e1)",
    )


COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
MULTI_TURNS = [("user", "<image>\n<image>\nWhich one is red?"), ("assistant", "The first."),
               ("user", "And this one? <image>"), ("assistant", "Blue.")]


def test_several_images_expand_at_their_markers_in_order(tokenizer, processor) -> None:
    collate = make_collate(tokenizer, processor)
    images = [Image.new("RGB", (16, 16), c) for c in COLOURS]
    batch = collate([Sample(example(MULTI_TURNS, images=3), images)])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    image = [tokenizer.convert_tokens_to_ids("<image>")] * IMAGE_TOKENS
    eos = tokenizer.eos_token_id
    expected = ([tokenizer.bos_token_id] + enc(f"{VICUNA_V1_SYSTEM} USER: ") + image + enc("\n") + image
                + enc("\nWhich one is red? ASSISTANT:") + enc(" The first.") + [eos]
                + enc("USER: And this one? ") + image + enc(" ASSISTANT:") + enc(" Blue.") + [eos])
    assert ids == expected
    supervised = tokenizer.decode([token for token, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert supervised == " The first.</s> Blue.</s>"
    # the images in marker order, each padded and preprocessed as a single image would be
    torch.testing.assert_close(batch["pixel_values"], processor(images=images, return_tensors="pt")["pixel_values"])

    # transformers' own LlavaProcessor expands the same text to the same ids
    llava_processor = LlavaProcessor(image_processor=processor, tokenizer=tokenizer, patch_size=8,
                                     vision_feature_select_strategy="default", num_additional_image_tokens=1)
    prompt = batch["prompt_input_ids"][0][batch["prompt_attention_mask"][0].bool()].tolist()
    text = (f"{VICUNA_V1_SYSTEM} USER: <image>\n<image>\nWhich one is red? ASSISTANT: The first.</s>"
            "USER: And this one? <image> ASSISTANT:")
    reference = llava_processor(images=images, text=[text], return_tensors="pt")
    assert prompt == [tokenizer.bos_token_id] + reference["input_ids"][0].tolist()
    torch.testing.assert_close(batch["pixel_values"], reference["pixel_values"])


def test_a_multi_image_conversation_is_never_shortened(tokenizer, processor) -> None:
    images = [Image.new("RGB", (16, 16), c) for c in COLOURS]
    full = make_collate(tokenizer, processor)([Sample(example(MULTI_TURNS, images=3), images)])
    tight = make_collate(tokenizer, processor, max_length=full["input_ids"].shape[1] - 1)
    verdict = tight.check_length(example(MULTI_TURNS, images=3), training=True)
    assert not verdict.truncated and "test.json#0 (id e1): " in verdict.problem
    assert tight.check_length(example(MULTI_TURNS, images=3), training=False) == (False, None)


def frames(count: int, height: int = 12, width: int = 16) -> torch.Tensor:
    return torch.stack([torch.full((height, width, 3), 40 * (k + 1), dtype=torch.uint8) for k in range(count)])


def test_video_frames_are_images_at_the_start_of_the_first_user_turn(tokenizer, processor) -> None:
    collate = make_collate(tokenizer, processor, video_frames=3)
    video = example([("user", "what color is the moving shape?"), ("assistant", "red")], task="msrvtt_qa", video=True)
    batch = collate([Sample(video, [], frames(3), (0.0, 0.5, 1.0))])
    prompt = batch["prompt_input_ids"][0]
    assert tokenizer.decode(prompt) == (f"<s>{VICUNA_V1_SYSTEM} USER: " + ("<image>" * IMAGE_TOKENS + "\n") * 3
                                        + f"what color is the moving shape?\n{SHORT_ANSWER_SUFFIX} ASSISTANT:")
    # each frame padded to square with the processor's mean colour, as an image would be
    square = []
    for frame in frames(3).numpy():
        canvas = Image.new("RGB", (16, 16), collate.image_transform.fill)
        canvas.paste(Image.fromarray(frame), (0, 2))
        square.append(canvas)
    torch.testing.assert_close(batch["pixel_values"], processor(images=square, return_tensors="pt")["pixel_values"])

    # check_length counts video_frames frames, without decoding
    length = batch["input_ids"].shape[1]
    assert make_collate(tokenizer, processor, video_frames=3, max_length=length).check_length(video, True).problem is None
    too_tight = make_collate(tokenizer, processor, video_frames=4, max_length=length)
    assert "test.json#0 (id e1): " in too_tight.check_length(video, True).problem
    with pytest.raises(CollateError, match=r"test.json#0 \(id e1\): 4 video frames, more than video_frames=3"):
        collate([Sample(video, [], frames(4))])
    with pytest.raises(CollateError, match="a video example without decoded frames"):
        collate([Sample(video, [])])


def test_video_readers_feed_the_llava_collate_with_their_instructions(tokenizer, processor, sample_data: Path) -> None:
    collate = make_collate(tokenizer, processor, video_frames=2)
    tvqa = TVQA(sample_data / "tvqa" / "tvqa_val.jsonl", sample_data / "tvqa" / "tvqa_subtitles.jsonl",
                sample_data / "tvqa" / "videos").read()[:2]
    msrvtt = MSRVTTQA(sample_data / "msrvtt_qa" / "val_qa.json", sample_data / "msrvtt_qa" / "videos").read()[:2]
    for examples, instruction in ((tvqa, CHOICE_SUFFIX), (msrvtt, SHORT_ANSWER_SUFFIX)):
        dataset = ExampleDataset(examples, num_frames=2)
        batch = collate([dataset[0], dataset[1]])
        assert batch["pixel_values"].shape[0] == 4  # two frames per example
        for row, found in enumerate(examples):
            mask = batch["prompt_attention_mask"][row].bool()
            text = tokenizer.decode(batch["prompt_input_ids"][row][mask])
            assert text.endswith(f"{found.prompt}\n{instruction} ASSISTANT:")
            assert text.count("<image>") == 2 * IMAGE_TOKENS
            labels = batch["labels"][row]
            assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == f" {found.target}</s>"
    assert tvqa[0].target in {f"a{k}" for k in range(5)} and "a0: " in tvqa[0].prompt


@pytest.mark.slow
def test_tiny_llava_trains_and_answers_on_multi_image_and_video_records(sample_data: Path, tmp_path: Path) -> None:
    """The LLaVA-OneVision multi-image and LLaVA-Video-178K sample records through the DataModule, the collate and
    a transformers Llava (several images per prompt, video frames as images) under a Lightning Trainer."""
    backbone = LlavaFromConfig(
        tokenizer=str(ROOT / "configs" / "tiny" / "tokenizer"),
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 8},
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 512},
    )
    adapter = AdapterConfig(method="dora", r=4, alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                            modules_to_save=["multi_modal_projector"])
    module = LlavaModule(backbone, adapter, max_length=512, max_new_tokens=2)
    llava = sample_data / "llava"
    multi = LlavaInstruct(llava / "llava_multi_image_sample.json", sample_data, task="multi_image")
    video = LlavaInstruct(llava / "llava_video_sample.json", sample_data, task="video")
    datamodule = MultitaskDataModule(train=[multi, video], batch_size=4, num_frames=2, collate_fn=module.collate)
    trainer = Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=tmp_path)
    trainer.fit(module, datamodule)
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["train/loss"])

    for examples in datamodule.examples("train"):
        batch = module.collate([ExampleDataset(examples, num_frames=2)[k] for k in range(2)])
        images = batch["pixel_values"].shape[0]
        assert images == sum(len(e.images) or 2 for e in examples[:2])  # a video: its 2 frames
        image_tokens = (batch["prompt_input_ids"] == module.collate.image_token_id).sum().item()
        assert image_tokens == images * module.collate.num_image_tokens
        assert len(module.generate_answers(batch)) == 2
