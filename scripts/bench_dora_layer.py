"""One adapted Linear layer, timed in isolation: where DoRA's cost over LoRA comes from.

    python scripts/bench_dora_layer.py                       # CPU, 2048 -> 2048, 1024 tokens
    python scripts/bench_dora_layer.py --device cuda --dtype bfloat16 --tokens 4096 --out 8192 --profile

Times forward + backward (training) and a no-grad forward (eval) for mmft LoRA / DoRA / DoRA with dora_recompute and
PEFT LoRA / DoRA on the same weights, interleaved, and prints medians and ratios, then how many compute operators
(kernel launches on a GPU; views and allocations not counted) one training step and one eval forward dispatch per
variant: where a step is launch-bound (small layers, a fast GPU), that count sets its time. ``--profile`` prints the
top operators of one mmft DoRA and one mmft LoRA training step (torch.profiler). Use scripts/bench_adapters.py for the
whole-model numbers the README quotes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mmft.adapters import AdapterConfig, apply_adapters


class One(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def build(args: argparse.Namespace) -> dict[str, nn.Module]:
    dtype = getattr(torch, args.dtype)
    base = One(args.d_in, args.out).to(args.device, dtype)
    variants = {}
    for name, cfg in {
        "mmft_lora": AdapterConfig(method="lora", r=args.rank, alpha=2 * args.rank, target_modules=["proj"]),
        "mmft_dora": AdapterConfig(method="dora", r=args.rank, alpha=2 * args.rank, target_modules=["proj"]),
        "mmft_dora_lean": AdapterConfig(method="dora", r=args.rank, alpha=2 * args.rank, target_modules=["proj"],
                                        dora_recompute=True),
    }.items():
        model = copy.deepcopy(base)
        apply_adapters(model, cfg)
        variants[name] = model
    for name, use_dora in (("peft_lora", False), ("peft_dora", True)):
        cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=["proj"], use_dora=use_dora)
        variants[name] = get_peft_model(copy.deepcopy(base), cfg)
    return variants


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(model: nn.Module, x: torch.Tensor, autocast: bool) -> None:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    y.float().square().mean().backward()
    model.zero_grad(set_to_none=True)


def eval_step(model: nn.Module, x: torch.Tensor, autocast: bool) -> None:
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        model(x)


# dispatched but launching no kernel: dtype arithmetic, allocations, host scalars
NO_KERNEL = {"aten.promote_types.default", "aten.empty.memory_format", "aten.new_empty.default",
             "aten.empty_like.default", "aten.scalar_tensor.default", "aten.lift_fresh.default"}


class ComputeOpCounter(TorchDispatchMode):
    """Counts the operators that compute (views, aliases and allocations excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and str(func) not in NO_KERNEL:
            self.count += 1
        return func(*args, **(kwargs or {}))


def compute_ops(fn) -> int:
    with ComputeOpCounter() as counter:
        fn()
    return counter.count


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--autocast", action="store_true", help="fp32 weights under bf16 autocast")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--d-in", type=int, default=2048)
    p.add_argument("--out", type=int, default=2048)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    variants = build(args)
    x = torch.randn(args.tokens, args.d_in, device=args.device, dtype=getattr(torch, args.dtype), requires_grad=True)
    results: dict[str, dict[str, list[float]]] = {n: {"train": [], "eval": []} for n in variants}
    for _ in range(3):
        for model in variants.values():
            train_step(model, x, args.autocast)
            eval_step(model, x, args.autocast)
    for _ in range(args.rounds):
        for name, model in variants.items():
            results[name]["train"].append(timed(lambda: train_step(model, x, args.autocast), args.device))
            results[name]["eval"].append(timed(lambda: eval_step(model, x, args.autocast), args.device))
    med = {n: {k: statistics.median(v) * 1e3 for k, v in r.items()} for n, r in results.items()}
    print(f"{args.device} {args.dtype} autocast={args.autocast} tokens={args.tokens} {args.d_in}->{args.out} "
          f"r={args.rank}, median of {args.rounds} interleaved rounds")
    print("| variant | train ms | eval ms |\n|---|---:|---:|")
    for name, m in med.items():
        print(f"| {name} | {m['train']:.3f} | {m['eval']:.3f} |")
    for a, b in (("mmft_dora", "mmft_lora"), ("peft_dora", "peft_lora"), ("mmft_dora", "peft_dora"),
                 ("mmft_dora_lean", "mmft_lora")):
        print(f"{a}/{b}: train {med[a]['train'] / med[b]['train']:.3f}, eval {med[a]['eval'] / med[b]['eval']:.3f}")
    print("\n| variant | compute ops per training step | per eval forward |\n|---|---:|---:|")
    for name, model in variants.items():
        print(f"| {name} | {compute_ops(lambda: train_step(model, x, args.autocast))} "
              f"| {compute_ops(lambda: eval_step(model, x, args.autocast))} |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        sort = "cuda_time_total" if args.device.startswith("cuda") else "cpu_time_total"
        for name in ("mmft_lora", "mmft_dora"):
            with profile(activities=activities) as prof:
                for _ in range(5):
                    train_step(variants[name], x, args.autocast)
                sync(args.device)
            print(f"\n== {name}: 5 training steps ==")
            print(prof.key_averages().table(sort_by=sort, row_limit=14))


if __name__ == "__main__":
    main()
