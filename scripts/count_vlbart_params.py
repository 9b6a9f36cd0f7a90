"""Trainable share of VL-BART at full size under the adapter settings of configs/vlbart_image_{lora,dora}.yaml,
next to the DoRA paper's 5.93% (LoRA) and 5.96% (DoRA).

    python scripts/count_vlbart_params.py

No download: bart-base is built from its published config (random weights) and CLIP ResNet-101 with timm's
``pretrained=False``; parameter counts do not depend on the weights. The share is trainable / all parameters of
VL-BART (BART + visual embedding + adapters), as the DoRA code counts it (its features are pre-extracted, so the
frozen CLIP encoder is not part of its model); the share with the encoder counted too is printed beside it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from mmft.adapters import AdapterConfig, apply_adapters  # noqa: E402
from mmft.models.vlbart import VLBart  # noqa: E402
from mmft.models.visual_features import VisualConfig, VisualEncoder  # noqa: E402

# facebook/bart-base's config.json (BartConfig's own defaults are bart-large's sizes)
BART_BASE = {
    "vocab_size": 50265,
    "d_model": 768,
    "encoder_layers": 6,
    "decoder_layers": 6,
    "encoder_attention_heads": 12,
    "decoder_attention_heads": 12,
    "encoder_ffn_dim": 3072,
    "decoder_ffn_dim": 3072,
    "max_position_embeddings": 1024,
}
PAPER_SHARE = {"lora": 5.93, "dora": 5.96}
CONFIGS = {"lora": ROOT / "configs" / "vlbart_image_lora.yaml", "dora": ROOT / "configs" / "vlbart_image_dora.yaml"}


def adapter_config(path: Path) -> AdapterConfig:
    """The ``model.init_args.adapter`` section of a VL-BART config."""
    return AdapterConfig(**yaml.safe_load(path.read_text(encoding="utf-8"))["model"]["init_args"]["adapter"])


def count(config: AdapterConfig, feature_dim: int) -> dict[str, int]:
    """Trainable parameters of VL-BART (bart-base) by kind, and the total."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    model = VLBart(BartForConditionalGeneration(BartConfig(**BART_BASE)), feature_dim)
    report = apply_adapters(model, config)
    kinds = {"adapter A, B": 0, "DoRA magnitude": 0, "visual embedding": 0, "biases": 0, "LayerNorms": 0}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if ".lora_A." in name or ".lora_B." in name:
            kind = "adapter A, B"
        elif name.endswith("lora_magnitude_vector"):
            kind = "DoRA magnitude"
        elif name.startswith("visual_embedding."):
            kind = "visual embedding"
        elif name.endswith(".bias") and "norm" not in name:
            kind = "biases"
        else:
            kind = "LayerNorms"
        kinds[kind] += param.numel()
    assert sum(kinds.values()) == report.trainable_params
    return {**kinds, "trainable": report.trainable_params, "total": report.total_params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    encoder = VisualEncoder(VisualConfig(encoder="resnet101_clip"))
    encoder_params = sum(p.numel() for p in encoder.parameters())
    rows = {method: count(adapter_config(path), encoder.feature_dim) for method, path in CONFIGS.items()}
    # VL-Adapter's LoRA run trains the parameters whose name contains "bias" (LayerNorm biases included) and the
    # visual embedding, but not the LayerNorm weights: mmft's bias="all" without the LayerNorm modules to save
    vl_adapter_lora = replace(adapter_config(CONFIGS["lora"]), modules_to_save=["visual_embedding"])
    rows["lora, LayerNorm weights frozen"] = count(vl_adapter_lora, encoder.feature_dim)
    print(f"frozen CLIP ResNet-101 trunk (resnet101_clip, no attention-pool head): {encoder_params:,} parameters\n")
    print("| method | trainable | VL-BART total | share | paper | share with the CLIP encoder counted |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for method, row in rows.items():
        share = 100 * row["trainable"] / row["total"]
        with_encoder = 100 * row["trainable"] / (row["total"] + encoder_params)
        paper = PAPER_SHARE[method.split(",")[0]]
        print(f"| {method} | {row['trainable']:,} | {row['total']:,} | {share:.2f}% | {paper:.2f}% "
              f"| {with_encoder:.2f}% |")
    kinds = [k for k in rows["dora"] if k not in ("trainable", "total")]
    print("\n| trainable part | " + " | ".join(rows) + " |")
    print("| --- |" + " ---: |" * len(rows))
    for kind in kinds:
        print(f"| {kind} | " + " | ".join(f"{row[kind]:,}" for row in rows.values()) + " |")


if __name__ == "__main__":
    main()
