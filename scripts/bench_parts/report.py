"""The benchmark's results: collected per variant with the ratios, FLOPs and device, written as JSON and as the
Markdown tables the README quotes."""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics

import torch
from torch import nn

from bench_parts.settings import BASE, EVAL_VARIANTS, RATIOS, TARGETS, VARIANTS
from bench_parts.variants import Variant


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
