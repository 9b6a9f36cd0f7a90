"""Tiny image-text-to-text models of each family, built from configs (no downloads), shared by the VLM tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmft.adapters import AdapterConfig
from mmft.models import VisionLanguageFromConfig

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "configs" / "tiny" / "tokenizer")
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
VIT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
QWEN_PIXELS = {"patch_size": 4, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 16 * 16,
               "max_pixels": 32 * 32}
# Qwen3-VL / GLM-4.1V: 4 px patches merged 2 x 2, images resized to 256..1024 pixels
QWEN3_PIXELS = {"patch_size": 4, "merge_size": 2, "temporal_patch_size": 2,
                "size": {"shortest_edge": 256, "longest_edge": 1024}}
QWEN3_VIT = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
             "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "num_position_embeddings": 64}
MROPE_8 = {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True}
PINPOINTS = [[16, 16], [16, 32], [32, 16], [32, 32]]
# LLaVA-NeXT: 16 px tiles of 8 px patches; the processor must count what the model keeps, the CLS token CLIP adds
# (num_additional_image_tokens) and drops again ("default" strategy), or it writes one <image> fewer per image
LLAVA_NEXT = {
    "vision_config": {**VIT, "image_size": 16, "patch_size": 8},
    "text_config": TEXT,
    "config": {"image_grid_pinpoints": PINPOINTS},
    "image_processor": {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16},
                        "image_grid_pinpoints": PINPOINTS},
    "processor": {"patch_size": 8, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
}
SIGLIP_SHUFFLED = {  # SmolVLM / Idefics3: one 16 px tile of 4 px patches, pixel-shuffled by 2: 4 tokens
    "vision_config": {**VIT, "image_size": 16, "patch_size": 4},
    "text_config": TEXT,
    "config": {"scale_factor": 2},
    "image_processor": {"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 16},
                        "do_image_splitting": False},
    "processor": {"image_seq_len": 4},
}
FAMILY_SIZES: dict[str, dict[str, Any]] = {
    "qwen2_5_vl": {
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                          "out_hidden_size": 32, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2,
                          "window_size": 16, "fullatt_block_indexes": [1]},
        "text_config": {**TEXT, "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}},
        "image_processor": QWEN_PIXELS,
        "video_processor": QWEN_PIXELS,
    },
    "qwen2_vl": {
        "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 32, "mlp_ratio": 2, "num_heads": 2,
                          "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2},
        "text_config": {**TEXT, "rope_scaling": {"type": "mrope", "mrope_section": [2, 1, 1]}},
        "image_processor": QWEN_PIXELS,
        "video_processor": QWEN_PIXELS,
    },
    "llava_onevision": {
        "vision_config": {**VIT, "image_size": 16, "patch_size": 8},
        "text_config": TEXT,
        "config": {"image_grid_pinpoints": PINPOINTS},
        "image_processor": {"size": {"height": 16, "width": 16}, "image_grid_pinpoints": PINPOINTS},
        "video_processor": {"size": {"height": 16, "width": 16}},
        "processor": {"num_image_tokens": 4, "vision_feature_select_strategy": "full"},
    },
    "llava_next": LLAVA_NEXT,
    # LLaVA-1.5 on the generic module: one 16 px CLIP image of 8 px patches (4 tokens once the CLS token is dropped),
    # padded to square with the mean colour first
    "llava": {
        "vision_config": {**VIT, "image_size": 16, "patch_size": 8},
        "text_config": TEXT,
        "image_processor": {"size": {"shortest_edge": 16}, "crop_size": {"height": 16, "width": 16}, "do_pad": True},
        "processor": {"patch_size": 8, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1},
    },
    "llava_next_video": {**LLAVA_NEXT, "video_processor": {"size": {"shortest_edge": 16},
                                                           "crop_size": {"height": 16, "width": 16}}},
    "smolvlm": {**SIGLIP_SHUFFLED,
                "video_processor": {"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 16}}},
    "idefics3": SIGLIP_SHUFFLED,
    "qwen3_vl": {
        "vision_config": {**QWEN3_VIT, "deepstack_visual_indexes": [0]},
        "text_config": {**TEXT, "head_dim": 8, "rope_parameters": MROPE_8},
        "image_processor": QWEN3_PIXELS,
        "video_processor": QWEN3_PIXELS,
    },
    # a mixture of experts in every layer: 4 experts, 2 routed a token
    "qwen3_vl_moe": {
        "vision_config": {**QWEN3_VIT, "deepstack_visual_indexes": [0]},
        "text_config": {**TEXT, "head_dim": 8, "rope_parameters": MROPE_8, "num_experts": 4,
                        "num_experts_per_tok": 2, "moe_intermediate_size": 32},
        "image_processor": QWEN3_PIXELS,
        "video_processor": QWEN3_PIXELS,
    },
    "glm4v": {
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                          "image_size": 16, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2},
        "text_config": {**TEXT, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1]}},
        "image_processor": QWEN3_PIXELS,
        "video_processor": QWEN3_PIXELS,
    },
    # 16 px images of 4 px patches, average-pooled to 2 x 2: 4 soft tokens an image
    "gemma3": {
        "vision_config": {**VIT, "image_size": 16, "patch_size": 4},
        # a sliding-window layer and a global one (as Gemma 3's 5:1 pattern): the window alone would not reach back
        # from the reply to the image
        "text_config": {**TEXT, "head_dim": 8, "sliding_window": 16,
                        "layer_types": ["sliding_attention", "full_attention"]},
        "config": {"mm_tokens_per_image": 4},
        "image_processor": {"size": {"height": 16, "width": 16}},
        "processor": {"image_seq_length": 4},
    },
    # 16 px tiles of 4 px patches, pixel-shuffled by 2: 4 tokens a tile; at most 2 tiles and a thumbnail
    "internvl": {
        "vision_config": {**VIT, "image_size": [16, 16], "patch_size": [4, 4]},
        "text_config": TEXT,
        "config": {"image_seq_length": 4},
        "image_processor": {"size": {"height": 16, "width": 16}, "max_patches": 2},
        "video_processor": {"size": {"height": 16, "width": 16}},
        "processor": {"image_seq_length": 4},
    },
    # Pixtral: images up to 32 px in 4 px patches, merged 2 x 2, rows ended by [IMG_BREAK]
    "mistral3": {
        "vision_config": {**VIT, "head_dim": 16, "image_size": 32, "patch_size": 4},
        "text_config": {**TEXT, "head_dim": 8},
        "config": {"spatial_merge_size": 2},
        "image_processor": {"size": {"longest_edge": 32}, "patch_size": {"height": 4, "width": 4}},
        "processor": {"patch_size": 4, "spatial_merge_size": 2},
    },
    # MiniCPM-V 4.6 (Qwen3.5 text: a linear-attention layer and a full one): 4 px patches, merged 2 x 2 inside the
    # tower (after layer 0) and 2 x 2 again by the merger; images resized to at most 32 x 32 px, no slices
    "minicpmv4_6": {
        "vision_config": {**VIT, "image_size": 32, "patch_size": 4},
        "text_config": {**TEXT, "head_dim": 8, "layer_types": ["linear_attention", "full_attention"],
                        "linear_num_value_heads": 2, "linear_num_key_heads": 2, "linear_key_head_dim": 8,
                        "linear_value_head_dim": 8},
        "config": {"insert_layer_id": 0, "image_size": 32},
        "image_processor": {"patch_size": 4, "scale_resolution": 32, "slice_mode": False},
        "video_processor": {"patch_size": 4, "scale_resolution": 32, "slice_mode": False},
    },
    # PaliGemma 2 (Gemma 2 text): 16 px images of 4 px patches, 16 tokens an image
    "paligemma": {
        "vision_config": {**VIT, "image_size": 16, "patch_size": 4},
        "text_config": {**TEXT, "model_type": "gemma2", "head_dim": 8, "query_pre_attn_scalar": 8},
        "config": {"projection_dim": 32, "hidden_size": 32},
        "image_processor": {"size": {"height": 16, "width": 16}, "image_seq_length": 16},
    },
}
FAMILIES = list(FAMILY_SIZES)
# For a 4-bit language model: rows of 64 and 128 weights, shapes bitsandbytes quantizes correctly on every CPU
# (some CPU kernels get rows shorter than a block wrong, which mmft refuses)
QWEN2_5_VL_4BIT_SIZES = {
    **FAMILY_SIZES["qwen2_5_vl"],
    "vision_config": {**FAMILY_SIZES["qwen2_5_vl"]["vision_config"], "out_hidden_size": 64},
    "text_config": {**TEXT, "hidden_size": 64, "intermediate_size": 128,
                    "rope_scaling": {"type": "mrope", "mrope_section": [4, 2, 2]}},
}
LM_TARGETS = r".*(language_model|text_model).*\.(q_proj|v_proj|o_proj|down_proj)"
PROJECTORS = {"qwen2_5_vl": "merger", "qwen2_vl": "merger", "llava_onevision": "multi_modal_projector",
              "llava_next": "multi_modal_projector", "llava_next_video": "multi_modal_projector",
              "smolvlm": "connector", "idefics3": "connector", "qwen3_vl": "merger", "qwen3_vl_moe": "merger",
              "glm4v": "merger", "gemma3": "multi_modal_projector", "internvl": "multi_modal_projector",
              "mistral3": "multi_modal_projector", "paligemma": "multi_modal_projector",
              "minicpmv4_6": "merger", "llava": "multi_modal_projector"}


def tiny_backbone(family: str, seed: int = 0) -> VisionLanguageFromConfig:
    return VisionLanguageFromConfig(family=family, tokenizer=TOKENIZER, seed=seed, **FAMILY_SIZES[family])


def lm_adapter(family: str, method: str = "dora", dropout: float = 0.0, targets: Any = LM_TARGETS) -> AdapterConfig:
    # Qwen3-VL's projector is its merger and the deepstack mergers that feed early decoder layers
    extra = ["deepstack_merger_list.0"] if family.startswith("qwen3_vl") else []
    return AdapterConfig(method=method, r=4, alpha=8, dropout=dropout, target_modules=targets,
                         modules_to_save=[PROJECTORS[family], *extra])
