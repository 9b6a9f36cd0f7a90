"""What differs between transformers' image-text-to-text families, in one table: the classes that build a model and
its processor from parts, the special tokens a tokenizer needs, the end-of-turn token, and a chat template.

Only tiny models built from a config need this table (a checkpoint folder carries its own classes, processor and
template). Chat templates: SmolVLM's is transformers' own constant; the others follow each family's published
format (ChatML with Qwen's vision tokens for Qwen2-VL / Qwen2.5-VL, ChatML with ``<image>`` / ``<video>`` for
LLaVA-OneVision, Mistral's ``[INST]`` for LLaVA-NeXT, vicuna_v1 for LLaVA-NeXT-Video-7B, which LLaVA-NeXT's video
code trains with, Idefics3-8B-Llama3's ``User:`` / ``Assistant:`` turns ending in ``<end_of_utterance>``), written
here and rendering media parts where they stand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .templates import VICUNA_V1_SYSTEM


def _chatml(image: str, video: str) -> str:
    """ChatML (``<|im_start|>role\n ... <|im_end|>\n``) with media parts written where they stand."""
    return (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        f"{{% if part['type'] == 'image' %}}{{{{ '{image}' }}}}"
        f"{{% elif part['type'] == 'video' %}}{{{{ '{video}' }}}}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


CHATML_QWEN_VL = _chatml("<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>")
CHATML_ONEVISION = _chatml("<image>\\n", "<video>\\n")
MISTRAL_INST = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% elif part['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{{ ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'][0]['text'] + '</s>' }}{% endif %}"
    "{% endfor %}"
)

VICUNA_V1_MEDIA = (
    f'{{{{ "{VICUNA_V1_SYSTEM} " }}}}'
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\\n' }}{% elif part['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{{ ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'][0]['text'] + '</s>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

IDEFICS3 = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def smolvlm_template() -> str:
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    return DEFAULT_CHAT_TEMPLATE


@dataclass(frozen=True)
class Family:
    """One image-text-to-text family: class names in ``transformers``, tokens, module names, template.

    ``token_ids`` maps a config field to the special token whose id it takes; ``end_of_turn`` is the token that ends
    an assistant reply (generation stops there); ``video_as_images`` families take a video as its frames, each an
    image part (SmolVLM, Idefics3).
    """

    model_class: str
    config_class: str
    processor_class: str
    image_processor_class: str
    video_processor_class: str | None
    text_model_type: str
    vision_model_type: str
    special_tokens: tuple[str, ...]
    token_ids: dict[str, str]
    end_of_turn: str
    chat_template: str
    video_as_images: bool = False
    config_defaults: dict[str, Any] = field(default_factory=dict)


QWEN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_TOKEN_IDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                  "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}

FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(
        "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig", "Qwen2_5_VLProcessor", "Qwen2VLImageProcessor",
        "Qwen2VLVideoProcessor", "qwen2_5_vl_text", "qwen2_5_vl", QWEN_TOKENS, QWEN_TOKEN_IDS, "<|im_end|>",
        CHATML_QWEN_VL,
    ),
    "qwen2_vl": Family(
        "Qwen2VLForConditionalGeneration", "Qwen2VLConfig", "Qwen2VLProcessor", "Qwen2VLImageProcessor",
        "Qwen2VLVideoProcessor", "qwen2_vl_text", "qwen2_vl", QWEN_TOKENS, QWEN_TOKEN_IDS, "<|im_end|>",
        CHATML_QWEN_VL,
    ),
    "llava_onevision": Family(
        "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionConfig", "LlavaOnevisionProcessor",
        "LlavaOnevisionImageProcessor", "LlavaOnevisionVideoProcessor", "qwen2", "siglip_vision_model",
        ("<|im_start|>", "<|im_end|>", "<image>", "<video>"),
        {"image_token_id": "<image>", "video_token_id": "<video>"}, "<|im_end|>",
        CHATML_ONEVISION,
        config_defaults={"vision_feature_layer": -1},
    ),
    "llava_next": Family(
        "LlavaNextForConditionalGeneration", "LlavaNextConfig", "LlavaNextProcessor", "LlavaNextImageProcessor",
        None, "llama", "clip_vision_model", ("<image>",), {"image_token_id": "<image>"}, "</s>",
        MISTRAL_INST,
    ),
    "llava_next_video": Family(
        "LlavaNextVideoForConditionalGeneration", "LlavaNextVideoConfig", "LlavaNextVideoProcessor",
        "LlavaNextImageProcessor", "LlavaNextVideoVideoProcessor", "llama", "clip_vision_model",
        ("<image>", "<video>"), {"image_token_id": "<image>", "video_token_id": "<video>"}, "</s>",
        VICUNA_V1_MEDIA,
    ),
    "idefics3": Family(
        "Idefics3ForConditionalGeneration", "Idefics3Config", "Idefics3Processor", "Idefics3ImageProcessor", None,
        "llama", "idefics3_vision",
        ("<|begin_of_text|>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"),
        {"image_token_id": "<image>"}, "<end_of_utterance>", IDEFICS3, video_as_images=True,
    ),
    "smolvlm": Family(
        "SmolVLMForConditionalGeneration", "SmolVLMConfig", "SmolVLMProcessor", "SmolVLMImageProcessor",
        "SmolVLMVideoProcessor", "llama", "smolvlm_vision",
        ("<|im_start|>", "<image>", "<video>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"),
        {"image_token_id": "<image>"}, "<end_of_utterance>", "smolvlm", video_as_images=True,
    ),
}


def family_template(family: Family) -> str:
    """The family's chat template text (SmolVLM's is read from transformers)."""
    return smolvlm_template() if family.chat_template == "smolvlm" else family.chat_template


def get_family(name: str, key: str) -> Family:
    """The family called ``name``; an unknown one is an error naming ``key`` and the known families."""
    if name not in FAMILIES:
        raise ValueError(f"{key}={name!r}: unknown family; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
