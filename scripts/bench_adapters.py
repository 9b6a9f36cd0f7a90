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
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from bench_parts.meters import (
    SavedTensorMeter,
    cpu_peak_bytes,
    device_busy_seconds,
    max_abs_diff,
    round_robin,
    static_bytes,
    timed,
)
from bench_parts.quant import LLAVA_SIZES, run_llava_benchmark, run_quant_benchmark
from bench_parts.report import collect_results, markdown_tables, quant_tables, setup_line
from bench_parts.settings import (
    BASE,
    COMPILE_MODES,
    DATASHEET_BF16_TFLOPS,
    EVAL_VARIANTS,
    PRESETS,
    VARIANTS,
    BenchError,
    compute_dtype,
)
from bench_parts.variants import (
    Variant,
    build_base,
    compiled,
    eval_forward,
    make_variant,
    merge_variant,
    model_tensors,
    randomize_adapters,
    train_step,
)


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
    p.add_argument("--recipe", default="configs/llava.yaml", help="the recipe --llava follows (default: "
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
