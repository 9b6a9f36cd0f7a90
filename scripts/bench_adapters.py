"""Side-by-side benchmark of mmft's LoRA/DoRA against PEFT's on a Llama-style model.

    .venv/bin/python scripts/bench_adapters.py                     # default size: 2-3 minutes on 2 idle CPU cores
    .venv/bin/python scripts/bench_adapters.py --preset 1b --json bench_1b.json   # ~1B parameters, on a GPU

One random base model (transformers ``LlamaConfig``, built from sizes, no download) is copied once per variant:
mmft LoRA, mmft DoRA, mmft DoRA with ``dora_recompute=True`` ("lean"), mmft DoRA with ``detach_norm=False``, PEFT LoRA
and PEFT DoRA, all rank ``--rank`` on q/k/v/o/gate/up/down with the same alpha and no dropout. Before timing, every
variant gets the same non-zero A, B and magnitude, and the script checks (and prints) that mmft and PEFT give the same
logits (and that all variants equal the base model at init).

What is measured, and how:

- Training step time: forward + LM cross-entropy (labels = the random input tokens) + backward + ``AdamW.step`` over
  the trainable parameters + ``zero_grad``. Variants run interleaved (round-robin, the order rotated every round) after
  warmup steps, so machine load drifts hit every variant alike; the MEDIAN over rounds is reported. On CUDA the clock
  is read after ``torch.cuda.synchronize()``.
- Bytes saved for backward: ``torch.autograd.graph.saved_tensors_hooks`` wraps every tensor an op saves; after the
  forward pass, the wrappers still alive are exactly those the autograd graph of the loss holds (they hold detached
  tensors, so a saved output does not keep its own graph alive through them; the graph of a tensor
  that was computed and dropped, such as PEFT's ``lora_B(lora_A(eye))`` whose result is only used detached, has been
  freed by then). They are DEDUPLICATED by storage (a tensor saved by several ops, or a view of it, counts once, with
  its whole storage) and tensors whose storage is a parameter or buffer of the model (the frozen weights, which exist
  anyway) are excluded: the figure is activation memory only. One extra, untimed step per variant.
- Peak step memory: the most bytes allocated during one training step above those allocated when it starts (gradients
  are ``None`` then, the optimizer state exists). On CUDA: ``torch.cuda.reset_peak_memory_stats()`` before each timed
  step and ``max_memory_allocated() - memory_allocated()``, the median over the timed steps. On CPU torch keeps no
  allocator statistics (and tracemalloc / RSS do not see torch's allocator reliably), so the untimed memory step runs
  under ``torch.profiler`` with ``profile_memory=True``: its allocation and free events (every CPU allocation of
  torch's allocator, with its size) are replayed in time order and the running maximum is the peak. "Train peak" adds
  the variant's own static memory (parameters and buffers, frozen base included, plus AdamW state): what the variant
  would peak at alone on the device. All variants live on the device at once, so absolute device peaks would mix them.
- Eval forward time: ``model.eval()`` and ``torch.no_grad()``, the adapters unmerged (mmft LoRA/DoRA, PEFT LoRA/DoRA;
  the lean and no-detach variants run the same no-grad code as mmft DoRA), then merged (``merge_adapters`` /
  ``merge_and_unload``), each next to the base model, interleaved the same way. PEFT's optional DoRA eval cache
  (``peft.tuners.lora.dora.ENABLE_DORA_CACHING``) is left at its default (off); mmft caches the DoRA scale in no-grad.

Precision: on CPU the default is float32 everywhere. With ``--dtype bfloat16`` (the default on CUDA) the base weights
are stored in bf16 and the forward pass runs under ``torch.autocast(dtype=bfloat16)``; the adapter parameters stay fp32
in both libraries (mmft creates them in fp32; PEFT upcasts them with its default ``autocast_adapter_dtype=True``), and
autocast runs every matmul of both libraries in bf16. What each library casts on top of that is part of what is
measured (PEFT's DoRA casts the adapter input to fp32, takes an fp32 copy of W for its norm and runs its elementwise
tail in fp32; mmft casts the fp32 adapter factors to bf16 and keeps the norm and scale in fp32).

``--compile`` times ``torch.compile``'d models (inductor, default mode: the adapters' small ops fuse into few kernels,
which is what a launch-bound step needs); every variant is compiled separately for training, eval and merged eval
during warm-up. The memory figures then still come from the eager models, since saved-tensor hooks do not reach into
compiled graphs.

Threads: ``torch.set_num_threads(--threads)``, by default the number of CPUs this process may use, so runs on the same
machine use the same intra-op parallelism (the value is recorded in the JSON). Everything is seeded (``--seed``); the
sizes are fixed by the flags, so two runs differ only in timing noise.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

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


# -- configuration ---------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; size flags left unset take the ``--preset`` value, timing flags a per-device default."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="size preset (default: %(default)s)")
    p.add_argument("--hidden", type=int, help="hidden size (default preset: 1024)")
    p.add_argument("--layers", type=int, help="decoder layers (default preset: 4)")
    p.add_argument("--heads", type=int, help="attention heads (default preset: 16)")
    p.add_argument("--kv-heads", type=int, help="key/value heads (default: --heads)")
    p.add_argument("--intermediate", type=int, help="MLP size (default: round(2.6875 * hidden))")
    p.add_argument("--seq", type=int, help="tokens per sequence (default preset: 256)")
    p.add_argument("--batch", type=int, help="sequences per step (default preset: 4)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default preset: 1000)")
    p.add_argument("--rank", type=int, help="adapter rank (default preset: 16)")
    p.add_argument("--alpha", type=float, help="adapter alpha (default: 2 * rank)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="base weight / autocast dtype (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: the CPUs this process may use)")
    p.add_argument("--warmup", type=int, help="untimed training steps per variant (default: 1 CPU, 3 CUDA)")
    p.add_argument("--rounds", type=int,
                   help="timed training rounds, one step per variant each (default: 5 CPU, 10 CUDA)")
    p.add_argument("--eval-warmup", type=int, help="untimed eval forwards per model (default: 1 CPU, 3 CUDA)")
    p.add_argument("--eval-rounds", type=int, help="timed eval rounds (default: 3 CPU, 10 CUDA)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--accumulate", type=int, default=1,
                   help="micro-batches (forward + backward) per optimizer step; the step time and MFU cover all of "
                        "them (default: %(default)s)")
    p.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                   help="time torch.compile'd models: inductor in MODE (default: %(const)s; reduce-overhead adds CUDA\n"
                        "graphs), compiled during warm-up, so keep --warmup and --eval-warmup >= 1; memory is\n"
                        "still measured eagerly")
    p.add_argument("--compile-scope", choices=["layers", "model"], default="layers",
                   help="compile each decoder layer (regional: one compilation serves every layer) or the whole\n"
                        "model (default: %(default)s)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="the variants to run (default: all)")
    p.add_argument("--no-eval", action="store_true", help="time training only (no eval or merged-eval forwards)")
    p.add_argument("--profile", action="store_true",
                   help="CUDA: also profile one step per variant and report the GPU's kernel time (busy)")
    p.add_argument("--peak-tflops", type=float,
                   help="the device's peak TFLOP/s in --dtype, for MFU (default on H100 / H200 in bf16: 989.4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the base model, adapters and tokens")
    p.add_argument("--json", metavar="PATH", help="also write every number (and the setup) to this JSON file")
    p.add_argument("--quiet", action="store_true", help="print only the final tables")
    p.add_argument("--quant", choices=["4bit"],
                   help="4-bit base instead: base-weight memory and step time against the dense base, mmft QDoRA "
                        "against PEFT QDoRA; with --llava, a LLaVA-1.5-sized stack under --recipe")
    p.add_argument("--llava", choices=sorted(LLAVA_SIZES),
                   help="with --quant: peak memory and step time of a random LLaVA of this size (7b: LLaVA-1.5-7B), "
                        "4-bit and bf16 base, the recipe's adapters, batch, length and gradient checkpointing")
    p.add_argument("--recipe", default="configs/llava_dora.yaml", help="the recipe --llava follows (default: "
                   "%(default)s); --batch / --seq override its per-device batch and max length")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.llava and not args.quant:
        raise BenchError("--llava measures a 4-bit base: add --quant 4bit")
    if args.llava:  # the recipe's batch and length unless given
        args.batch_override, args.seq_override = args.batch, args.seq
    return finish_args(args)


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the preset or the device, and check the sizes."""
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.kv_heads is None:
        args.kv_heads = args.heads
    if args.intermediate is None:
        args.intermediate = int(round(2.6875 * args.hidden))
    if args.alpha is None:
        args.alpha = 2.0 * args.rank
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(args.device).type == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise BenchError(f"--device {args.device}: CUDA is not available on this machine")
    if args.dtype is None:
        args.dtype = "bfloat16" if on_cuda else "float32"
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    defaults = {"warmup": 3 if on_cuda else 1, "rounds": 10 if on_cuda else 5,
                "eval_warmup": 3 if on_cuda else 1, "eval_rounds": 10 if on_cuda else 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.variants = list(dict.fromkeys(args.variants))
    if args.peak_tflops is None and on_cuda and args.dtype == "bfloat16":
        name = torch.cuda.get_device_name(args.device)
        args.peak_tflops = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    if args.compile and (args.warmup < 1 or args.eval_warmup < 1):
        raise BenchError("--compile: --warmup and --eval-warmup must be at least 1 (compilation happens there)")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        raise BenchError(f"--hidden {args.hidden} / --heads {args.heads} / --kv-heads {args.kv_heads}: the hidden "
                         "size must divide into heads and the heads into key/value heads")
    for key in ("hidden", "layers", "heads", "intermediate", "seq", "batch", "vocab", "rank", "rounds",
                "eval_rounds", "threads"):
        if getattr(args, key) < 1:
            raise BenchError(f"--{key.replace('_', '-')} {getattr(args, key)}: must be at least 1")
    return args


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


# -- models ----------------------------------------------------------------------------------------------------------
def build_base(args: argparse.Namespace) -> nn.Module:
    """A randomly initialised Llama-style causal LM of the requested size, on the device, base weights in --dtype."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seq, 64), attention_dropout=0.0, tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    with torch.device(args.device):  # initialise on the device: a 1B model initialises slowly on CPU
        model = LlamaForCausalLM(config)
    return model.to(compute_dtype(args)).eval()


def make_variant(base: nn.Module, name: str, args: argparse.Namespace) -> nn.Module:
    """A copy of ``base`` with variant ``name``'s adapters (rank, alpha, targets and dropout 0 shared by all)."""
    library, _, options = VARIANTS[name]
    options = {k: v for k, v in options.items() if k != "fused"}
    model = copy.deepcopy(base)
    if library == "mmft":
        from mmft.adapters import AdapterConfig, apply_adapters

        apply_adapters(model, AdapterConfig(r=args.rank, alpha=args.alpha, dropout=0.0, target_modules=TARGETS,
                                             **options))
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
                        task_type="CAUSAL_LM", **options)
    return get_peft_model(model, config)  # autocast_adapter_dtype=True (default): fp32 adapters


def adapter_tensors(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """``{module name in the base model: {"A", "B", "m"?}}`` for mmft and PEFT models alike."""
    from mmft.adapters import find_adapted_modules

    layers = find_adapted_modules(model)
    if layers:
        found = {}
        for name, layer in layers.items():
            found[name] = {"A": layer.lora_A.weight, "B": layer.lora_B.weight}
            if layer.use_dora:
                found[name]["m"] = layer.lora_magnitude_vector
        return found
    from peft.tuners.lora import LoraLayer

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            key = name.removeprefix("base_model.model.")
            found[key] = {"A": module.lora_A["default"].weight, "B": module.lora_B["default"].weight}
            if "default" in module.lora_magnitude_vector:
                found[key]["m"] = module.lora_magnitude_vector["default"].weight
    return found


def randomize_adapters(models: dict[str, nn.Module], base: nn.Module, seed: int) -> None:
    """Give every variant the same non-zero A, B (and magnitude, near ||W||) so the update is not trivial."""
    per_model = {name: adapter_tensors(model) for name, model in models.items()}
    per_model = {name: tensors for name, tensors in per_model.items() if tensors}  # full fine-tuning has none
    if not per_model:
        return
    names = list(per_model)
    modules = sorted(per_model[names[0]])
    for name, tensors in per_model.items():
        if sorted(tensors) != modules:
            raise BenchError(f"variant {name} adapts different modules than the others: cannot compare them")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            weight = base.get_submodule(module).weight.float().cpu()
            out_features, in_features = weight.shape
            rank = per_model[names[0]][module]["A"].shape[0]
            a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) / in_features**0.5
            b = torch.randn(out_features, rank, generator=generator) * 0.02
            m = torch.linalg.vector_norm(weight, dim=1) * (1 + 0.05 * torch.randn(out_features, generator=generator))
            for name in names:
                tensors = per_model[name][module]
                tensors["A"].copy_(a)
                tensors["B"].copy_(b)
                if "m" in tensors:
                    tensors["m"].copy_(m)


@dataclass
class Variant:
    """One model under test and its optimizer."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    runner: nn.Module | None = None  # what timed steps call: the model, or its torch.compile wrapper
    trainable_params: int = 0
    step_times: list[float] = field(default_factory=list)
    step_peaks: list[int] = field(default_factory=list)
    eval_times: list[float] = field(default_factory=list)
    merged_eval_times: list[float] = field(default_factory=list)
    saved_bytes: int | None = None
    peak_step_bytes: int | None = None
    static_bytes: int = 0
    fused: bool = True  # mmft.adapters.kernels on (where they can run)
    device_busy_s: float | None = None


# -- measurement -----------------------------------------------------------------------------------------------------
def storage_key(t: Tensor) -> tuple:
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


class _Held:
    """What the pack hook returns: the graph holds this wrapper exactly as long as it holds the saved tensor."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


class SavedTensorMeter:
    """Bytes held by the autograd graph for backward, deduplicated by storage, parameters and buffers excluded.

    Use around the forward pass; call `live_bytes` while the graph (the loss) is alive, before ``backward``.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {storage_key(t) for t in exclude}
        self._held: list[weakref.ref] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: Tensor) -> _Held:
        # detached: a saved output would otherwise hold its own grad_fn through the wrapper (a reference cycle that
        # keeps a dropped graph alive until the garbage collector runs); backward only needs the values
        held = _Held(tensor.detach())
        self._held.append(weakref.ref(held))
        return held

    @staticmethod
    def _unpack(held: _Held) -> Tensor:
        return held.tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def live_bytes(self) -> int:
        storages: dict[tuple, int] = {}
        for ref in self._held:
            held = ref()
            if held is None:
                continue
            key = storage_key(held.tensor)
            if key not in self._excluded:
                storages[key] = held.tensor.untyped_storage().nbytes()
        return sum(storages.values())


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak CPU bytes allocated by torch while ``fn`` runs, above what was allocated when it started.

    torch keeps no CPU allocator statistics; the profiler with ``profile_memory=True`` records every allocation and
    free of torch's CPU allocator (with its size), which are replayed here in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:
        raw = prof.profiler.kineto_results.events()
    except AttributeError as err:  # a private profiler API: fail loudly if a torch release renames it
        raise BenchError(f"torch {torch.__version__}: the profiler's raw memory events are not reachable: {err}")
    events = sorted(((e.start_ns(), e.nbytes()) for e in raw
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda item: item[0])
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def static_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> int:
    """Parameters and buffers (by storage) plus optimizer state: the memory a variant holds between steps."""
    storages: dict[tuple, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        storages[storage_key(t)] = t.untyped_storage().nbytes()
    if optimizer is not None:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, Tensor):
                    storages[storage_key(value)] = value.untyped_storage().nbytes()
    return sum(storages.values())


def model_tensors(model: nn.Module) -> list[Tensor]:
    return list(model.parameters()) + list(model.buffers())


def loss_of(model: nn.Module, ids: Tensor, args: argparse.Namespace) -> Tensor:
    with autocast_context(args):
        return model(input_ids=ids, labels=ids, use_cache=False).loss


def train_step(variant: Variant, ids: Tensor, args: argparse.Namespace, meter: SavedTensorMeter | None = None) -> None:
    """Forward, LM cross-entropy, backward (``args.accumulate`` times), AdamW step, zero_grad. With ``meter``: one
    forward and backward, recording the saved bytes too (on the eager model: saved-tensor hooks do not reach into
    compiled graphs)."""
    from mmft.adapters.kernels import fused_kernels

    with fused_kernels(variant.fused):
        if meter is None:
            for _ in range(args.accumulate):  # micro-batches of one optimizer step
                if args.compile == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                loss = loss_of(variant.model if variant.runner is None else variant.runner, ids, args)
                loss.backward()
        else:
            with meter, eager():
                loss = loss_of(variant.model, ids, args)
            variant.saved_bytes = meter.live_bytes()
            loss.backward()
    variant.optimizer.step()
    variant.optimizer.zero_grad(set_to_none=True)


def eager() -> AbstractContextManager:
    """Run compiled modules eagerly inside the block: saved-tensor hooks and the CPU profiler need eager ops."""
    return torch.compiler.set_stance("force_eager")


def device_busy_seconds(fn: Callable[[], object]) -> float:
    """Seconds the GPU spent in kernels and copies while ``fn`` ran (torch.profiler's self device time, summed):
    against the step's wall time it says how far the step is bound by the host launching work."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    # device-side events only (kernels, copies, memsets): the host ops that launched them carry the same time again
    device = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in device) / 1e6


def eval_forward(model: nn.Module, ids: Tensor, args: argparse.Namespace) -> Tensor:
    with torch.no_grad(), autocast_context(args):
        return model(input_ids=ids, use_cache=False).logits


def timed(fn: Callable[[], object], args: argparse.Namespace) -> float:
    synchronize(args)
    start = time.perf_counter()
    fn()
    synchronize(args)
    return time.perf_counter() - start


def round_robin(names: list[str], rounds: int, run: Callable[[str], None]) -> None:
    """``rounds`` passes over ``names``, the order rotated by one each pass (no variant always runs first)."""
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            run(name)


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# -- the benchmark ---------------------------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    """Build, check, time and measure every variant; returns the JSON-ready results (`collect_results`)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=generator).to(device)
    check_ids = ids[:1]  # equivalence checks on one sequence: cheap, and enough to catch a wrong formula

    started = time.perf_counter()
    base = build_base(args)
    variants = {name: Variant(name, make_variant(base, name, args), fused=VARIANTS[name][2].get("fused", True))
                for name in args.variants}
    log(f"built base + {len(variants)} variants in {time.perf_counter() - started:.1f}s")

    checks: dict[str, dict[str, float]] = {"init_vs_base": {}, "randomized": {}, "merged_vs_unmerged": {}}
    base_logits = eval_forward(base, check_ids, args)
    for name, v in variants.items():
        v.model.eval()
        checks["init_vs_base"][name] = max_abs_diff(eval_forward(v.model, check_ids, args), base_logits)
    randomize_adapters({n: v.model for n, v in variants.items()}, base, args.seed + 2)
    logits = {name: eval_forward(v.model, check_ids, args) for name, v in variants.items()}
    for a, b in [("mmft_dora", "peft_dora"), ("mmft_lora", "peft_lora"), ("mmft_dora_lean", "mmft_dora"),
                 ("mmft_dora_nodetach", "mmft_dora"), ("mmft_dora_unfused", "mmft_dora")]:
        if a in logits and b in logits:
            checks["randomized"][f"{a} vs {b}"] = max_abs_diff(logits[a], logits[b])
    update_size = max(max_abs_diff(value, base_logits) for value in logits.values())
    # a wrong formula moves the logits by about as much as the update does; rounding moves them far less (in bf16,
    # through many layers, a good part of a logit: PEFT's DoRA is not even exactly the base model at init there)
    relative = 1e-4 if compute_dtype(args) == torch.float32 else 5e-2
    tolerance = relative * max(1.0, base_logits.float().abs().max().item())
    log(f"equivalence checks (max |logit difference|; the update itself moves the logits by {update_size:.3g}, "
        f"tolerance {tolerance:.3g}):")
    for group, values in checks.items():
        for key, value in values.items():
            log(f"  {group}: {key}: {value:.3g}")
    bad = {key: value for group in ("init_vs_base", "randomized") for key, value in checks[group].items()
           if not value <= tolerance}
    if bad or not update_size > tolerance:
        raise BenchError(f"variants disagree beyond {tolerance:.3g} (max |logit difference|): {bad}, or the random "
                         f"adapters hardly change the model ({update_size:.3g})")
    checks["update_vs_base"] = {"largest": update_size}
    checks["tolerance"] = {"max_abs_logit_diff": tolerance}

    for v in variants.values():
        v.model.train()
        params = [p for p in v.model.parameters() if p.requires_grad]
        v.trainable_params = sum(p.numel() for p in params)
        v.optimizer = torch.optim.AdamW(params, lr=args.lr)
        v.runner = compiled(v.model, args)

    names = list(variants)
    started = time.perf_counter()
    for _ in range(args.warmup):
        for name in names:
            train_step(variants[name], ids, args)
    for name in names:  # one untimed step each for memory: saved bytes (hooks) and, on CPU, the profiled peak
        v = variants[name]
        meter = SavedTensorMeter(exclude=model_tensors(v.model))
        if on_cuda:
            train_step(v, ids, args, meter)
        else:
            v.peak_step_bytes = cpu_peak_bytes(lambda v=v, meter=meter: train_step(v, ids, args, meter))
        v.static_bytes = static_bytes(v.model, v.optimizer)
    if args.profile and on_cuda:
        for v in variants.values():
            v.device_busy_s = device_busy_seconds(lambda v=v: train_step(v, ids, args))

    # CUDA graphs keep their memory in pools allocated while recording: a step allocates nothing measurable
    track_peaks = on_cuda and args.compile != "reduce-overhead"

    def timed_step(name: str) -> None:
        v = variants[name]
        if track_peaks:
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        v.step_times.append(timed(lambda: train_step(v, ids, args), args))
        if track_peaks:
            v.step_peaks.append(torch.cuda.max_memory_allocated(device) - before)

    gc.collect()  # drop the profiler's event objects now rather than inside a timed step
    round_robin(names, args.rounds, timed_step)
    if track_peaks:
        for v in variants.values():
            v.peak_step_bytes = int(statistics.median(v.step_peaks))
    log(f"training: {args.warmup} warmup + 1 memory + {args.rounds} timed steps per variant in "
        f"{time.perf_counter() - started:.1f}s")
    eval_names = [] if args.no_eval else [name for name in EVAL_VARIANTS if name in variants]
    if not eval_names:
        return collect_results(args, variants, base, checks, [], [])

    started = time.perf_counter()
    eval_models = {name: compiled(variants[name].model, args) for name in eval_names} | {BASE: compiled(base, args)}
    eval_times: dict[str, list[float]] = {name: [] for name in eval_models}
    for model in eval_models.values():
        model.eval()
    for _ in range(args.eval_warmup):
        for name, model in eval_models.items():
            eval_forward(model, ids, args)
    round_robin(list(eval_models), args.eval_rounds,
                lambda name: eval_times[name].append(timed(lambda: eval_forward(eval_models[name], ids, args), args)))

    merged_models = {BASE: compiled(base, args)}
    for name in eval_names:
        before = eval_forward(variants[name].model, check_ids, args)
        merged = merge_variant(variants[name].model)
        checks["merged_vs_unmerged"][name] = max_abs_diff(eval_forward(merged, check_ids, args), before)
        merged_models[name] = compiled(merged, args)
        log(f"  merged_vs_unmerged: {name}: {checks['merged_vs_unmerged'][name]:.3g}")
    merged_times: dict[str, list[float]] = {name: [] for name in merged_models}
    for _ in range(args.eval_warmup):
        for name, model in merged_models.items():
            eval_forward(model, ids, args)
    round_robin(list(merged_models), args.eval_rounds,
                lambda name: merged_times[name].append(timed(lambda: eval_forward(merged_models[name], ids, args),
                                                             args)))
    log(f"eval: unmerged and merged, {args.eval_warmup} warmup + {args.eval_rounds} timed forwards per model in "
        f"{time.perf_counter() - started:.1f}s")
    for name in eval_names:
        variants[name].eval_times = eval_times[name]
        variants[name].merged_eval_times = merged_times[name]
    return collect_results(args, variants, base, checks, eval_times[BASE], merged_times[BASE])


def compiled(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """With ``--compile``: ``torch.compile`` in the chosen mode, of each decoder layer in place (``--compile-scope
    layers``: all layers share one compilation, so compiling takes seconds, not minutes) or of the whole model (a fresh
    wrapper). Without it: the model."""
    if not args.compile:
        return model
    # every variant, in train and eval mode, recompiles the shared decoder-layer code: keep them all cached
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if args.compile_scope == "model":
        return torch.compile(model, mode=args.compile)
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise BenchError(f"--compile-scope layers: {type(model).__name__} has no decoder layers")
    for layer in layers:
        layer.compile(mode=args.compile)
    return model


def merge_variant(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights: mmft ``merge_adapters`` (in place) or PEFT ``merge_and_unload``."""
    from mmft.adapters import find_adapted_modules, merge_adapters

    if find_adapted_modules(model):
        merge_adapters(model)
        return model
    return model.merge_and_unload()


def step_flops(args: argparse.Namespace) -> float:
    """The useful floating-point operations of one LoRA training step, the numerator of MFU (the same for every
    variant, so MFU ranks variants as their step times do).

    Frozen linear layers (q, k, v, o, gate, up, down, lm_head) cost ``2 N T`` forward and ``2 N T`` backward (input
    gradients only: no weight gradients) for ``N`` weights and ``T`` tokens; causal attention ``2 T S d`` forward and
    twice that backward per layer (S the sequence, d the hidden size); each rank-r adapter ``2 r (in + out) T`` forward
    and three times that in all; times the micro-batches of a step. DoRA's norm and scaling, embeddings, norms and
    the optimizer are not counted.
    """
    tokens, hidden, layers = args.batch * args.seq, args.hidden, args.layers
    kv = hidden * args.kv_heads // args.heads
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
              (hidden, args.intermediate), (hidden, args.intermediate), (args.intermediate, hidden)]
    frozen = layers * sum(i * o for i, o in shapes) + hidden * args.vocab
    adapters = layers * sum(args.rank * (i + o) for i, o in shapes)
    attention = layers * 6 * tokens * args.seq * hidden
    micro_batches = getattr(args, "accumulate", 1)
    return (4.0 * frozen * tokens + attention + 6.0 * adapters * tokens) * micro_batches


def device_name(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; platform.processor() is often empty
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} CPU ({args.threads} threads)"


def collect_results(args: argparse.Namespace, variants: dict[str, Variant], base: nn.Module,
                    checks: dict, base_eval: list[float], base_merged_eval: list[float]) -> dict:
    """Medians, ratios against the README's targets, and the setup, as one JSON-ready dict."""
    import peft
    import transformers

    median = statistics.median
    flops = step_flops(args)
    rows: dict[str, dict] = {}
    for name, v in variants.items():
        step_time = median(v.step_times)
        rows[name] = {
            "label": VARIANTS[name][1],
            "trainable_params": v.trainable_params,
            "step_time_s": step_time,
            "device_busy_s": v.device_busy_s,
            "mfu": flops / step_time / (args.peak_tflops * 1e12) if args.peak_tflops else None,
            "step_time_min_s": min(v.step_times),
            "step_times_s": v.step_times,
            "saved_bytes": v.saved_bytes,
            "peak_step_bytes": v.peak_step_bytes,
            "train_peak_bytes": None if v.peak_step_bytes is None else v.static_bytes + v.peak_step_bytes,
            "static_bytes": v.static_bytes,
            "eval_time_s": median(v.eval_times) if v.eval_times else None,
            "eval_times_s": v.eval_times,
            "merged_eval_time_s": median(v.merged_eval_times) if v.merged_eval_times else None,
            "merged_eval_times_s": v.merged_eval_times,
        }
    if base_eval:
        rows[BASE] = {"label": "base model (no adapters)", "eval_time_s": median(base_eval),
                      "eval_times_s": base_eval, "merged_eval_time_s": median(base_merged_eval),
                      "merged_eval_times_s": base_merged_eval}
    ratios = {}
    for key, num, den, quantity, target, note in RATIOS:
        if rows.get(num, {}).get(quantity) is None or rows.get(den, {}).get(quantity) is None:
            continue  # a variant or a figure this run did not measure
        value = rows[num][quantity] / rows[den][quantity]
        ratios[key] = {"value": value, "target": target, "meets_target": None if target is None else value <= target,
                       "note": note}
    for name in EVAL_VARIANTS:
        if rows.get(name, {}).get("merged_eval_time_s") is None:
            continue
        value = rows[name]["merged_eval_time_s"] / rows[BASE]["merged_eval_time_s"]
        ratios[f"{name} merged/base eval"] = {"value": value, "target": None, "meets_target": None,
                                              "note": "merged inference"}
    sizes = {key: getattr(args, key) for key in ("preset", "hidden", "layers", "heads", "kv_heads", "intermediate",
                                                 "seq", "batch", "vocab", "rank", "alpha")}
    return {
        "setup": {
            "command": shlex.join(["python", "scripts/bench_adapters.py", *args.argv]),
            "device": str(args.device), "device_name": device_name(args), "dtype": args.dtype,
            "precision": "float32" if args.dtype == "float32" else
                         f"base weights {args.dtype}, fp32 adapters, torch.autocast({args.dtype})",
            "threads": args.threads, "seed": args.seed, "lr": args.lr, "compile": args.compile,
            "accumulate": args.accumulate,
            "compile_scope": args.compile_scope if args.compile else None, "variants": args.variants,
            "step_flops": flops, "peak_tflops": args.peak_tflops,
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "sizes": sizes, "targets": TARGETS,
            "base_params": sum(p.numel() for p in base.parameters()),
            "timing": {"warmup": args.warmup, "rounds": args.rounds, "eval_warmup": args.eval_warmup,
                       "eval_rounds": args.eval_rounds, "statistic": "median"},
            "memory_method": "CUDA allocator peak per timed step" if torch.device(args.device).type == "cuda"
                             else "torch.profiler CPU allocation/free events of one step, replayed",
        },
        "checks_max_abs_logit_diff": checks,
        "variants": rows,
        "ratios": ratios,
    }


# -- 4-bit base (--quant 4bit) ---------------------------------------------------------------------------------------
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


def quant_tables(results: dict) -> str:
    """The --quant report as markdown: one row per variant, then the ratios."""
    setup = results["setup"]
    lines = [" ".join(f"{k}: {v}" for k, v in setup.items() if k != "adapter"), ""]
    columns = [("trainable", "trainable_params", lambda v: f"{v:,}"),
               ("base weights MiB", "base_weight_bytes", lambda v: _mb(v)),
               ("step ms", "step_time_s", _ms), ("saved MiB", "saved_bytes", _mb),
               ("step peak MiB", "peak_step_bytes", _mb), ("train peak MiB", "train_peak_bytes", _mb),
               ("peak GiB", "peak_bytes", lambda v: f"{v / 2**30:,.2f}")]
    rows = results["variants"]
    present = [c for c in columns if any(c[1] in row for row in rows.values())]
    lines += ["| variant | " + " | ".join(c[0] for c in present) + " |", "|---|" + "---:|" * len(present)]
    for row in rows.values():
        lines.append(f"| {row['label']} | " + " | ".join(c[2](row[c[1]]) for c in present) + " |")
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {key} | {value:.3f} |" for key, value in results["ratios"].items()]
    return "\n".join(lines)



# -- output ----------------------------------------------------------------------------------------------------------
def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:,.1f}"


def markdown_tables(results: dict) -> str:
    """The per-variant table and the ratio table, as markdown."""
    rows = results["variants"]
    lines = [
        "| variant | trainable | step ms | GPU busy ms | MFU | saved MiB | step peak MiB | train peak MiB | eval ms "
        "| merged eval ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        trainable = f"{row['trainable_params']:,}" if "trainable_params" in row else "-"
        mfu = "-" if row.get("mfu") is None else f"{100 * row['mfu']:.1f}%"
        lines.append(f"| {row['label']} | {trainable} | {_ms(row.get('step_time_s'))} | "
                     f"{_ms(row.get('device_busy_s'))} | {mfu} | "
                     f"{_mb(row.get('saved_bytes'))} | {_mb(row.get('peak_step_bytes'))} | "
                     f"{_mb(row.get('train_peak_bytes'))} | {_ms(row.get('eval_time_s'))} | "
                     f"{_ms(row.get('merged_eval_time_s'))} |")
    lines += ["", "| ratio | value | target | |", "|---|---:|---:|---|"]
    for key, ratio in results["ratios"].items():
        target = "-" if ratio["target"] is None else f"<= {ratio['target']:.2f}"
        verdict = {True: "met", False: "**missed**", None: ""}[ratio["meets_target"]]
        change = f" ({100 * (ratio['value'] - 1):+.1f}%)" if key.startswith("detach") else ""
        lines.append(f"| {key} | {ratio['value']:.3f}{change} | {target} | {verdict} {ratio['note']} |".rstrip())
    return "\n".join(lines)


def setup_line(results: dict) -> str:
    s = results["setup"]
    z = s["sizes"]
    return (f"{s['device_name']}, {s['precision']}, torch {s['torch']}, transformers {s['transformers']}, peft "
            f"{s['peft']}; Llama-style {s['base_params'] / 1e6:,.1f}M params: hidden {z['hidden']}, {z['layers']} "
            f"layers, {z['heads']}/{z['kv_heads']} heads, MLP {z['intermediate']}, vocab {z['vocab']}; batch "
            f"{z['batch']} x {z['seq']} tokens; rank {z['rank']}, alpha {z['alpha']:g} on {', '.join(s['targets'])}; "
            f"median of {s['timing']['rounds']} interleaved rounds; memory: {s['memory_method']}"
            + (f"; timed models torch.compile'd (mode {s['compile']}, {s['compile_scope']})" if s.get("compile")
               else ""))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    log = (lambda _: None) if args.quiet else print
    if args.quant:
        results = run_llava_benchmark(args, log) if args.llava else run_quant_benchmark(args, log)
        print()
        print(quant_tables(results))
    else:
        results = run_benchmark(args, log=log)
        print()
        print(setup_line(results))
        print()
        print(markdown_tables(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    try:
        main()
    except BenchError as err:
        sys.exit(f"bench_adapters: {err}")
