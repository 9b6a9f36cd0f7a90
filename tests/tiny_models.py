"""Tiny transformers models built from configs (no downloads), shared by the adapter tests."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)


def tiny_llama(seed: int = 0, hidden_size: int = 32, intermediate_size: int = 64) -> nn.Module:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=2,
                         num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_bart(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, vocab_size=64,
                        max_position_embeddings=64)
    return BartForConditionalGeneration(config).eval()


def tiny_clip_vision(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                              image_size=16, patch_size=8)
    return CLIPVisionModel(config).eval()


def llama_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 64, (2, 7), generator=g)}


def bart_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, 64, (2, 7), generator=g),
            "decoder_input_ids": torch.randint(0, 64, (2, 5), generator=g)}


def clip_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}


def first_output(model: nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


MODELS = {
    "llama": (tiny_llama, llama_inputs, r".*\.(q_proj|v_proj|down_proj)"),
    "bart": (tiny_bart, bart_inputs, ["q_proj", "v_proj", "fc1"]),
    "clip": (tiny_clip_vision, clip_inputs, ["q_proj", "v_proj", "fc2"]),
}
