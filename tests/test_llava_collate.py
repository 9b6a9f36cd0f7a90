"""The LLaVA collate: template text, label masking at exact positions, image tokens, padding, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor

from data_modules.records import Example, Sample, Turn
from mmft.models.llava_collate import (
    IGNORE_INDEX,
    SHORT_ANSWER_SUFFIX,
    CollateError,
    HFImageTransform,
    LlavaCollate,
)
from mmft.models.templates import TemplateError

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "configs" / "tiny" / "tokenizer"
IMAGE_TOKENS = 4

# LLaVA's vicuna_v1 system prompt (its conversation.py, conv_vicuna_v1), written out here, not taken from mmft
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions.")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


def make_collate(tokenizer, **kwargs) -> LlavaCollate:
    processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    return LlavaCollate(tokenizer, HFImageTransform(processor), IMAGE_TOKENS, **kwargs)


def image(width: int = 20, height: int = 12, color=(200, 10, 10)) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def sample(turns, task="llava_instruct", images=1, id_="q1", references=()) -> Sample:
    example = Example(
        task=task,
        id=id_,
        turns=tuple(Turn(role, text) for role, text in turns),
        images=tuple(Path(f"img{k}.jpg") for k in range(images)),
        references=tuple(references),
        source=f"test.json#{id_}",
    )
    return Sample(example, [image() for _ in range(images)])


def tokens(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def test_two_round_conversation_labels_exactly_the_replies_and_their_eos(tokenizer):
    collate = make_collate(tokenizer)
    conversation = [("user", "What color is the circle?"), ("assistant", "red"),
                    ("user", "Is it a square?"), ("assistant", "No.")]
    batch = collate([sample(conversation)])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    # the text, written out by hand (LLaVA-1.5 conv_vicuna_v1), then tokenised piece by piece
    before_image = f"{VICUNA_V1_SYSTEM} USER: "
    round_1 = "\nWhat color is the circle? ASSISTANT:"
    round_2 = "USER: Is it a square? ASSISTANT:"

    def enc(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    image_id = tokenizer.convert_tokens_to_ids("<image>")
    eos = tokenizer.eos_token_id
    expected_ids = ([tokenizer.bos_token_id] + enc(before_image) + [image_id] * IMAGE_TOKENS + enc(round_1)
                    + enc(" red") + [eos] + enc(round_2) + enc(" No.") + [eos])
    assert ids == expected_ids
    reply_1 = 1 + len(enc(before_image)) + IMAGE_TOKENS + len(enc(round_1))
    reply_2 = reply_1 + len(enc(" red")) + 1 + len(enc(round_2))
    supervised = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert supervised == [reply_1, reply_1 + 1, reply_2, reply_2 + 1, reply_2 + 2]  # " red</s>", " No.</s>"
    assert [labels[i] for i in supervised] == [ids[i] for i in supervised]
    assert tokens(tokenizer, [ids[i] for i in supervised]) == ["Ġred", "</s>", "ĠNo", ".", "</s>"]


def test_prompt_view_is_left_padded_and_ends_with_the_generation_prompt(tokenizer):
    collate = make_collate(tokenizer)
    short = sample([("user", "What shape is shown?"), ("assistant", "circle")], task="vqav2", id_="a",
                   references=["circle"] * 10)
    long = sample([("user", "Is there a triangle in the picture?"), ("assistant", "no")], task="vqav2", id_="b",
                  references=["no"] * 10)
    batch = collate([short, long])
    prompt, mask = batch["prompt_input_ids"], batch["prompt_attention_mask"]
    assert mask[:, -1].tolist() == [1, 1]  # left padding: every prompt ends at the last column
    assert mask[0].tolist() == sorted(mask[0].tolist())
    text = tokenizer.decode(prompt[0][mask[0].bool()], skip_special_tokens=False)
    expected = (f"<s>{VICUNA_V1_SYSTEM} USER: " + "<image>" * IMAGE_TOKENS
                + f"\nWhat shape is shown?\n{SHORT_ANSWER_SUFFIX} ASSISTANT:")
    assert text == expected
    assert batch["ids"] == ["a", "b"] and batch["tasks"] == ["vqav2", "vqav2"]
    assert batch["references"][1] == ["no"] * 10
    # the training view carries the same instruction (LLaVA-1.5 trains VQA data with it)
    train_text = tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert f"What shape is shown?\n{SHORT_ANSWER_SUFFIX} ASSISTANT: circle</s>" in train_text
    assert batch["attention_mask"][:, 0].tolist() == [1, 1]  # right padding for training


def test_instructions_follow_the_task(tokenizer):
    collate = make_collate(tokenizer, instructions={"gqa": "Short answer."})
    batch = collate([sample([("user", "Which color?"), ("assistant", "red")], task="gqa")])
    assert "Which color?\nShort answer. ASSISTANT:" in tokenizer.decode(batch["prompt_input_ids"][0])
    batch = collate([sample([("user", "Which color?"), ("assistant", "red")], task="vqav2")])
    assert "Which color? ASSISTANT:" in tokenizer.decode(batch["prompt_input_ids"][0])


def test_images_are_padded_to_square_with_the_mean_colour_then_preprocessed(tokenizer):
    collate = make_collate(tokenizer)
    processor = collate.image_transform.processor
    wide = Image.new("RGB", (20, 10), (255, 0, 0))
    batch = collate([Sample(sample([("user", "q"), ("assistant", "a")]).example, [wide])])
    square = Image.new("RGB", (20, 20), collate.image_transform.fill)
    square.paste(wide, (0, 5))
    expected = processor(images=[square], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["pixel_values"], expected)
    # LLaVA-1.5's expand2square colour, tuple(int(x * 255) for x in image_mean): truncated, not rounded
    assert processor.image_mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert collate.image_transform.fill == (122, 116, 104)


def test_text_only_examples_have_no_image_tokens_or_pixels(tokenizer):
    collate = make_collate(tokenizer)
    batch = collate([sample([("user", "How many corners does a square have?"), ("assistant", "Four.")], images=0)])
    assert "pixel_values" not in batch
    assert tokenizer.convert_tokens_to_ids("<image>") not in batch["input_ids"][0].tolist()


def test_unanswered_examples_give_only_the_generation_view(tokenizer):
    collate = make_collate(tokenizer)
    batch = collate([sample([("user", "What color is the background?")], task="vqav2")])
    assert "labels" not in batch and "input_ids" not in batch
    assert batch["prompt_input_ids"].shape[0] == 1


def supervised_text(tokenizer, batch, row=0) -> str:
    labels = batch["labels"][row]
    return tokenizer.decode(labels[labels != IGNORE_INDEX].tolist())


def test_an_over_long_conversation_loses_its_earliest_exchanges_never_the_answer(tokenizer):
    conversation = [("user", "Describe the picture in detail please."), ("assistant", "A red circle on a grey field."),
                    ("user", "And the shape's colour?"), ("assistant", "It is red.")]
    full = make_collate(tokenizer)([sample(conversation)])
    last_only = make_collate(tokenizer)([sample(conversation[2:])])
    length, needed = full["input_ids"].shape[1], last_only["input_ids"].shape[1]
    collate = make_collate(tokenizer, max_length=length - 1)
    batch = collate([sample(conversation)])
    # exactly the last exchange, with the image before it, and the reply's end-of-turn token still supervised
    assert torch.equal(batch["input_ids"], last_only["input_ids"]) and batch["input_ids"].shape[1] == needed
    assert supervised_text(tokenizer, batch) == " It is red." + tokenizer.eos_token
    assert batch["labels"][0, needed - 1] == tokenizer.eos_token_id
    assert (batch["input_ids"][0] == collate.image_token_id).sum() == IMAGE_TOKENS
    assert collate.check_length(sample(conversation).example, training=True) == (True, None)
    assert make_collate(tokenizer).check_length(sample(conversation).example, training=True) == (False, None)


def test_an_answer_that_would_be_cut_makes_the_example_unusable_not_silently_empty(tokenizer):
    conversation = [("user", "What color is the circle?"), ("assistant", "The answer is red.")]
    full = make_collate(tokenizer)([sample(conversation)])
    prompt_length = full["prompt_input_ids"].shape[1]
    collate = make_collate(tokenizer, max_length=full["input_ids"].shape[1] - 1)  # would cut the reply's EOS
    example = sample(conversation).example
    verdict = collate.check_length(example, training=True)
    assert not verdict.truncated and "test.json#q1: " in verdict.problem and "max_length=" in verdict.problem
    with pytest.raises(CollateError, match=r"test.json#q1: \d+ tokens with only its last question and answer"):
        collate.encode(example, 1)
    # as an evaluation example its prompt still fits: the batch holds the generation view only
    assert collate.check_length(example, training=False) == (False, None)
    batch = collate([sample(conversation)])
    assert "labels" not in batch and batch["prompt_input_ids"].shape[1] == prompt_length
    tight = make_collate(tokenizer, max_length=prompt_length - 1)
    assert "its last question (images" in tight.check_length(example, training=False).problem


def test_bad_conversations_name_the_record(tokenizer):
    collate = make_collate(tokenizer)
    with pytest.raises(TemplateError, match=r"test.json#q1: turn 1 has role 'user'"):
        collate([sample([("user", "a"), ("user", "b")])])
    broken = sample([("user", "q"), ("assistant", "a")])
    with pytest.raises(CollateError, match="1 image paths but 0 decoded images"):
        collate([Sample(broken.example, [])])


def test_chat_template_marks_assistant_replies(tokenizer):
    chat = AutoTokenizer.from_pretrained(TOKENIZER)
    chat.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if m['role'] == 'assistant' %}</s>{% endif %}"
        "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    collate = make_collate(chat, template="chat_template")
    batch = collate([sample([("user", "What color is it?"), ("assistant", "red")], images=0)])
    labels = batch["labels"][0]
    assert tokens(chat, labels[labels != IGNORE_INDEX]) == ["Ġred", "</s>", "Ċ"]
    assert chat.decode(batch["prompt_input_ids"][0]).endswith("user: What color is it?\nassistant:")
    with pytest.raises(TemplateError, match="has none"):
        make_collate(tokenizer, template="chat_template")([sample([("user", "q"), ("assistant", "a")])])


def test_collate_pickles_for_dataloader_workers(tokenizer):
    collate = make_collate(tokenizer)
    clone = pickle.loads(pickle.dumps(collate))
    batch = [sample([("user", "What shape is shown?"), ("assistant", "circle")])]
    assert torch.equal(clone(batch)["input_ids"], collate(batch)["input_ids"])
