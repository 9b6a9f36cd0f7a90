"""Memory and time of the training loss with and without the full logits (mmft.models.lm_loss), side by side.

    python scripts/bench_loss.py                       # Qwen's 151,936-token vocabulary, hidden 1024, 2 x 1024 tokens
    python scripts/bench_loss.py --vocab 32064 --json loss.json

The language model is stood in for by trainable last hidden states (what the loss sees and where its gradient goes);
the head is a frozen linear layer of the vocabulary's size, as under LoRA / DoRA. Half of each row is supervised (the
reply), the rest is prompt. For each path: the peak CPU bytes torch allocates during forward + backward of the loss
above those held before (the profiler's allocation events replayed, as scripts/bench_adapters.py measures steps), and
the median time of ``--rounds`` runs, the two paths interleaved. Both paths give the same loss and gradients
(tests/test_lm_loss.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_parts.meters import cpu_peak_bytes  # noqa: E402

from mmft.models.lm_loss import IGNORE_INDEX, next_token_loss  # noqa: E402


class LastHiddenStates(nn.Module):
    """Returns fixed hidden states: the language model's output, as the loss receives it."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = nn.Parameter(hidden)

    def forward(self, **_: object) -> object:
        return type("Output", (), {"last_hidden_state": self.hidden})()


class StandIn(nn.Module):
    """``model.model(...)`` gives the hidden states, ``lm_head`` the logits: the shape of a transformers model."""

    def __init__(self, hidden: torch.Tensor, vocab: int) -> None:
        super().__init__()
        self.model = LastHiddenStates(hidden)
        # frozen, as under adapters: the gradient flows into the hidden states (the adapted language model)
        self.lm_head = nn.Linear(hidden.shape[-1], vocab, bias=False).requires_grad_(False)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, use_cache: bool = False, **_: object) -> object:
        return type("Output", (), {"logits": self.lm_head(self.model.hidden)})()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = StandIn(torch.randn(args.batch, args.seq, args.hidden) * 0.1, args.vocab)
    labels = torch.randint(0, args.vocab, (args.batch, args.seq))
    labels[:, : args.seq // 2] = IGNORE_INDEX

    def run(chunked: bool) -> float:
        model.zero_grad(set_to_none=True)
        # sharded=True is the plain path: the whole model's logits, then the supervised ones
        loss = next_token_loss(model, {}, labels, sharded=not chunked)
        loss.backward()
        return loss.item()

    results = {}
    for name, chunked in (("plain", False), ("chunked", True)):
        run(chunked)  # warm-up
        results[name] = {"peak_bytes": cpu_peak_bytes(lambda chunked=chunked: run(chunked)), "times_s": []}
    for _ in range(args.rounds):
        for name, chunked in (("plain", False), ("chunked", True)):
            start = time.perf_counter()
            run(chunked)
            results[name]["times_s"].append(time.perf_counter() - start)
    for row in results.values():
        row["median_s"] = statistics.median(row["times_s"])
    ratio = results["chunked"]["peak_bytes"] / results["plain"]["peak_bytes"]
    print(f"vocab {args.vocab}, hidden {args.hidden}, {args.batch} x {args.seq} tokens (half supervised), "
          f"{torch.get_num_threads()} threads")
    print("| loss | peak MiB | median s |\n|---|---:|---:|")
    for name, row in results.items():
        print(f"| {name} | {row['peak_bytes'] / 2**20:,.0f} | {row['median_s']:.2f} |")
    print(f"chunked / plain peak memory: {ratio:.3f} (target <= 0.3)")
    if args.json:
        args.json.write_text(json.dumps({"setup": vars(args) | {"json": str(args.json)}, "results": results,
                                         "peak_ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
