"""What a checkpoint cannot say about transformers' image-text-to-text families, in one table: how to build a tiny
model from a config (the special tokens its tokenizer needs, the config fields that take their ids, the token that
ends a reply) and a chat template. Classes come from transformers' Auto tables.

A checkpoint folder needs no entry (it carries its classes, processor and template); an entry's template serves a
checkpoint that ships none. Chat templates: SmolVLM's is transformers' own constant; the others follow each family's
published format (ChatML with Qwen's vision tokens, with Qwen2-VL / Qwen2.5-VL Instruct's default system turn and
without it for Qwen3-VL; ChatML with ``<image>`` / ``<video>`` for LLaVA-OneVision and ``<IMG_CONTEXT>`` for
InternVL's -hf checkpoints; Mistral's ``[INST]`` for LLaVA-NeXT and Mistral 3; vicuna_v1 for LLaVA-NeXT-Video-7B,
which LLaVA-NeXT's video code trains with; Idefics3-8B-Llama3's ``User:`` / ``Assistant:`` turns; Gemma 3's
``<start_of_turn>`` turns; GLM-4.1V's ``<|user|>`` / ``<|assistant|>``; MiniCPM-V 4.6's ChatML with Qwen's default
system turn), rendering media parts where they stand.
PaliGemma 2 has none: its processor writes its prompt-and-answer format.
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
    # LLaVA's text starts with the tokenizer's BOS (its Llama tokenizer adds one); written here, so a tokenizer
    # that adds none (the tiny one) gets the same ids
    f'{{{{ bos_token + "{VICUNA_V1_SYSTEM} " }}}}'
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


CHATML_QWEN_VL_SYSTEM = (
    # Qwen2-VL / Qwen2.5-VL Instruct: a default system turn when the conversation has none
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}" + CHATML_QWEN_VL
)
# InternVL's Hugging Face checkpoints (InternVL3 / 3.5 "-hf"): ChatML, no default system turn, <IMG_CONTEXT> or
# <video> then a newline for each media part
CHATML_INTERNVL = _chatml("<IMG_CONTEXT>\\n", "<video>\\n")
GEMMA3 = (
    # Gemma 3 instruction-tuned: <bos>, turns "user" / "model", a system text folded into the first user turn,
    # text parts trimmed, an image part written as <start_of_image> (the processor expands it)
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{{ '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
MISTRAL3 = (
    # Mistral-Small-3.1 Instruct's turns: <s>[INST]...[/INST]reply</s>, [IMG] where an image part stands. The
    # published template adds a default system prompt carrying the current date; mmft leaves it out (see README)
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST]' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '[IMG]' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{{ '[/INST]' }}"
    "{% else %}{{ message['content'][0]['text'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
GLM4V = (
    # GLM-4.1V: [gMASK]<sop>, <|user|> and <|assistant|> turns, media between begin / end markers; no end-of-turn
    # token after a reply (the collate adds the tokenizer's end of text, which generation stops at)
    "[gMASK]<sop>{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<|user|>\\n' }}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|begin_of_image|><|image|><|end_of_image|>' }}"
    "{% elif part['type'] == 'video' %}{{ '<|begin_of_video|><|video|><|end_of_video|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'][0]['text'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def smolvlm_template() -> str:
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    return DEFAULT_CHAT_TEMPLATE


@dataclass(frozen=True)
class Family:
    """What a checkpoint cannot say about one image-text-to-text family: how to build a tiny one from its config,
    and its chat template. Classes come from transformers' Auto tables under the family's ``model_type``.

    ``special_tokens`` are added to the tiny tokenizer; ``named_tokens`` become tokenizer attributes that some
    processors read (InternVL's ``start_image_token``, Gemma 3's ``boi_token``); ``token_ids`` maps a config field
    to the special token whose id it takes; ``end_of_turn`` ends a reply of the tiny model (its generation config's
    end of sequence); ``video_as_images`` families take a video as its frames, each an image part (SmolVLM,
    Idefics3); ``processor_type`` is the ``model_type`` whose processor parts the family shares.
    """

    special_tokens: tuple[str, ...]
    token_ids: dict[str, str]
    end_of_turn: str
    chat_template: str | None
    named_tokens: dict[str, str] = field(default_factory=dict)
    video_as_images: bool = False
    config_defaults: dict[str, Any] = field(default_factory=dict)
    processor_type: str | None = None


QWEN_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_TOKEN_IDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                  "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}
GEMMA3_NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                  "video_token": "<video>"}
GLM4V_TOKENS = ("[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|endoftext|>", "<|begin_of_image|>",
                "<|end_of_image|>", "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>")

# MiniCPM-V 4.6 (Qwen3.5 text): ChatML with Qwen's default system turn (as LLaMA-Factory's minicpm_v_4_6 template);
# each image or video part is the tokenizer's placeholder, which the processor expands to <image_id>k</image_id>
# <image>...</image> and its slices
CHATML_MINICPMV = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}" + _chatml("<|image_pad|>", "<|video_pad|>")
)
MINICPMV_NAMED = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
                  "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
                  "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>"}

FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(QWEN_TOKENS, QWEN_TOKEN_IDS, "<|im_end|>", CHATML_QWEN_VL_SYSTEM),
    "qwen2_vl": Family(QWEN_TOKENS, QWEN_TOKEN_IDS, "<|im_end|>", CHATML_QWEN_VL_SYSTEM),
    "qwen3_vl": Family(QWEN_TOKENS, QWEN_TOKEN_IDS, "<|im_end|>", CHATML_QWEN_VL),
    "qwen3_vl_moe": Family(QWEN_TOKENS, QWEN_TOKEN_IDS, "<|im_end|>", CHATML_QWEN_VL, processor_type="qwen3_vl"),
    "llava_onevision": Family(
        ("<|im_start|>", "<|im_end|>", "<image>", "<video>"),
        {"image_token_id": "<image>", "video_token_id": "<video>"}, "<|im_end|>", CHATML_ONEVISION,
        config_defaults={"vision_feature_layer": -1},
    ),
    # LLaVA-1.5 (Hugging Face Llava checkpoints and the timm layout): vicuna_v1, as LLaVA-1.5 trains; images padded
    # to square with the mean colour by the processor (image_aspect_ratio: pad) when the recipe sets do_pad; a video
    # as its frames, one <image> each (LLaVA-1.5 has no video input)
    "llava": Family(("<image>",), {"image_token_id": "<image>"}, "</s>", VICUNA_V1_MEDIA, video_as_images=True),
    "llava_next": Family(("<image>",), {"image_token_id": "<image>"}, "</s>", MISTRAL_INST),
    "llava_next_video": Family(
        ("<image>", "<video>"), {"image_token_id": "<image>", "video_token_id": "<video>"}, "</s>", VICUNA_V1_MEDIA,
    ),
    "idefics3": Family(
        ("<|begin_of_text|>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"),
        {"image_token_id": "<image>"}, "<end_of_utterance>", IDEFICS3, video_as_images=True,
    ),
    "smolvlm": Family(
        ("<|im_start|>", "<image>", "<video>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"),
        {"image_token_id": "<image>"}, "<end_of_utterance>", "smolvlm", video_as_images=True,
    ),
    "gemma3": Family(
        ("<start_of_turn>", "<end_of_turn>", *GEMMA3_NAMED.values()),
        {"boi_token_index": "<start_of_image>", "eoi_token_index": "<end_of_image>",
         "image_token_index": "<image_soft_token>"},
        "<end_of_turn>", GEMMA3, named_tokens=GEMMA3_NAMED, video_as_images=True,
    ),
    "internvl": Family(
        ("<|im_start|>", "<|im_end|>", *INTERNVL_NAMED.values()),
        {"image_token_id": "<IMG_CONTEXT>"}, "<|im_end|>", CHATML_INTERNVL, named_tokens=INTERNVL_NAMED,
    ),
    "mistral3": Family(
        ("[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"), {"image_token_index": "[IMG]"}, "</s>", MISTRAL3,
        video_as_images=True,
    ),
    "minicpmv4_6": Family(
        ("<|im_start|>", "<|im_end|>", *MINICPMV_NAMED.values()),
        {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>"}, "<|im_end|>", CHATML_MINICPMV,
        named_tokens=MINICPMV_NAMED,
    ),
    # PaliGemma 2: no chat template, its processor writes the prompt-and-answer format (mmft.models.prefix_collate)
    "paligemma": Family(
        ("<image>",), {"image_token_index": "<image>"}, "</s>", None, named_tokens={"image_token": "<image>"},
        video_as_images=True,
    ),
    "glm4v": Family(
        GLM4V_TOKENS,
        {"image_token_id": "<|image|>", "video_token_id": "<|video|>", "image_start_token_id": "<|begin_of_image|>",
         "image_end_token_id": "<|end_of_image|>", "video_start_token_id": "<|begin_of_video|>",
         "video_end_token_id": "<|end_of_video|>"},
        "<|endoftext|>", GLM4V,
    ),
}


# templates a recipe may name instead of writing the Jinja text (``chat_template: vicuna_v1``)
NAMED_TEMPLATES = {"vicuna_v1": VICUNA_V1_MEDIA}


def template_text(template: str) -> str:
    """The Jinja text of ``template``: a name of :data:`NAMED_TEMPLATES`, or the Jinja text itself."""
    return NAMED_TEMPLATES.get(template, template)


def family_template(family: Family) -> str | None:
    """The family's chat template text (SmolVLM's is read from transformers; None for a prefix-LM family)."""
    return smolvlm_template() if family.chat_template == "smolvlm" else family.chat_template


@dataclass(frozen=True)
class FamilyClasses:
    """The transformers classes of one family, looked up in the Auto tables by ``model_type``."""

    config: type
    model: type
    processor: type
    image_processor: type
    video_processor: type | None


def family_classes(model_type: str) -> FamilyClasses:
    """``model_type``'s config, image-text-to-text model, processor and its image / video processors."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES

    parts_type = FAMILIES[model_type].processor_type or model_type
    video = (VIDEO_PROCESSOR_MAPPING_NAMES.get(parts_type) or {}).get("torchvision")
    return FamilyClasses(
        config=CONFIG_MAPPING[model_type],
        model=getattr(transformers, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES[model_type]),
        processor=getattr(transformers, PROCESSOR_MAPPING_NAMES[parts_type]),
        image_processor=getattr(transformers, IMAGE_PROCESSOR_MAPPING_NAMES[parts_type]["torchvision"]),
        video_processor=getattr(transformers, video) if video else None,
    )


def get_family(name: str, key: str) -> Family:
    """The family called ``name``; an unknown one is an error naming ``key`` and the known families."""
    if name not in FAMILIES:
        raise ValueError(f"{key}={name!r}: unknown family; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
