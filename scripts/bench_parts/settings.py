"""The benchmark's variants, size presets, reported ratios (with their targets) and the dtype / autocast /
synchronisation helpers every part uses."""

from __future__ import annotations

import argparse
from contextlib import AbstractContextManager, nullcontext

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# name -> (library, description, mmft AdapterConfig overrides or PEFT use_dora)
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "mmft_lora": ("mmft", "mmft LoRA", {"method": "lora"}),
    "mmft_dora": ("mmft", "mmft DoRA", {"method": "dora"}),
    "mmft_dora_lean": ("mmft", "mmft DoRA, dora_recompute", {"method": "dora", "dora_recompute": True}),
    "mmft_dora_nodetach": ("mmft", "mmft DoRA, detach_norm=False", {"method": "dora", "detach_norm": False}),
    # the same layers with mmft.adapters.kernels off: the fused kernels' share (on a CPU both run PyTorch ops)
    "mmft_dora_unfused": ("mmft", "mmft DoRA, fused kernels off", {"method": "dora", "fused": False}),
    # the papers' reference: the same layers' own weights trained (AdamW keeps two moments per weight)
    "mmft_full": ("mmft", "full fine-tuning of the same layers", {"method": "full"}),
    "peft_lora": ("peft", "PEFT LoRA", {"use_dora": False}),
    "peft_dora": ("peft", "PEFT DoRA", {"use_dora": True}),
}


# the variants whose eval forward is timed (lean / no-detach run mmft DoRA's no-grad code unchanged)
EVAL_VARIANTS = ["mmft_lora", "mmft_dora", "peft_lora", "peft_dora"]


BASE = "base"


PRESETS: dict[str, dict] = {
    "default": {"hidden": 1024, "layers": 4, "heads": 16, "kv_heads": None, "intermediate": None, "seq": 256,
                "batch": 4, "vocab": 1000, "rank": 16},
    # Llama-3.2-1B's body (hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192), small vocabulary: ~1.0B params
    "1b": {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192, "seq": 1024, "batch": 4,
           "vocab": 1000, "rank": 16},
    # launch-bound: layers so small that a step is all per-op host work (Python, dispatcher), the regime a GPU step is
    # in when its kernels are shorter than their launches. A CPU stand-in for that part of a GPU step; use --threads 1
    "overhead": {"hidden": 64, "layers": 16, "heads": 4, "kv_heads": None, "intermediate": None, "seq": 16,
                 "batch": 1, "vocab": 128, "rank": 8},
    # four layers of Llama-2-7B's shape (hidden 4096, 32 heads, MLP 11008): 7B-sized GEMMs in a step that fits quickly
    "7b-stack": {"hidden": 4096, "layers": 4, "heads": 32, "kv_heads": None, "intermediate": 11008, "seq": 1024,
                 "batch": 4, "vocab": 1000, "rank": 16},
    # seconds on a laptop: for smoke tests of the script itself
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": None, "seq": 16, "batch": 2,
             "vocab": 128, "rank": 4},
}


# (ratio key, numerator variant, denominator variant, quantity, target or None, what it shows)
RATIOS: list[tuple[str, str, str, str, float | None, str]] = [
    ("mmft_dora/mmft_lora step time", "mmft_dora", "mmft_lora", "step_time_s", 1.10, "DoRA training overhead"),
    ("peft_dora/peft_lora step time", "peft_dora", "peft_lora", "step_time_s", None, "PEFT's DoRA overhead"),
    ("mmft_dora/peft_dora step time", "mmft_dora", "peft_dora", "step_time_s", None, "vs PEFT DoRA"),
    ("mmft_lora/peft_lora step time", "mmft_lora", "peft_lora", "step_time_s", None, "vs PEFT LoRA"),
    ("mmft_dora/peft_dora saved bytes", "mmft_dora", "peft_dora", "saved_bytes", 0.75, "activation memory"),
    ("mmft_dora/peft_dora step peak", "mmft_dora", "peft_dora", "peak_step_bytes", 0.75, "peak above static"),
    ("mmft_dora/peft_dora train peak", "mmft_dora", "peft_dora", "train_peak_bytes", None, "incl. weights, AdamW"),
    ("mmft_dora/mmft_lora saved bytes", "mmft_dora", "mmft_lora", "saved_bytes", None, "DoRA's extra activations"),
    ("lean/mmft_lora saved bytes", "mmft_dora_lean", "mmft_lora", "saved_bytes", 1.05, "dora_recompute memory"),
    ("lean/mmft_lora step time", "mmft_dora_lean", "mmft_lora", "step_time_s", None, "dora_recompute time"),
    ("lean/mmft_dora step time", "mmft_dora_lean", "mmft_dora", "step_time_s", None, "cost of recomputing"),
    ("mmft_dora/mmft_lora eval", "mmft_dora", "mmft_lora", "eval_time_s", 1.10, "unmerged inference"),
    ("peft_dora/peft_lora eval", "peft_dora", "peft_lora", "eval_time_s", None, "PEFT unmerged inference"),
    ("detach/no-detach saved bytes", "mmft_dora", "mmft_dora_nodetach", "saved_bytes", None,
     "paper: -24.4% LLaMA, -12.4% VL-BART (training memory)"),
    ("detach/no-detach step peak", "mmft_dora", "mmft_dora_nodetach", "peak_step_bytes", None, "detach trick"),
    ("detach/no-detach train peak", "mmft_dora", "mmft_dora_nodetach", "train_peak_bytes", None, "detach trick"),
    ("detach/no-detach step time", "mmft_dora", "mmft_dora_nodetach", "step_time_s", None, "detach trick"),
    ("mmft_dora/unfused step time", "mmft_dora", "mmft_dora_unfused", "step_time_s", None, "fused kernels' gain"),
    ("unfused/mmft_lora step time", "mmft_dora_unfused", "mmft_lora", "step_time_s", None, "DoRA without the kernels"),
    ("mmft_dora/mmft_lora GPU busy", "mmft_dora", "mmft_lora", "device_busy_s", None, "kernel time alone"),
    ("peft_dora/peft_lora GPU busy", "peft_dora", "peft_lora", "device_busy_s", None, "kernel time alone"),
]


COMPILE_MODES = ["default", "reduce-overhead", "max-autotune-no-cudagraphs"]


# dense bf16 matrix rate of the H100 / H200 SXM by the vendor's datasheet: the usual denominator of MFU
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (bad flag combination, failed equivalence check); says which."""


def compute_dtype(args: argparse.Namespace) -> torch.dtype:
    return getattr(torch, args.dtype)


def autocast_context(args: argparse.Namespace) -> AbstractContextManager:
    """bf16/fp16 runs: autocast over the forward pass (see the module docstring); fp32: nothing."""
    dtype = compute_dtype(args)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(torch.device(args.device).type, dtype=dtype)


def synchronize(args: argparse.Namespace) -> None:
    if torch.device(args.device).type == "cuda":
        torch.cuda.synchronize(args.device)
