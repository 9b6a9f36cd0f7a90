"""Training throughput on real length mixes, side by side in one run: padded vs packed batches, the plain vs the
chunked (or fused) loss, DoRA's norm per micro-batch vs per optimizer step, and mmft vs transformers' ``Trainer``
+ PEFT on the same model and data.

    python scripts/bench_train.py --json bench_train.json                  # CPU defaults, a few minutes
    python scripts/bench_train.py --mix video --json bench_train_video.json
    python scripts/bench_train.py --device cuda --dtype bfloat16 --preset 1b --json bench_train_gpu.json

The model is a random Llama-style language model (no download) with DoRA (or LoRA) on q/k/v/o/gate/up/down; an
example is its visual tokens (random ids in the language model's input: the vision tower's cost does not depend on
how the text is batched), then its text, the end of which (the replies) is supervised. Example lengths come from a
modelled mix (``--mix``; :mod:`bench_parts.lengths`), a LLaVA-format file (``--llava-json`` with ``--tokenizer``),
or a file of lengths (``--lengths``). Parts (``--parts``):

- ``packing``: the same examples in padded batches of ``--batch`` (shuffled, as a LLaVA run without length
  grouping) and packed, rows of ``--row-tokens`` filled longest first by mmft's sampler (``--rows`` a batch, by
  default as many as hold the padded batch's tokens), and transformers' ``Trainer`` + PEFT DoRA on the padded
  batches in the same order (``--no-trainer`` leaves it out): tokens per second (real tokens, padding not
  counted), padding share, and the peak memory of a forward + backward;
- ``loss``: the loss alone (last hidden states -> head -> cross-entropy -> backward) at ``--loss-vocab`` (Qwen's
  151,936), the plain loss against mmft's chunked one (and Liger's fused kernel on CUDA when installed);
- ``dora``: a step of ``--accumulate`` micro-batches, LoRA against DoRA with its detached norm computed once per
  step (mmft's default) and once per micro-batch.

Times are medians or totals of interleaved runs (``--rounds``); on a shared machine compare within one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loss import StandIn  # noqa: E402
from bench_parts import lengths as mixes  # noqa: E402
from bench_parts.meters import peak_bytes, timed  # noqa: E402
from bench_parts.report import device_name  # noqa: E402
from bench_parts.settings import autocast_context, synchronize  # noqa: E402
from bench_parts.variants import build_base, make_variant  # noqa: E402

from data_modules.sampler import pack_by_length  # noqa: E402
from mmft.models.batch_rows import pad_rows  # noqa: E402
from mmft.models.lm_loss import IGNORE_INDEX, next_token_loss  # noqa: E402
from mmft.models.packing import pack_training_view  # noqa: E402
from mmft.models.varlen_attention import use_varlen_sdpa, varlen_arguments  # noqa: E402

PRESETS = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (32, 64, 2, 2, 2, 512),  # for the smoke test
    "cpu": (256, 688, 4, 4, 4, 32_000),
    "1b": (2048, 8192, 16, 32, 8, 128_256),
}
PARTS = ("packing", "loss", "dora")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--mix", choices=sorted(mixes.MIXES), default="llava665k")
    parser.add_argument("--lengths", type=Path, help="a JSON list of [visual, text, supervised] lengths instead")
    parser.add_argument("--llava-json", type=Path, help="measure the lengths of this LLaVA-format file instead")
    parser.add_argument("--tokenizer", help="the tokenizer folder --llava-json is measured with")
    parser.add_argument("--steps", type=int, default=6, help="padded batches timed (their examples are packed too)")
    parser.add_argument("--batch", type=int, default=8, help="examples per padded batch")
    parser.add_argument("--rows", type=int, help="rows per packed batch (default: as many as the padded tokens)")
    parser.add_argument("--max-length", type=int, default=2048, help="the longest example")
    parser.add_argument("--row-tokens", type=int, default=4096, help="a packed row's length (data.max_tokens)")
    parser.add_argument("--no-trainer", action="store_true", help="leave transformers' Trainer + PEFT out")
    parser.add_argument("--method", choices=("dora", "lora"), default="dora")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--loss-vocab", type=int, default=151_936)
    parser.add_argument("--loss-tokens", type=int, default=2048, help="tokens of the loss part's batch")
    parser.add_argument("--accumulate", type=int, default=8, help="micro-batches of the dora part's step")
    parser.add_argument("--micro-seq", type=int, default=128, help="tokens of each dora-part micro-batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads, args.vocab = PRESETS[args.preset]
    args.seq = args.max_length
    args.parts = args.parts.split(",")
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"--parts: unknown {sorted(unknown)}")
    if args.llava_json and not args.tokenizer:
        parser.error("--llava-json needs --tokenizer")
    return args


def example_lengths(args: argparse.Namespace) -> list[mixes.ExampleLength]:
    count = args.steps * args.batch
    if args.lengths:
        return mixes.given(args.lengths)[:count]
    if args.llava_json:
        return mixes.measured(args.llava_json, args.tokenizer, count, args.max_length, args.seed)
    return mixes.draw(args.mix, count, args.max_length, args.seed)


def encode(examples: list[mixes.ExampleLength], vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels of each example: random ids, the last ``supervised`` tokens supervised."""
    rng = np.random.default_rng(seed)
    rows = []
    for example in examples:
        ids = rng.integers(3, vocab, size=example.total).tolist()
        labels = [IGNORE_INDEX] * (example.total - example.supervised) + ids[example.total - example.supervised:]
        rows.append((ids, labels))
    return rows


def padded_batch(rows: list[tuple[list[int], list[int]]], device: str) -> dict[str, Tensor]:
    ids, mask = pad_rows([r[0] for r in rows], 0, left=False)
    labels, _ = pad_rows([r[1] for r in rows], IGNORE_INDEX, left=False)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
            "media": {}}


def packed_batch(rows: list[tuple[list[int], list[int]]], max_length: int, device: str) -> dict[str, Tensor]:
    batch = pack_training_view(padded_batch(rows, "cpu"), row_tokens=max_length)
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}


def model_inputs(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model's inputs, as ``VisionLanguageModule`` gives them: a packed batch with its examples' boundaries."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
                **varlen_arguments(batch["packed_lengths"])}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def forward_backward(model: nn.Module, batch: dict[str, Tensor], args: argparse.Namespace) -> None:
    with autocast_context(args):
        loss = next_token_loss(model, model_inputs(batch), batch["labels"], kernel="chunked")
    loss.backward()


def packed_groups(rows: list[tuple[list[int], list[int]]], args: argparse.Namespace) -> list[list[int]]:
    """The examples of each packed batch: mmft's sampler's rows (longest first into the first row with room), so
    many rows a batch."""
    lengths = np.array([len(ids) for ids, _ in rows])
    packed_rows = pack_by_length(np.arange(len(rows)), lengths, args.row_tokens)
    per_batch = args.rows or max(1, round(args.batch * lengths.mean() / args.row_tokens))
    return [np.concatenate(packed_rows[i:i + per_batch]).tolist() for i in range(0, len(packed_rows), per_batch)]


def run_packing(args: argparse.Namespace, base: nn.Module, rows: list, log: Callable[[str], None]) -> dict:
    """Padded against packed batches of the same examples (and the Trainer on the padded ones): see the module
    docstring."""
    padded = [padded_batch(rows[i:i + args.batch], args.device) for i in range(0, len(rows), args.batch)]
    groups = packed_groups(rows, args)
    packed = [packed_batch([rows[i] for i in group], args.row_tokens, args.device) for group in groups]
    tokens = sum(len(ids) for ids, _ in rows)
    model = make_variant(base, f"mmft_{args.method}", args).train()
    use_varlen_sdpa(model)  # as VisionLanguageModule does: packed rows attend per example
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step(batch: dict[str, Tensor]) -> None:
        forward_backward(model, batch, args)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(padded[0])  # warm-up: kernels and the optimizer's state
    step(packed[0])
    results = {name: {"seconds": 0.0, "batches": len(batches),
                      "positions": sum(int(b["input_ids"].numel()) for b in batches)}
               for name, batches in (("padded", padded), ("packed", packed))}
    for _ in range(args.rounds):
        for index in range(max(len(padded), len(packed))):
            for name, batches in (("padded", padded), ("packed", packed)):
                if index < len(batches):
                    results[name]["seconds"] += timed(lambda b=batches[index]: step(b), args)
    for name, batches in (("padded", padded), ("packed", packed)):
        row = results[name]
        row["tokens_per_s"] = tokens * args.rounds / row["seconds"]
        row["padding_share"] = 1 - tokens / row["positions"]
        row["peak_bytes"] = max(peak_bytes(lambda b=b: forward_backward(model, b, args), args) for b in batches[:2])
        model.zero_grad(set_to_none=True)
        log(f"{name}: {row['batches']} batches, padding {row['padding_share']:.1%}, "
            f"{row['tokens_per_s']:,.0f} tokens/s, peak {row['peak_bytes'] / 2**20:,.0f} MiB")
    if not args.no_trainer:
        results["trainer_peft"] = run_trainer(args, base, rows, tokens, log)
    return {"examples": len(rows), "tokens": tokens, "rows_per_packed_batch": int(packed[0]["input_ids"].shape[0]),
            **results,
            "packed_over_padded_tokens_per_s": results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"]}


def run_trainer(args: argparse.Namespace, base: nn.Module, rows: list, tokens: int,
                log: Callable[[str], None]) -> dict:
    """transformers' Trainer with PEFT's adapter of the same rank on the padded batches, in their order: what a
    person would run instead (the plain loss over full logits, padded batches)."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = make_variant(base, f"peft_{args.method}", args).train()
    times: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__) -> None:
            synchronize(args)
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__) -> None:
            synchronize(args)
            times.append(time.perf_counter() - self.start)

    class InOrder(Trainer):  # the padded batches mmft trains on, in the same order
        def _get_train_sampler(self, *_: object, **__: object) -> SequentialSampler:
            return SequentialSampler(self.train_dataset)

    def collate(items: list[dict]) -> dict[str, Tensor]:
        batch = padded_batch([(item["input_ids"], item["labels"]) for item in items], "cpu")
        return {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}

    data = [{"input_ids": ids, "labels": labels} for ids, labels in rows]
    with tempfile.TemporaryDirectory() as out:
        settings = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch, num_train_epochs=args.rounds + 1,
            learning_rate=1e-5, lr_scheduler_type="constant", logging_strategy="no", save_strategy="no",
            report_to=[], disable_tqdm=True, dataloader_num_workers=0, use_cpu=args.device == "cpu",
            bf16=args.dtype == "bfloat16", remove_unused_columns=False, seed=args.seed)
        trainer = InOrder(model=model, args=settings, train_dataset=data, data_collator=collate,
                          callbacks=[StepTimes()])
        trainer.train()
        batch = {k: v.to(args.device) for k, v in collate(data[: args.batch]).items()}
        peak = peak_bytes(lambda: trainer.compute_loss(model, batch).backward(), args)
    steps = len(times) // (args.rounds + 1)
    seconds = sum(times[steps:])  # the first epoch warms up
    row = {"seconds": seconds, "batches": steps, "tokens_per_s": tokens * args.rounds / seconds, "peak_bytes": peak}
    log(f"Trainer + PEFT: {row['tokens_per_s']:,.0f} tokens/s, peak {peak / 2**20:,.0f} MiB")
    return row


def run_loss(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """The loss alone at ``--loss-vocab``: plain (full logits) against chunked (and Liger's fused kernel on CUDA)."""
    torch.manual_seed(args.seed)
    tokens = args.loss_tokens
    model = StandIn(torch.randn(1, tokens, args.hidden, device=args.device) * 0.1, args.loss_vocab).to(args.device)
    labels = torch.randint(0, args.loss_vocab, (1, tokens), device=args.device)
    labels[:, : tokens // 2] = IGNORE_INDEX  # the prompt
    kinds = {"plain": {"sharded": True}, "chunked": {"kernel": "chunked"}}
    if torch.device(args.device).type == "cuda" and _has_liger():
        kinds["fused_liger"] = {"kernel": "liger"}

    def run(kind: str) -> None:
        model.zero_grad(set_to_none=True)
        next_token_loss(model, {}, labels, **kinds[kind]).backward()

    results = {}
    for kind in kinds:
        run(kind)
        results[kind] = {"peak_bytes": peak_bytes(lambda kind=kind: run(kind), args), "seconds": []}
    for _ in range(args.rounds):
        for kind in kinds:
            results[kind]["seconds"].append(timed(lambda kind=kind: run(kind), args))
    for kind, row in results.items():
        row["median_s"] = statistics.median(row["seconds"])
        row["peak_over_plain"] = row["peak_bytes"] / results["plain"]["peak_bytes"]
        log(f"loss {kind}: peak {row['peak_bytes'] / 2**20:,.0f} MiB ({row['peak_over_plain']:.2f}x plain), "
            f"{row['median_s'] * 1e3:,.0f} ms")
    return {"vocab": args.loss_vocab, "tokens": tokens, "supervised": tokens // 2, **results}


def _has_liger() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def run_dora(args: argparse.Namespace, base: nn.Module, log: Callable[[str], None]) -> dict:
    """A step of ``--accumulate`` micro-batches: LoRA, DoRA (norm once a step), DoRA with the norm recomputed for
    every micro-batch (its cache cleared before each)."""
    torch.manual_seed(args.seed)
    micro = [torch.randint(3, args.vocab, (1, args.micro_seq), device=args.device) for _ in range(args.accumulate)]
    models = {"lora": make_variant(base, "mmft_lora", args).train(), "dora": make_variant(base, "mmft_dora", args)
              .train()}
    models["dora_norm_per_micro_batch"] = copy.deepcopy(models["dora"])
    optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
                  for name, m in models.items()}

    def step(name: str) -> None:
        model = models[name]
        for ids in micro:
            if name == "dora_norm_per_micro_batch":
                for module in model.modules():
                    if hasattr(module, "_norm_cache"):
                        module._norm_cache = None
            labels = ids.clone()
            labels[:, : args.micro_seq // 2] = IGNORE_INDEX
            with autocast_context(args):
                loss = next_token_loss(model, {"input_ids": ids}, labels, kernel="chunked") / len(micro)
            loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {name: [] for name in models}
    for name in models:
        step(name)  # warm-up
    for _ in range(args.rounds):
        for name in models:
            times[name].append(timed(lambda name=name: step(name), args))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {name: {"step_s": times[name], "median_s": medians[name], "over_lora": medians[name] / medians["lora"]}
              for name in models}
    log(", ".join(f"{name} {row['median_s'] * 1e3:,.0f} ms ({row['over_lora']:.3f}x LoRA)"
                  for name, row in result.items()))
    return {"accumulate": args.accumulate, "micro_batch_tokens": args.micro_seq, **result}


def environment(args: argparse.Namespace) -> dict:
    import peft
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = None
    return {"commit": commit, "date": date.today().isoformat(), "machine": device_name(args),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = print
    try:
        examples = example_lengths(args)
    except mixes.LengthsError as error:
        print(f"bench_train: {error}", file=sys.stderr)
        return 2
    totals = np.array([e.total for e in examples])
    log(f"{len(examples)} examples of {args.llava_json or args.lengths or args.mix}: tokens mean {totals.mean():.0f}, "
        f"median {np.median(totals):.0f}, max {totals.max()}; model {args.preset} ({args.hidden} hidden, "
        f"{args.layers} layers, vocab {args.vocab}), {args.method} r{args.rank}, {device_name(args)}")
    results: dict = {"setup": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               **environment(args)},
                     "lengths": {"mean": float(totals.mean()), "median": float(np.median(totals)),
                                 "max": int(totals.max())}}
    base = build_base(args) if {"packing", "dora"} & set(args.parts) else None
    if "packing" in args.parts:
        results["packing"] = run_packing(args, base, encode(examples, args.vocab, args.seed), log)
        log(f"packed / padded tokens per second: {results['packing']['packed_over_padded_tokens_per_s']:.2f} "
            "(goal >= 1.5)")
    if "loss" in args.parts:
        results["loss"] = run_loss(args, log)
    if "dora" in args.parts:
        results["dora"] = run_dora(args, base, log)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
