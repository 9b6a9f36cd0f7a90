"""``--quant 4bit``: mmft QLoRA / QDoRA against PEFT's on a 4-bit base, and ``--llava``: a LLaVA-1.5-sized stack
under a recipe's settings."""

from __future__ import annotations

import argparse
import copy
import gc
import os
import shlex
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bench_parts.meters import SavedTensorMeter, cpu_peak_bytes, max_abs_diff, round_robin, static_bytes, timed
from bench_parts.report import device_name
from bench_parts.settings import TARGETS, BenchError, compute_dtype
from bench_parts.variants import (
    Variant,
    build_base,
    eval_forward,
    make_variant,
    model_tensors,
    randomize_adapters,
    train_step,
)

# name -> (label, VARIANTS entry applied, base it is applied to)
QUANT_VARIANTS: dict[str, tuple[str, str, str]] = {
    "mmft_dora": ("mmft DoRA, dense base", "mmft_dora", "dense"),
    "mmft_qlora": ("mmft QLoRA", "mmft_lora", "4bit"),
    "mmft_qdora": ("mmft QDoRA", "mmft_dora", "4bit"),
    "peft_qdora": ("PEFT QDoRA", "peft_dora", "4bit"),
}


QUANT_RATIOS: list[tuple[str, str, str, str]] = [
    ("mmft_qdora/mmft_dora step time", "mmft_qdora", "mmft_dora", "step_time_s"),
    ("mmft_qdora/mmft_qlora step time", "mmft_qdora", "mmft_qlora", "step_time_s"),
    ("mmft_qdora/peft_qdora step time", "mmft_qdora", "peft_qdora", "step_time_s"),
    ("mmft_qdora/peft_qdora saved bytes", "mmft_qdora", "peft_qdora", "saved_bytes"),
    ("mmft_qdora/peft_qdora step peak", "mmft_qdora", "peft_qdora", "peak_step_bytes"),
    ("mmft_qdora/mmft_dora train peak", "mmft_qdora", "mmft_dora", "train_peak_bytes"),
]


# LLaVA-1.5-7B (CLIP ViT-L/14-336 + Vicuna-7B) and a stand-in small enough for a CPU smoke run
LLAVA_SIZES: dict[str, dict[str, dict]] = {
    "7b": {"vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768},
           "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
                    "max_position_embeddings": 4096}},
    "tiny": {"vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "image_size": 32, "patch_size": 8, "projection_dim": 32},
             "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 4, "vocab_size": 256, "max_position_embeddings": 256}},
}


def quantized_copy(base: nn.Module, args: argparse.Namespace) -> nn.Module:
    """``base`` with every linear layer but ``lm_head`` in NF4 with double quantization (QLoRA's base)."""
    from mmft.adapters import QuantizationConfig, quantize_linear_layers

    model = copy.deepcopy(base)
    quantize_linear_layers(model, QuantizationConfig(compute_dtype=args.dtype), skip=["lm_head"])
    return model


def base_weight_bytes(model: nn.Module) -> int:
    """Bytes of the adapted layers' frozen weights: a 4-bit one's packed values plus its quantization state."""
    from mmft.adapters.base_weight import is_4bit

    total = 0
    for name, module in model.named_modules():
        parts = name.split(".")
        if parts[-1] == "base_layer":  # the frozen layer inside an mmft or PEFT adapter
            parts = parts[:-1]
        elif hasattr(module, "base_layer"):
            continue
        if parts[-1] not in TARGETS or not hasattr(module, "weight"):
            continue
        weight = module.weight
        total += weight.untyped_storage().nbytes()
        if is_4bit(weight):
            state = weight.quant_state
            parts = [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
            total += sum(t.untyped_storage().nbytes() for t in parts)
    return total


def run_quant_benchmark(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Dense against 4-bit base, mmft against PEFT on the 4-bit base: same adapters, interleaved steps."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed + 1))
    ids = ids.to(device)
    dense = build_base(args)
    bases = {"dense": dense, "4bit": quantized_copy(dense, args)}
    variants = {name: Variant(name, make_variant(bases[kind], source, args))
                for name, (_, source, kind) in QUANT_VARIANTS.items()}
    randomize_adapters({n: v.model for n, v in variants.items()}, dense, args.seed + 2)
    logits = {name: eval_forward(v.model.eval(), ids[:1], args) for name, v in variants.items()}
    checks = {"mmft_qdora vs peft_qdora": max_abs_diff(logits["mmft_qdora"], logits["peft_qdora"]),
              "mmft_qdora vs mmft_dora (quantization)": max_abs_diff(logits["mmft_qdora"], logits["mmft_dora"])}
    relative = 1e-4 if compute_dtype(args) == torch.float32 else 5e-2
    tolerance = relative * max(1.0, logits["peft_qdora"].float().abs().max().item())
    log(f"max |logit difference|: {checks}; tolerance for mmft vs PEFT {tolerance:.3g}")
    if not checks["mmft_qdora vs peft_qdora"] <= tolerance:
        raise BenchError(f"mmft QDoRA and PEFT QDoRA disagree: {checks}")

    for v in variants.values():
        v.model.train()
        params = [p for p in v.model.parameters() if p.requires_grad]
        v.trainable_params = sum(p.numel() for p in params)
        v.optimizer = torch.optim.AdamW(params, lr=args.lr)
    for _ in range(args.warmup):
        for v in variants.values():
            train_step(v, ids, args)
    for v in variants.values():
        meter = SavedTensorMeter(exclude=model_tensors(v.model))
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            train_step(v, ids, args, meter)
            v.peak_step_bytes = torch.cuda.max_memory_allocated(device) - before
        else:
            v.peak_step_bytes = cpu_peak_bytes(lambda v=v, meter=meter: train_step(v, ids, args, meter))
        v.static_bytes = static_bytes(v.model, v.optimizer)
    gc.collect()
    round_robin(list(variants), args.rounds,
                lambda name: variants[name].step_times.append(timed(lambda: train_step(variants[name], ids, args),
                                                                    args)))
    rows = {name: {"label": QUANT_VARIANTS[name][0], "trainable_params": v.trainable_params,
                   "base_weight_bytes": base_weight_bytes(v.model), "step_time_s": statistics.median(v.step_times),
                   "step_times_s": v.step_times, "saved_bytes": v.saved_bytes, "peak_step_bytes": v.peak_step_bytes,
                   "static_bytes": v.static_bytes, "train_peak_bytes": v.static_bytes + v.peak_step_bytes}
            for name, v in variants.items()}
    ratios = {key: rows[num][quantity] / rows[den][quantity] for key, num, den, quantity in QUANT_RATIOS}
    ratios["4bit/dense base-weight bytes"] = rows["mmft_qdora"]["base_weight_bytes"] / rows["mmft_dora"][
        "base_weight_bytes"]
    return {"setup": {"command": shlex.join(["python", "scripts/bench_adapters.py", *args.argv]),
                      "device_name": device_name(args), "dtype": args.dtype, "quantization": "nf4, double quant",
                      "sizes": {k: getattr(args, k) for k in ("hidden", "layers", "intermediate", "seq", "batch",
                                                                 "rank")},
                      "rounds": args.rounds, "torch": torch.__version__},
            "checks_max_abs_logit_diff": checks, "variants": rows, "ratios": ratios}


def read_recipe(path: str) -> dict:
    """The adapter, per-device batch, max length and gradient checkpointing of a LLaVA recipe YAML, read as the
    ``mmft`` CLI reads it (a named config includes its recipe)."""
    from mmft.cli import resolve_config

    try:
        if not os.path.isfile(path):
            raise OSError(f"no such file {path}")
        recipe = resolve_config(["--config", path])
        model, data = recipe["model"]["init_args"], recipe["data"]["init_args"]
        return {"adapter": model["adapter"], "batch": data["batch_size"], "seq": model["max_length"],
                "gradient_checkpointing": model.get("gradient_checkpointing", False)}
    except (OSError, KeyError, TypeError) as err:
        raise BenchError(f"--recipe {path}: not a LLaVA recipe with model.init_args.adapter / max_length and "
                         f"data.init_args.batch_size ({err})") from None


def build_llava(size: str, quantized: bool, recipe: dict, args: argparse.Namespace) -> nn.Module:
    """A random LLaVA of ``size`` on the device, frozen weights in bf16 (the language model's in 4 bits when
    ``quantized``), with the recipe's adapters (trainable parts in fp32) and gradient checkpointing."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from mmft.adapters import AdapterConfig, QuantizationConfig, apply_adapters
    from mmft.models.vlm import enable_activation_checkpointing
    from mmft.models.vlm_backbones import find_language_model, quantize_language_model

    sizes = LLAVA_SIZES[size]
    config = LlavaConfig(vision_config={"model_type": "clip_vision_model", **sizes["vision"]},
                         text_config={"model_type": "llama", **sizes["text"]}, image_token_index=sizes["text"][
                             "vocab_size"] - 1, vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(args.seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 on the device: no fp32 copy of 7B parameters
    try:
        with torch.device(args.device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    if quantized:
        quantize_language_model(model, QuantizationConfig(compute_dtype="bfloat16"))
    apply_adapters(model, AdapterConfig(**recipe["adapter"]))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    if recipe["gradient_checkpointing"]:
        enable_activation_checkpointing(find_language_model(model))
    return model.train()


def llava_batch(size: str, batch: int, seq: int, device: torch.device) -> dict[str, Tensor]:
    """``batch`` sequences of ``seq`` tokens, each one image's tokens first, all text supervised."""
    sizes = LLAVA_SIZES[size]
    image_tokens = (sizes["vision"]["image_size"] // sizes["vision"]["patch_size"]) ** 2
    if seq <= image_tokens:
        raise BenchError(f"--seq {seq}: must exceed the {image_tokens} image tokens")
    image_token = sizes["text"]["vocab_size"] - 1
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, image_token, (batch, seq), generator=generator)
    ids[:, :image_tokens] = image_token
    labels = ids.masked_fill(ids == image_token, -100)
    pixels = torch.randn(batch, 3, sizes["vision"]["image_size"], sizes["vision"]["image_size"], generator=generator)
    return {"input_ids": ids.to(device), "labels": labels.to(device),
            "pixel_values": pixels.to(device, torch.bfloat16)}


def run_llava_benchmark(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """Peak memory and step time of the recipe's training step on a random LLaVA, 4-bit base against bf16."""
    recipe = read_recipe(args.recipe)
    batch = args.batch_override or recipe["batch"]
    seq = args.seq_override or recipe["seq"]
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    inputs = llava_batch(args.llava, batch, seq, device)
    rows = {}
    for kind in ("4bit", "bf16"):
        started = time.perf_counter()
        model = build_llava(args.llava, kind == "4bit", recipe, args)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        log(f"{kind}: built in {time.perf_counter() - started:.1f}s")

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(**inputs, use_cache=False).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(args.warmup):
            step()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
            times = [timed(step, args) for _ in range(args.rounds)]
            peak = torch.cuda.max_memory_allocated(device)
        else:
            peak = static_bytes(model, optimizer) + cpu_peak_bytes(step)
            times = [timed(step, args) for _ in range(args.rounds)]
        rows[kind] = {"label": f"LLaVA {args.llava}, {kind} base", "trainable_params": sum(p.numel() for p in params),
                      "base_weight_bytes": base_weight_bytes(model), "peak_bytes": peak,
                      "step_time_s": statistics.median(times), "step_times_s": times}
        log(f"{kind}: peak {peak / 2**30:.2f} GiB, step {statistics.median(times):.2f} s")
        del model, optimizer, params
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    return {"setup": {"command": shlex.join(["python", "scripts/bench_adapters.py", *args.argv]),
                      "device_name": device_name(args), "recipe": args.recipe, "batch": batch, "seq": seq,
                      "adapter": recipe["adapter"], "gradient_checkpointing": recipe["gradient_checkpointing"],
                      "precision": "bf16 frozen weights, fp32 adapters and projector, torch.autocast(bfloat16)",
                      "peak": "CUDA allocator peak over the timed steps" if on_cuda else
                              "parameters + AdamW state + the profiled peak of one step", "torch": torch.__version__},
            "variants": rows,
            "ratios": {"4bit/bf16 peak": rows["4bit"]["peak_bytes"] / rows["bf16"]["peak_bytes"],
                       "4bit/bf16 step time": rows["4bit"]["step_time_s"] / rows["bf16"]["step_time_s"]}}
