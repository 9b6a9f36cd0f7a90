"""VisionLanguageModule and ChatCollate on each family's tiny model: label masks token by token against the
family's published format, fit / exact resume / test / predict / PEFT export, batched generation (M-RoPE with left
padding), video and several images, the zero-weight vision dummy, and adapters on the vision tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from generation_checks import assert_batched_logits_equal_one_by_one
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from test_llava_family import VICUNA_V1_SYSTEM
from tiny_vlms import FAMILIES, PROJECTORS, lm_adapter, tiny_backbone
from torch.utils.data import DataLoader

from data_modules.records import Example, Sample, Turn
from mmft.adapters import save_adapters
from mmft.metrics import VQAAccuracy
from mmft.models import VisionLanguageModule
from mmft.models.batch_rows import CollateError
from mmft.models.chat_collate import MEDIA_KEYS_SKIPPED
from mmft.models.lm_loss import next_token_loss
from mmft.models.vlm_families import FAMILIES as TINY_FAMILIES
from mmft.models.vlm_families import family_template
from mmft.models.vlm_parts import find_parts
from mmft.tasks import SHORT_ANSWER_SUFFIX

RED, BLUE = Image.new("RGB", (24, 16), (220, 40, 40)), Image.new("RGB", (20, 28), (40, 80, 225))
# the two-turn conversation of the mask test, as each family's published format writes it: (text, supervised); a
# reply is supervised with its end-of-turn token and the newline the template writes after it
QWEN3_TWO_TURNS = [
    ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
     "<|im_start|>assistant\n", False),
    ("a red circle<|im_end|>\n", True),
    ("<|im_start|>user\nAnd the square?<|im_end|>\n<|im_start|>assistant\n", False),
    ("blue<|im_end|>\n", True),
]
# Qwen2-VL / Qwen2.5-VL Instruct write a default system turn first
QWEN_TWO_TURNS = [("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + QWEN3_TWO_TURNS[0][0], False),
                  *QWEN3_TWO_TURNS[1:]]
# MiniCPM-V 4.6: Qwen's ChatML and default system turn, the image a placeholder the processor expands
MINICPMV_TWO_TURNS = [
    ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|image_pad|>What is it?"
     "<|im_end|>\n<|im_start|>assistant\n", False),
    *QWEN3_TWO_TURNS[1:],
]
TWO_TURNS = {
    "llava": [
        (f"<s>{VICUNA_V1_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:", False),
        (" a red circle</s>", True),
        ("USER: And the square? ASSISTANT:", False),
        (" blue</s>", True),
    ],
    "minicpmv4_6": MINICPMV_TWO_TURNS,
    "qwen2_5_vl": QWEN_TWO_TURNS,
    "qwen2_vl": QWEN_TWO_TURNS,
    "qwen3_vl": QWEN3_TWO_TURNS,
    "qwen3_vl_moe": QWEN3_TWO_TURNS,
    "glm4v": [
        ("[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>What is it?<|assistant|>\n", False),
        ("a red circle<|endoftext|>", True),  # GLM writes no end of turn: mmft supervises the end of text
        ("<|user|>\nAnd the square?<|assistant|>\n", False),
        ("blue<|endoftext|>", True),
    ],
    "gemma3": [
        ("<s><start_of_turn>user\n<start_of_image>What is it?<end_of_turn>\n<start_of_turn>model\n", False),
        ("a red circle<end_of_turn>\n", True),
        ("<start_of_turn>user\nAnd the square?<end_of_turn>\n<start_of_turn>model\n", False),
        ("blue<end_of_turn>\n", True),
    ],
    "internvl": [
        ("<|im_start|>user\n<IMG_CONTEXT>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n", False),
        ("a red circle<|im_end|>\n", True),
        ("<|im_start|>user\nAnd the square?<|im_end|>\n<|im_start|>assistant\n", False),
        ("blue<|im_end|>\n", True),
    ],
    "mistral3": [
        ("<s>[INST][IMG]What is it?[/INST]", False),
        ("a red circle</s>", True),
        ("[INST]And the square?[/INST]", False),
        ("blue</s>", True),
    ],
    "llava_onevision": [
        ("<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\n", False),
        ("a red circle<|im_end|>\n", True),
        ("<|im_start|>user\nAnd the square?<|im_end|>\n<|im_start|>assistant\n", False),
        ("blue<|im_end|>\n", True),
    ],
    "llava_next": [
        ("[INST] <image>\nWhat is it? [/INST]", False),
        (" a red circle</s>", True),
        ("[INST] And the square? [/INST]", False),
        (" blue</s>", True),
    ],
    "llava_next_video": [
        (f"<s>{VICUNA_V1_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:", False),
        (" a red circle</s>", True),
        ("USER: And the square? ASSISTANT:", False),
        (" blue</s>", True),
    ],
    "smolvlm": [
        ("<|im_start|>User:<image>What is it?<end_of_utterance>\nAssistant:", False),
        (" a red circle<end_of_utterance>\n", True),
        ("User: And the square?<end_of_utterance>\nAssistant:", False),
        (" blue<end_of_utterance>\n", True),
    ],
    "idefics3": [
        ("<|begin_of_text|>User:<image>What is it?<end_of_utterance>\nAssistant:", False),
        (" a red circle<end_of_utterance>\n", True),
        ("User: And the square?<end_of_utterance>\nAssistant:", False),
        (" blue<end_of_utterance>\n", True),
    ],
}


def two_turn_sample() -> Sample:
    turns = (Turn("user", "What is it?"), Turn("assistant", "a red circle"), Turn("user", "And the square?"),
             Turn("assistant", "blue"))
    return Sample(Example("instruct", "c1", turns, images=(Path("c1.jpg"),)), [RED])


def vqa_samples(n: int = 8) -> list[Sample]:
    rows = [("red", RED, "What color is it?"), ("blue", BLUE, "What color is the shape?")]
    samples = []
    for i in range(n):
        answer, image, question = rows[i % 2]
        question = f"{question} ({i} of {n})"  # every batch differs: a resume that replays the wrong batch fails
        samples.append(Sample(Example("vqav2", str(i), (Turn("user", question), Turn("assistant", answer)),
                                      images=(Path(f"{i}.jpg"),), references=(answer,) * 10), [image]))
    return samples


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def module(family) -> VisionLanguageModule:
    return VisionLanguageModule(tiny_backbone(family), lm_adapter(family), max_new_tokens=4)


def test_labels_are_the_assistant_replies_with_their_end_of_turn_token(family, module):
    if family == "paligemma":  # no chat model: its format is tested in test_paligemma_prompt_and_answer_...
        with pytest.raises(CollateError, match=r"instruct example c1: 2 questions; .*prefix-LM"):
            module.collate([two_turn_sample()])
        return
    processor = module.processor
    segments = TWO_TURNS[family]
    first = processor(text=[segments[0][0]], images=[[RED]])["input_ids"][0]
    pieces = [list(first)] + [processor.tokenizer(text, add_special_tokens=False)["input_ids"]
                              for text, _ in segments[1:]]
    expected_ids = [t for piece in pieces for t in piece]
    expected_labels = [t if supervised else -100 for piece, (_, supervised) in zip(pieces, segments) for t in piece]
    batch = module.collate([two_turn_sample()])
    assert batch["input_ids"][0].tolist() == expected_ids
    assert batch["labels"][0].tolist() == expected_labels
    # the prompt view ends where the last reply starts
    prompt = [t for piece in pieces[:3] for t in piece]
    assert batch["prompt_input_ids"][0].tolist() == prompt
    end_of_turn = processor.tokenizer.convert_tokens_to_ids(TINY_FAMILIES[family].end_of_turn)
    assert module.end_of_turn_id == end_of_turn and expected_labels.count(end_of_turn) == 2


def test_loss_is_transformers_own_loss_over_the_replies(module):
    batch = module.collate(vqa_samples(2))
    module.eval()
    with torch.no_grad():
        ours = module.training_loss(batch)
        reference = module.model(**module._inputs(batch, prompt=False), labels=batch["labels"]).loss
    torch.testing.assert_close(ours, reference)


def test_batched_left_padded_generation_equals_one_by_one(module):
    module.eval()
    samples = [vqa_samples(2)[0], Sample(Example("vqav2", "long", (Turn("user", "Is there a blue square in the "
                                                                           "picture? Look carefully."),),
                                                 images=(Path("x.jpg"),), references=("no",)), [BLUE])]
    together = module.generate_answers(module.collate(samples))
    alone = [module.generate_answers(module.collate([s]))[0] for s in samples]
    assert together == alone
    assert_batched_logits_equal_one_by_one(module, samples)


TEXT_ONLY = Sample(Example("instruct", "t", (Turn("user", "Hi"), Turn("assistant", "hello"))))


def test_text_only_conversation_first_in_a_mixed_batch(family, module):
    """The batch's tensors are the processor's own (Idefics3's processor cannot make them itself in this order: it
    judges the replacement offsets by the first row, so the collate asks for lists and makes the tensors), each
    row's labels are the row's collated alone, and the loss is transformers' own."""
    if family == "paligemma":
        pytest.skip("PaliGemma's processor takes no text-only row: test_paligemma_prompt_and_answer_... covers it")
    samples = [TEXT_ONLY, *vqa_samples(2)]
    batch = module.collate(samples)
    texts = [module.collate._render(s, prompt=False)[0] for s in samples]
    order = [1, 2, 0] if family == "idefics3" else [0, 1, 2]  # Idefics3's: the text-only row last, then put back
    expected = module.processor(text=[texts[i] for i in order], images=[list(samples[i].images) for i in order],
                                return_tensors="pt", padding=True, padding_side="right")
    back = torch.argsort(torch.tensor(order))
    expected = {k: v[back] if family == "idefics3" else v for k, v in expected.items()}  # one row per sample
    assert batch["input_ids"].tolist() == expected["input_ids"].tolist()
    media = {k: v for k, v in expected.items() if k not in MEDIA_KEYS_SKIPPED}
    assert batch["media"].keys() == media.keys() and "pixel_values" in media
    for key, tensor in media.items():
        assert batch["media"][key].dtype == tensor.dtype and torch.equal(batch["media"][key], tensor), key
    for row, sample in enumerate(samples):
        alone = module.collate([sample])["labels"][0]
        assert batch["labels"][row, : len(alone)].tolist() == alone.tolist()
        assert (batch["labels"][row, len(alone):] == -100).all()
    module.eval()
    with torch.no_grad():
        reference = module.model(**module._inputs(batch, prompt=False), labels=batch["labels"]).loss
        torch.testing.assert_close(module.training_loss(batch), reference)


def test_text_only_batch_runs_the_vision_tower_with_zero_weight(family, module):
    module.train()
    batch = module.collate([TEXT_ONLY])
    assert not any(k.startswith("pixel_values") for k in batch["media"])
    module.zero_grad()
    loss = module.training_loss(batch)
    with torch.no_grad():
        without_dummy = next_token_loss(module.model, module._inputs(batch, prompt=False), batch["labels"])
        plain = module.model(**module._inputs(batch, prompt=False), labels=batch["labels"]).loss
    assert loss.item() == without_dummy.item()  # the dummy adds exactly zero
    torch.testing.assert_close(loss.detach(), plain)  # and the loss is transformers' own
    loss.backward()
    projector = [p for n, p in module.named_parameters() if PROJECTORS[family] in n and p.requires_grad]
    assert projector and all(p.grad is not None for p in projector)  # reached: every rank reduces the same grads


def fit_trainer(root: Path, steps: int, **kwargs) -> Trainer:
    return Trainer(default_root_dir=root, max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


def test_fit_resume_test_predict_and_peft_export(family, tmp_path):
    data = vqa_samples(4)  # two batches an epoch: the checkpoint after two steps ends an epoch

    def loader(module):
        return DataLoader(data, batch_size=2, shuffle=False, collate_fn=module.collate)

    def new_module():
        return VisionLanguageModule(tiny_backbone(family), lm_adapter(family, dropout=0.1), max_new_tokens=3,
                                    metrics={"vqav2": VQAAccuracy()},
                                    optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))

    seed_everything(0)
    straight = new_module()
    # saved after validation, as the tiny configs save them: Lightning resumes those exactly
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, save_on_train_epoch_end=False)
    fit_trainer(tmp_path / "a", 4, callbacks=[every_epoch], limit_val_batches=1).fit(
        straight, loader(straight), loader(straight))
    checkpoint = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    assert set(saved["state_dict"]) == {n for n, p in straight.named_parameters() if p.requires_grad}
    seed_everything(0)
    resumed = new_module()
    fit_trainer(tmp_path / "b", 4, limit_val_batches=1).fit(resumed, loader(resumed), loader(resumed),
                                                            ckpt_path=checkpoint)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        if a.requires_grad:
            assert torch.equal(a, b), name

    tester = fit_trainer(tmp_path / "a", 1)
    (scores,) = tester.test(straight, loader(straight), verbose=False)
    assert "test/vqav2/VQAAccuracy" in scores
    predictions = [row for rows in tester.predict(straight, loader(straight)) for row in rows]
    assert [row["id"] for row in predictions] == [s.example.id for s in data]

    save_adapters(straight.model, tmp_path / "adapter")
    from peft import PeftModel

    base = tiny_backbone(family).build().model
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    straight.eval()
    batch = straight.collate(data[:2])
    with torch.no_grad():
        expected = straight.model(**straight._inputs(batch, prompt=False)).logits
        got = peft_model(**straight._inputs(batch, prompt=False)).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


CLIP_FEATURE_LAYER_TARGETS = r".*vision_tower.*layers\.0\..*\.(q_proj|v_proj|out_proj)"
VISION_TARGETS = {
    "qwen2_5_vl": r".*visual\.blocks.*\.(qkv|proj)",
    "qwen2_vl": r".*visual\.blocks.*\.(qkv|proj)",
    # LLaVA-NeXT reads the second-to-last layer (vision_feature_layer -2): the tiny tower's last layer is unused
    "llava_next": CLIP_FEATURE_LAYER_TARGETS,
    "llava_next_video": CLIP_FEATURE_LAYER_TARGETS,
    "idefics3": r".*vision_model.*layers.*\.(q_proj|v_proj|out_proj)",
    # the encoder layers' linears (SigLIP's pooling head is an nn.MultiheadAttention, whose out_proj it reads directly)
    "llava_onevision": r".*vision_tower.*layers.*\.(q_proj|v_proj|out_proj)",
    "smolvlm": r".*vision_model.*layers.*\.(q_proj|v_proj|out_proj)",
    "qwen3_vl": r".*visual\.blocks.*\.(qkv|proj)",
    "qwen3_vl_moe": r".*visual\.blocks.*\.(qkv|proj)",
    "glm4v": r".*visual\.blocks.*\.(qkv|proj)",
    "gemma3": r".*vision_tower.*layers.*\.(q_proj|v_proj|out_proj)",
    "internvl": r".*vision_tower.*layer\..*\.(q_proj|v_proj|projection_layer)",
    "mistral3": r".*vision_tower.*layers.*\.(q_proj|v_proj|o_proj)",
    "paligemma": r".*vision_tower.*layers.*\.(q_proj|v_proj|out_proj)",
    "minicpmv4_6": r".*vision_tower.*layers.*\.(q_proj|v_proj|out_proj)",
    "llava": CLIP_FEATURE_LAYER_TARGETS,
}


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_vision_tower_adapters_get_gradients_under_checkpointing(family, method):
    module = VisionLanguageModule(tiny_backbone(family), lm_adapter(family, method, targets=VISION_TARGETS[family]),
                                  gradient_checkpointing=True)
    module.train()
    assert module.model.is_gradient_checkpointing
    module.training_loss(module.collate(vqa_samples(2))).backward()
    adapted = [(n, p) for n, p in module.named_parameters() if p.requires_grad and ".lora_" in n]
    tower = f"model.{find_parts(module.model).vision_tower}."  # found from the model's structure
    assert adapted and all(tower in n for n, _ in adapted)
    # B starts at zero, so A's first gradient is zero by construction; B's (and DoRA's magnitude's) must not be
    receiving = [(n, p) for n, p in adapted if "lora_A" not in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in receiving), [
        n for n, p in receiving if p.grad is None or p.grad.abs().sum() == 0]


def video_sample(frame_times) -> Sample:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (4, 24, 32, 3), generator=g, dtype=torch.uint8)
    example = Example("msrvtt_qa", "v1", (Turn("user", "What is the man doing?"), Turn("assistant", "cooking")),
                      video=Path("video1.mp4"), references=("cooking",))
    return Sample(example, frames=frames, frame_times=frame_times)


@pytest.mark.parametrize("times, seconds_per_grid", [((0.0, 0.5, 1.0, 1.5), 1.0), (None, 2.0)])
def test_qwen_video_input_carries_the_frame_times(times, seconds_per_grid):
    module = VisionLanguageModule(tiny_backbone("qwen2_5_vl"), lm_adapter("qwen2_5_vl"))
    batch = module.collate([video_sample(times)])
    media = batch["media"]
    # 4 frames of 24 x 32 px, 4 px patches, 2 frames a temporal patch, 2 x 2 merged: grid (2, 6, 8), 24 tokens
    assert media["video_grid_thw"].tolist() == [[2, 6, 8]]
    video_pad = module.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert int((batch["input_ids"] == video_pad).sum()) == 2 * 6 * 8 // 4
    # 2 frames per temporal patch at 2 frames/s (the times) or at the default 1 frame/s
    assert media["second_per_grid_ts"].tolist() == [seconds_per_grid]
    assert torch.isfinite(module.training_loss(batch))


def test_qwen2_vl_video_is_the_processors_own_video_input():
    """Qwen2-VL has no frame times in its M-RoPE (no ``second_per_grid_ts``, unlike Qwen2.5-VL): its video input is
    the processor's own, frames as they are, and the loss is transformers' own over the reply."""
    module = VisionLanguageModule(tiny_backbone("qwen2_vl"), lm_adapter("qwen2_vl"))
    sample = video_sample((0.0, 0.5, 1.0, 1.5))
    batch = module.collate([sample])
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What is the man doing?\n"
            f"{SHORT_ANSWER_SUFFIX}<|im_end|>\n<|im_start|>assistant\ncooking<|im_end|>\n")
    expected = module.processor(text=[text], videos=[sample.frames], videos_kwargs={"do_sample_frames": False},
                                return_tensors="pt")
    assert batch["input_ids"].tolist() == expected["input_ids"].tolist()
    assert set(batch["media"]) == {"pixel_values_videos", "video_grid_thw"}
    assert batch["media"]["video_grid_thw"].tolist() == [[2, 6, 8]]  # as Qwen2.5-VL's: 24 tokens
    for key in batch["media"]:
        assert torch.equal(batch["media"][key], expected[key]), key
    supervised = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert module.tokenizer.decode(supervised) == "cooking<|im_end|>\n"
    module.eval()
    with torch.no_grad():
        reference = module.model(**module._inputs(batch, prompt=False), labels=batch["labels"]).loss
        torch.testing.assert_close(module.training_loss(batch), reference)


def test_onevision_video_frames_and_smolvlm_idefics3_frames_as_images():
    onevision = VisionLanguageModule(tiny_backbone("llava_onevision"), lm_adapter("llava_onevision"))
    batch = onevision.collate([video_sample(None)])
    assert batch["media"]["pixel_values_videos"].shape == (1, 4, 3, 16, 16)
    video = onevision.tokenizer.convert_tokens_to_ids("<video>")
    # a 16 px frame gives a 2 x 2 grid, pooled to 1 x 1 per frame, plus one newline token for the video
    assert int((batch["input_ids"] == video).sum()) == 4 * 1 + 1
    assert torch.isfinite(onevision.training_loss(batch))

    for family in ("smolvlm", "idefics3"):
        module = VisionLanguageModule(tiny_backbone(family), lm_adapter(family))
        batch = module.collate([video_sample(None)])
        assert batch["media"]["pixel_values"].shape[:2] == (1, 4)  # the 4 frames as 4 images
        image = module.tokenizer.convert_tokens_to_ids("<image>")
        assert int((batch["input_ids"] == image).sum()) == 4 * 4  # image_seq_len tokens per frame
        assert torch.isfinite(module.training_loss(batch))


# the newer families' video: the processor's video input (its own placeholder expansion: Qwen3-VL's timestamps,
# GLM's per-frame markers, InternVL's "Frame1:" lines), or the frames as images where the processor has no video
# processor (Gemma 3, Mistral 3)
NEW_FAMILY_VIDEO = {"qwen3_vl": "pixel_values_videos", "qwen3_vl_moe": "pixel_values_videos",
                    "glm4v": "pixel_values_videos", "internvl": "pixel_values", "gemma3": "pixel_values",
                    "mistral3": "pixel_values", "paligemma": "pixel_values", "minicpmv4_6": "pixel_values_videos"}


@pytest.mark.parametrize("name", sorted(NEW_FAMILY_VIDEO))
def test_newer_families_take_video_and_learn_only_the_reply(name):
    module = VisionLanguageModule(tiny_backbone(name), lm_adapter(name))
    sample = video_sample((0.0, 0.5, 1.0, 1.5))
    batch = module.collate([sample])
    assert NEW_FAMILY_VIDEO[name] in batch["media"]
    as_images = module.collate.video_as_images
    assert as_images == (name in ("gemma3", "mistral3", "paligemma"))
    if not as_images:  # the processor's own video input, as it encodes it alone
        text = module.collate._render(sample, prompt=False)[0]
        expected = module.processor(text=[text], videos=[sample.frames], return_tensors="pt",
                                    videos_kwargs={"do_sample_frames": False,
                                                   "video_metadata": [module.collate._metadata(sample)]})
        assert batch["input_ids"].tolist() == expected["input_ids"].tolist()
    supervised = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert module.tokenizer.decode(supervised).startswith("cooking")
    assert supervised[-1] == module.end_of_turn_id or module.tokenizer.decode(supervised[-1:]) == "\n"
    module.eval()
    with torch.no_grad():
        reference = module.model(**module._inputs(batch, prompt=False), labels=batch["labels"]).loss
        torch.testing.assert_close(module.training_loss(batch), reference)
    assert len(module.generate_answers(batch)) == 1


def test_llava_next_video_takes_the_video_input_and_learns_only_the_reply():
    module = VisionLanguageModule(tiny_backbone("llava_next_video"), lm_adapter("llava_next_video"), max_new_tokens=3)
    sample = video_sample(None)
    batch = module.collate([sample])
    assert batch["media"]["pixel_values_videos"].shape == (1, 4, 3, 16, 16)
    assert "pixel_values" not in batch["media"]
    video = module.tokenizer.convert_tokens_to_ids("<video>")
    # a 16 px frame: a 2 x 2 grid of 8 px patches (CLS dropped), average-pooled by 2 to 1 token a frame
    assert int((batch["input_ids"] == video).sum()) == 4
    supervised = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert module.tokenizer.decode(supervised) == module.tokenizer.decode(
        module.tokenizer(" cooking</s>", add_special_tokens=False)["input_ids"])
    module.eval()
    with torch.no_grad():
        reference = module.model(**module._inputs(batch, prompt=False), labels=batch["labels"]).loss
        torch.testing.assert_close(module.training_loss(batch), reference)
    question = Turn("user", "What is the man in the kitchen doing with the pan?")
    prompts = [Sample(Example("msrvtt_qa", "v2", sample.example.turns[:1], video=Path("v.mp4")), frames=sample.frames),
               Sample(Example("msrvtt_qa", "v3", (question,), video=Path("v.mp4")), frames=sample.frames.flip(0))]
    together = module.generate_answers(module.collate(prompts))
    assert together == [module.generate_answers(module.collate([p]))[0] for p in prompts]
    assert_batched_logits_equal_one_by_one(module, prompts)


QWEN3_MULTI_IMAGE_TEXT = (
    "<|im_start|>user\nLeft: <|vision_start|><|image_pad|><|vision_end|> right: "
    "<|vision_start|><|image_pad|><|vision_end|> same colour?<|im_end|>\n<|im_start|>assistant\nno<|im_end|>\n")
QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
MULTI_IMAGE_TEXT = {
    "llava": f"<s>{VICUNA_V1_SYSTEM} USER: Left: <image>\n right: <image>\n same colour? ASSISTANT: no</s>",
    "minicpmv4_6": QWEN_SYSTEM + "<|im_start|>user\nLeft: <|image_pad|> right: <|image_pad|> same colour?<|im_end|>\n"
                                 "<|im_start|>assistant\nno<|im_end|>\n",
    "qwen2_5_vl": QWEN_SYSTEM + QWEN3_MULTI_IMAGE_TEXT,
    "qwen2_vl": QWEN_SYSTEM + QWEN3_MULTI_IMAGE_TEXT,
    "qwen3_vl": QWEN3_MULTI_IMAGE_TEXT,
    "qwen3_vl_moe": QWEN3_MULTI_IMAGE_TEXT,
    "glm4v": "[gMASK]<sop><|user|>\nLeft: <|begin_of_image|><|image|><|end_of_image|> right: "
             "<|begin_of_image|><|image|><|end_of_image|> same colour?<|assistant|>\nno<|endoftext|>",
    "gemma3": "<s><start_of_turn>user\nLeft:<start_of_image>right:<start_of_image>same colour?<end_of_turn>\n"
              "<start_of_turn>model\nno<end_of_turn>\n",  # Gemma 3's template trims every text part
    "internvl": "<|im_start|>user\nLeft: <IMG_CONTEXT>\n right: <IMG_CONTEXT>\n same colour?<|im_end|>\n"
                "<|im_start|>assistant\nno<|im_end|>\n",
    "mistral3": "<s>[INST]Left: [IMG] right: [IMG] same colour?[/INST]no</s>",
    "llava_next": "[INST] Left: <image>\n right: <image>\n same colour? [/INST] no</s>",
    "llava_next_video": f"<s>{VICUNA_V1_SYSTEM} USER: Left: <image>\n right: <image>\n same colour? ASSISTANT: no</s>",
    "idefics3": "<|begin_of_text|>User: Left: <image> right: <image> same colour?<end_of_utterance>\nAssistant: no"
                "<end_of_utterance>\n",
    "llava_onevision": "<|im_start|>user\nLeft: <image>\n right: <image>\n same colour?<|im_end|>\n"
                       "<|im_start|>assistant\nno<|im_end|>\n",
    "smolvlm": "<|im_start|>User: Left: <image> right: <image> same colour?<end_of_utterance>\nAssistant: no"
               "<end_of_utterance>\n",
}


def test_several_images_stay_where_their_markers_are(family, module):
    example = Example("instruct", "m1", (Turn("user", "Left: <image> right: <image> same colour?"),
                                         Turn("assistant", "no")), images=(Path("a.jpg"), Path("b.jpg")))
    batch = module.collate([Sample(example, [RED, BLUE])])
    if family == "paligemma":  # its format puts every image before the prompt: the markers are taken out
        expected = module.processor(text=["<image><image>Left:  right:  same colour?"], images=[[RED, BLUE]],
                                    suffix=["no"], return_tensors="pt")
    else:
        expected = module.processor(text=[MULTI_IMAGE_TEXT[family]], images=[[RED, BLUE]], return_tensors="pt")
    assert batch["input_ids"][0].tolist() == expected["input_ids"][0].tolist()
    torch.testing.assert_close(batch["media"]["pixel_values"], expected["pixel_values"])


def test_llava_family_pads_images_to_square_with_the_mean_colour():
    """LLaVA-1.5's expand2square (pad the short side with the normalisation mean, then preprocess), here done by the
    Llava image processor's do_pad: the batch's pixels equal mmft's own pad_to_square followed by the processor with
    padding off."""
    from data_modules.media import pad_to_square

    module = VisionLanguageModule(tiny_backbone("llava"), lm_adapter("llava"))
    image_processor = module.processor.image_processor
    fill = tuple(int(255 * m) for m in image_processor.image_mean)
    expected = image_processor(images=[pad_to_square(RED, fill)], do_pad=False, return_tensors="pt")["pixel_values"]
    batch = module.collate([conversation(THREE_EXCHANGES[4:])])
    torch.testing.assert_close(batch["media"]["pixel_values"], expected)
    unpadded = image_processor(images=[RED], do_pad=False, return_tensors="pt")["pixel_values"]
    assert not torch.allclose(unpadded, expected)  # the 24 x 16 image is not square: padding changes it


def test_paligemma_prompt_and_answer_are_the_processors_own_format():
    """PaliGemma 2's published format, written by its processor: <image> x 16, <bos>, the question, a newline (all
    token type 0, the bidirectional prefix), then the answer and <eos> (type 1, supervised); a text-only
    conversation is the same without images; the prompt view is the prefix, and the loss is transformers' own."""
    module = VisionLanguageModule(tiny_backbone("paligemma"), lm_adapter("paligemma"), max_new_tokens=3)
    tokenizer = module.tokenizer
    one_turn = Sample(Example("instruct", "p1", (Turn("user", "What is it?"), Turn("assistant", "a red circle")),
                              images=(Path("p1.jpg"),)), [RED])
    segments = [("<image>" * 16 + "<s>What is it?\n", False), ("a red circle</s>", True)]
    text_only = [("<s>Hi\n", False), ("hello</s>", True)]
    batch = module.collate([one_turn, TEXT_ONLY])
    for row, pieces in enumerate((segments, text_only)):
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in pieces]
        expected = [t for piece in ids for t in piece]
        supervised = [t if answer else -100 for piece, (_, answer) in zip(ids, pieces) for t in piece]
        types = [int(answer) for piece, (_, answer) in zip(ids, pieces) for _ in piece]
        length = len(expected)
        assert batch["input_ids"][row, :length].tolist() == expected
        assert batch["labels"][row, :length].tolist() == supervised
        assert batch["token_type_ids"][row, :length].tolist() == types
        prompt = batch["prompt_input_ids"][row][batch["prompt_attention_mask"][row] == 1].tolist()
        assert prompt == ids[0] and not batch["prompt_token_type_ids"][row].any()
    own = module.processor(text=["<image>What is it?"], images=[[RED]], suffix=["a red circle"], return_tensors="pt")
    assert batch["input_ids"][0, :own["input_ids"].shape[1]].tolist() == own["input_ids"][0].tolist()
    torch.testing.assert_close(batch["media"]["pixel_values"], own["pixel_values"])
    assert module.end_of_turn_id == tokenizer.eos_token_id
    module.eval()
    with torch.no_grad():
        reference = module.model(**module._inputs(batch, prompt=False), labels=batch["labels"]).loss
        torch.testing.assert_close(module.training_loss(batch), reference)
    assert len(module.generate_answers(batch)) == 2
    two = Example("instruct", "p2", (Turn("user", "a?"), Turn("assistant", "b"), Turn("user", "c?"),
                                     Turn("assistant", "d")), images=(Path("p2.jpg"),))
    verdict = module.collate.check_length(two, training=True)
    assert verdict.problem.startswith("instruct example p2: 2 questions; this model (a prefix-LM")


THREE_EXCHANGES = (Turn("user", "What is it?"), Turn("assistant", "a red circle"), Turn("user", "And the square?"),
                   Turn("assistant", "blue"), Turn("user", "Which one is bigger?"), Turn("assistant", "the circle"))


def conversation(turns, images=(RED,), example_id="long") -> Sample:
    return Sample(Example("instruct", example_id, tuple(turns), images=tuple(Path(f"{i}.jpg") for i in
                                                                               range(len(images)))), list(images))


def test_over_long_conversations_lose_their_earliest_exchanges(family, module):
    """With max_length between the last two exchanges' length and the whole conversation's, the batch is the one
    of the last two exchanges alone: the image moves to the first turn kept, the last answer and its end of turn
    stay supervised, the prompt view is cut the same way; the DataModule's length check counts it as truncated."""
    collate = module.collate
    if family == "paligemma":  # one question a conversation: refused whole, and so counted by the length check
        with pytest.raises(CollateError, match=r"instruct example long: 3 questions"):
            collate([conversation(THREE_EXCHANGES)])
        assert "3 questions" in collate.check_length(conversation(THREE_EXCHANGES).example, training=True).problem
        return
    whole, last_two, last_one = (collate([conversation(THREE_EXCHANGES[k:])]) for k in (0, 2, 4))
    assert whole["input_ids"].shape[1] > last_two["input_ids"].shape[1] > last_one["input_ids"].shape[1]
    original = collate.max_length
    try:
        for kept, expected in ((last_two, 2), (last_one, 4)):
            collate.max_length = kept["input_ids"].shape[1]  # exactly the length of what is kept
            batch = collate([conversation(THREE_EXCHANGES), conversation(THREE_EXCHANGES[4:], example_id="short")])
            reference = collate([conversation(THREE_EXCHANGES[expected:]), conversation(THREE_EXCHANGES[4:],
                                                                                         example_id="short")])
            for key in ("input_ids", "labels", "prompt_input_ids", "attention_mask"):
                assert batch[key].tolist() == reference[key].tolist(), key
            for key, tensor in reference["media"].items():
                assert torch.equal(batch["media"][key], tensor), key
            supervised = batch["labels"][0][batch["labels"][0] != -100].tolist()
            assert module.tokenizer.decode(supervised).endswith(module.tokenizer.decode(
                reference["labels"][0][reference["labels"][0] != -100].tolist()))
        collate.max_length = whole["input_ids"].shape[1]
        assert collate([conversation(THREE_EXCHANGES)])["input_ids"].tolist() == whole["input_ids"].tolist()
        example = conversation(THREE_EXCHANGES).example  # the check estimates visual tokens with a probe image
        collate.max_length = collate._estimated_length(example, THREE_EXCHANGES[2:], training=True)
        verdict = collate.check_length(example, training=True)
        assert verdict.problem is None and verdict.truncated
        assert not collate.check_length(conversation(THREE_EXCHANGES[4:]).example, training=True).truncated
    finally:
        collate.max_length = original


def test_a_conversation_that_cannot_be_shortened_enough_is_named(family, module):
    collate = module.collate
    last_one = collate([conversation(THREE_EXCHANGES[4:])])["input_ids"].shape[1]
    if family == "paligemma":
        collate.max_length, original = last_one - 1, collate.max_length
        try:
            with pytest.raises(CollateError, match=r"instruct example long: \d+ tokens with only its last question "
                                                   r"and answer .*max_length="):
                collate([conversation(THREE_EXCHANGES[4:])])
        finally:
            collate.max_length = original
        return
    marked = (Turn("user", "Left: <image> right: <image> same colour?"), Turn("assistant", "no"),
              Turn("user", "And now?"), Turn("assistant", "yes"))
    several = collate([conversation(marked, images=(RED, BLUE))])["input_ids"].shape[1]
    original = collate.max_length
    try:
        collate.max_length = last_one - 1
        with pytest.raises(CollateError, match=r"instruct example long: \d+ tokens with only its last question and "
                                               r"answer .*max_length="):
            collate([conversation(THREE_EXCHANGES)])
        collate.max_length = 5  # the length check estimates with a probe image: far too short for any family
        verdict = collate.check_length(conversation(THREE_EXCHANGES).example, training=True)
        assert "instruct example long: about" in verdict.problem
        collate.max_length = several - 1  # images placed by markers: the conversation is never shortened
        with pytest.raises(CollateError, match=r"its whole conversation \(several images"):
            collate([conversation(marked, images=(RED, BLUE))])
    finally:
        collate.max_length = original


@pytest.mark.parametrize("name", FAMILIES)
def test_local_checkpoint_folder_loads_offline_with_no_table_entry(name, tmp_path, monkeypatch):
    """A checkpoint folder needs nothing from mmft's family table: end of turn from its template and generation
    config, processor and template its own, parts from its structure."""
    from mmft.models import HFVisionLanguage, vlm_backbones

    built = tiny_backbone(name, seed=1).build()
    built.model.save_pretrained(tmp_path)
    built.processor.save_pretrained(tmp_path)
    monkeypatch.setattr(vlm_backbones, "FAMILIES", {})
    loaded = VisionLanguageModule(HFVisionLanguage(path=str(tmp_path)), lm_adapter(name))
    monkeypatch.undo()
    assert loaded.base_model_name_or_path == str(tmp_path)
    reference = VisionLanguageModule(tiny_backbone(name, seed=1), lm_adapter(name))
    assert loaded.reply_end == reference.reply_end
    assert loaded.parts == reference.parts
    batch = reference.collate(vqa_samples(2))
    assert torch.equal(loaded.collate(vqa_samples(2))["input_ids"], batch["input_ids"])  # same processor, template
    loaded.eval(), reference.eval()
    with torch.no_grad():
        got = loaded.model(**loaded._inputs(batch, prompt=False)).logits
        expected = reference.model(**reference._inputs(batch, prompt=False)).logits
    torch.testing.assert_close(got, expected)


def test_recipe_sets_the_checkpoints_image_and_video_resolution(tmp_path):
    """Qwen2.5-VL's fine-tuning scripts set min / max pixels: the folder's processors take them, and a misspelt
    setting (which transformers would drop silently) is refused with its config key."""
    from mmft.models import HFVisionLanguage
    from mmft.models.vlm_backbones import BackboneConfigError

    built = tiny_backbone("qwen2_5_vl").build()
    built.model.save_pretrained(tmp_path)
    built.processor.save_pretrained(tmp_path)
    video = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)

    def grids(processor) -> tuple[list, list]:
        image = processor.image_processor(images=[Image.new("RGB", (64, 64))], return_tensors="pt")
        frames = processor.video_processor(videos=[video], do_sample_frames=False, return_tensors="pt")
        return image["image_grid_thw"].tolist(), frames["video_grid_thw"].tolist()

    # saved: 256 to 1024 pixels, 4 px patches; a 64 x 64 image shrinks to 32 x 32, a 16 x 16 frame stays
    assert grids(built.processor) == ([[1, 8, 8]], [[1, 4, 4]])
    # the recipe's values: the image shrinks to 16 x 16 (256 pixels), the frames grow to 48 x 48 (2304)
    recipe = HFVisionLanguage(str(tmp_path), image_processor={"max_pixels": 16 * 16},
                              video_processor={"min_pixels": 48 * 48, "max_pixels": 48 * 48}).build()
    assert grids(recipe.processor) == ([[1, 4, 4]], [[1, 12, 12]])
    assert recipe.processor.chat_template == built.processor.chat_template
    with pytest.raises(BackboneConfigError, match=r"backbone\.init_args\.image_processor\.max_pixel: .*max_pixels"):
        HFVisionLanguage(str(tmp_path), image_processor={"max_pixel": 256}).build()


def test_an_image_the_processor_rejects_is_a_named_error_or_a_counted_skip(tmp_path):
    """Qwen2.5-VL's processor refuses an image of aspect ratio 200 or more: under on_error: raise the error names the
    record, under skip the record is left out and counted and the rest of its batch trains."""
    import json

    from data_modules import LlavaInstruct, MultitaskDataModule
    from data_modules.datasets import REJECTED_MEDIA
    from mmft.models.chat_collate import RejectedMediaError

    Image.new("RGB", (3000, 4), (200, 10, 10)).save(tmp_path / "thin.png")
    Image.new("RGB", (32, 32), (10, 10, 200)).save(tmp_path / "square.png")
    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "blue"}]
    records = [{"id": name, "image": f"{name}.png", "conversations": turns} for name in ("square", "thin")]
    records.append({**records[0], "id": "square2"})
    (tmp_path / "data.json").write_text(json.dumps(records))
    module = VisionLanguageModule(tiny_backbone("qwen2_5_vl"), lm_adapter("qwen2_5_vl"))

    def batches(on_error: str) -> tuple[MultitaskDataModule, list]:
        data = MultitaskDataModule(train=[LlavaInstruct(tmp_path / "data.json", tmp_path)], batch_size=3,
                                   on_error=on_error, collate_fn=module.collate)
        data.setup("fit")
        return data, [data.on_before_batch_transfer(batch, 0) for batch in data.train_dataloader()]

    with pytest.raises(RejectedMediaError, match=r"data\.json#1 \(id thin\): the processor rejects its media "
                                                 r"\(images 3000x4\): absolute aspect ratio must be smaller than 200"):
        batches("raise")
    data, trained = batches("skip")
    assert [sorted(batch["ids"]) for batch in trained] == [["square", "square2"]]
    assert data.media_skips.counts == {REJECTED_MEDIA: 1}
    module.training_loss(trained[0])  # the rest of the batch trains


def test_a_checkpoint_folder_mmft_cannot_train_is_a_named_error(tmp_path, monkeypatch):
    """A model type that is not image-text-to-text, a processor with no chat template (and no family template to
    fall back on), and a template that never writes a reply each stop with a message naming the folder."""
    from transformers import LlamaConfig

    from mmft.models import HFVisionLanguage, vlm_backbones
    from mmft.models.reply_end import ReplyEndError
    from mmft.models.vlm_backbones import BackboneConfigError

    text_only = tmp_path / "llama"
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4).save_pretrained(
        text_only)
    with pytest.raises(BackboneConfigError, match=r"llama.*model_type 'llama' is not an image-text-to-text model"):
        HFVisionLanguage(path=str(text_only)).build()

    folder = tmp_path / "qwen3_vl"
    built = tiny_backbone("qwen3_vl").build()
    built.model.save_pretrained(folder)
    built.processor.chat_template = None
    built.processor.save_pretrained(folder)
    monkeypatch.setattr(vlm_backbones, "FAMILIES", {})
    with pytest.raises(BackboneConfigError, match=r"qwen3_vl: the processor has no chat template.*chat_template"):
        HFVisionLanguage(path=str(folder)).build()
    # the template given in the config serves such a checkpoint (here the family's, so the batches are the tiny one's)
    template = family_template(TINY_FAMILIES["qwen3_vl"])
    given = VisionLanguageModule(HFVisionLanguage(path=str(folder), chat_template=template), lm_adapter("qwen3_vl"))
    reference = VisionLanguageModule(tiny_backbone("qwen3_vl"), lm_adapter("qwen3_vl"))
    batch, expected = given.collate(vqa_samples(2)), reference.collate(vqa_samples(2))
    assert batch["input_ids"].tolist() == expected["input_ids"].tolist()
    no_reply = "{% for m in messages if m['role'] == 'user' %}{{ m['content'][0]['text'] }}{% endfor %}"
    with pytest.raises(ReplyEndError, match=r"qwen3_vl: the chat template does not write an assistant reply"):
        VisionLanguageModule(HFVisionLanguage(path=str(folder), chat_template=no_reply), lm_adapter("qwen3_vl"))
