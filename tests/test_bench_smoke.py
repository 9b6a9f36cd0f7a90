"""scripts/bench_adapters.py at a tiny size: the report's structure, the equivalence checks and the two meters.

No timing assertions: timings on a shared machine prove nothing. The meters are checked on hand-counted examples.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import load_benchmark, load_script

TINY = ["--preset", "tiny", "--device", "cpu", "--threads", "1", "--warmup", "1", "--rounds", "1",
        "--eval-warmup", "0", "--eval-rounds", "1", "--quiet"]
FOUR = ["mmft_lora", "mmft_dora", "peft_lora", "peft_dora"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


@pytest.fixture(scope="module")
def results(bench, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    bench.main(TINY + ["--json", str(path)])
    return json.loads(path.read_text())


def test_four_variants_equal_base_at_init(bench):
    """B = 0 at init: mmft and PEFT LoRA / DoRA must all give the base model's logits, exactly or to rounding."""
    args = bench.parse_args(TINY)
    base = bench.build_base(args)
    ids = torch.randint(0, args.vocab, (2, args.seq), generator=torch.Generator().manual_seed(0))
    expected = bench.eval_forward(base, ids, args)
    for name in FOUR:
        model = bench.make_variant(base, name, args).eval()
        assert bench.adapter_tensors(model), f"{name}: no adapters found"
        torch.testing.assert_close(bench.eval_forward(model, ids, args), expected, atol=1e-6, rtol=0)


def test_randomized_adapters_agree_across_libraries(bench):
    """After the same non-zero A, B, m go into every variant, mmft and PEFT agree, and differ from the base."""
    args = bench.parse_args(TINY)
    base = bench.build_base(args)
    models = {name: bench.make_variant(base, name, args).eval() for name in FOUR}
    bench.randomize_adapters(models, base, seed=5)
    ids = torch.randint(0, args.vocab, (2, args.seq), generator=torch.Generator().manual_seed(0))
    logits = {name: bench.eval_forward(model, ids, args) for name, model in models.items()}
    torch.testing.assert_close(logits["mmft_dora"], logits["peft_dora"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits["mmft_lora"], logits["peft_lora"], atol=1e-5, rtol=1e-5)
    assert (logits["mmft_dora"] - logits["mmft_lora"]).abs().max() > 1e-3  # the magnitude really differs
    assert (logits["mmft_lora"] - bench.eval_forward(base, ids, args)).abs().max() > 1e-3


def test_report_structure(bench, results):
    assert set(results) == {"setup", "checks_max_abs_logit_diff", "variants", "ratios"}
    setup = results["setup"]
    assert setup["device"] == "cpu" and setup["dtype"] == "float32" and setup["threads"] == 1
    assert setup["sizes"]["hidden"] == bench.PRESETS["tiny"]["hidden"]
    assert setup["torch"] == torch.__version__ and "bench_adapters" in setup["command"]
    assert set(results["variants"]) == set(bench.VARIANTS) | {bench.BASE}
    for name in bench.VARIANTS:
        row = results["variants"][name]
        assert row["step_time_s"] > 0 and len(row["step_times_s"]) == 1
        assert row["saved_bytes"] > 0 and row["peak_step_bytes"] > 0
        assert row["train_peak_bytes"] == row["static_bytes"] + row["peak_step_bytes"]
        assert (row["eval_time_s"] is not None) == (name in bench.EVAL_VARIANTS)
    assert results["variants"]["mmft_lora"]["trainable_params"] == results["variants"]["peft_lora"]["trainable_params"]
    assert results["variants"]["mmft_dora"]["trainable_params"] == results["variants"]["peft_dora"]["trainable_params"]
    sizes = setup["sizes"]  # full fine-tuning trains the targeted layers' whole weights: more than any rank-r pair
    assert results["variants"]["mmft_full"]["trainable_params"] > sizes["hidden"] ** 2 * sizes["layers"]
    for key, num, den, quantity, target, _ in bench.RATIOS:
        if quantity == "device_busy_s":  # profiled on CUDA only
            assert key not in results["ratios"] and results["variants"][num][quantity] is None
            continue
        ratio = results["ratios"][key]
        expected = results["variants"][num][quantity] / results["variants"][den][quantity]
        assert math.isclose(ratio["value"], expected)
        assert ratio["meets_target"] == (None if target is None else expected <= target)
    for name in bench.EVAL_VARIANTS:
        assert f"{name} merged/base eval" in results["ratios"]
    checks = results["checks_max_abs_logit_diff"]
    assert all(value == 0.0 or value < 1e-5 for value in checks["init_vs_base"].values())
    assert checks["randomized"]["mmft_dora vs peft_dora"] < 1e-4
    assert all(value < 1e-4 for value in checks["merged_vs_unmerged"].values())


def test_deterministic_memory_figures(bench, results):
    """Saved bytes do not depend on timing: the same run gives the same figures; lean DoRA saves about LoRA's."""
    variants = results["variants"]
    assert variants["mmft_dora_lean"]["saved_bytes"] < variants["mmft_dora"]["saved_bytes"]
    assert variants["mmft_dora"]["saved_bytes"] < variants["peft_dora"]["saved_bytes"]
    assert variants["mmft_lora"]["saved_bytes"] == variants["peft_lora"]["saved_bytes"]


def test_markdown_tables(bench, results):
    text = bench.markdown_tables(results)
    assert text.count("\n| mmft DoRA |") == 1 and "| ratio | value | target |" in text
    assert "mmft_dora/mmft_lora step time" in text and "<= 1.10" in text


def test_saved_tensor_meter_counts_storages_once_and_skips_parameters(bench):
    weight = torch.nn.Parameter(torch.randn(8, 4))  # a parameter: excluded

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        y = x @ weight  # saves x (3 x 8 fp32: 96 bytes) and the weight (excluded)
        z = (x * 2.0).sin()  # x * 2.0 saves nothing; sin saves its input, a new 96-byte tensor
        (x.exp() * 0).sum()  # a graph dropped at once (exp saves its output): not held
        return (y.sum() + z.sum()) * x[0, 0]  # saves a 4-byte scalar and x[0, 0], a view of x: counted once

    x = torch.randn(3, 8, requires_grad=True)
    with bench.SavedTensorMeter(exclude=[weight]) as meter:
        loss = loss_of(x)
    assert meter.live_bytes() == 96 + 96 + 4
    loss.backward()  # backward runs on what the meter handed back: same gradients as without it
    with_meter = x.grad.clone()
    x.grad = None
    loss_of(x).backward()
    torch.testing.assert_close(with_meter, x.grad, atol=0, rtol=0)


def test_cpu_peak_bytes_replays_allocations(bench):
    def allocate() -> torch.Tensor:
        a = torch.empty(1000, 1000)  # 4 MB
        b = torch.empty(2000, 1000)  # 8 MB: 12 MB live
        del a
        c = torch.empty(500, 1000)  # 10 MB live
        del b, c
        return torch.empty(3000, 1000)  # 12 MB, kept

    assert bench.cpu_peak_bytes(allocate) == 12_000_000


def test_bad_sizes_are_named(bench):
    with pytest.raises(bench.BenchError, match="--heads"):
        bench.parse_args(["--preset", "tiny", "--hidden", "65"])
    with pytest.raises(bench.BenchError, match="--rounds"):
        bench.parse_args(["--preset", "tiny", "--rounds", "0"])


def test_variant_subset_without_eval(bench, tmp_path):
    """``--variants`` builds only those; ``--no-eval`` times training only; ratios appear only where both sides ran."""
    path = tmp_path / "subset.json"
    bench.main(TINY + ["--variants", "mmft_lora", "mmft_dora", "--no-eval", "--json", str(path)])
    results = json.loads(path.read_text())
    assert set(results["variants"]) == {"mmft_lora", "mmft_dora"}
    assert results["setup"]["variants"] == ["mmft_lora", "mmft_dora"]
    assert all(row["eval_time_s"] is None for row in results["variants"].values())
    assert set(results["ratios"]) == {"mmft_dora/mmft_lora step time", "mmft_dora/mmft_lora saved bytes"}


def test_step_flops_by_hand(bench):
    """One layer, hidden 4, 2 heads (kv 1), MLP 8, vocab 10, batch 1 x 3 tokens, rank 1: counted by hand."""
    args = bench.parse_args(["--preset", "tiny", "--hidden", "4", "--heads", "2", "--kv-heads", "1", "--layers",
                             "1", "--intermediate", "8", "--vocab", "10", "--batch", "1", "--seq", "3", "--rank",
                             "1", "--device", "cpu"])
    frozen = 4 * 4 + 4 * 2 + 4 * 2 + 4 * 4 + 3 * 4 * 8 + 4 * 10  # q k v o, gate up down, lm_head
    adapters = (4 + 4) + (4 + 2) * 2 + (4 + 4) + (4 + 8) * 3  # r (in + out) per adapted layer
    expected = 4 * frozen * 3 + 6 * 3 * 3 * 4 + 6 * adapters * 3
    assert bench.step_flops(args) == expected
    args.accumulate = 8  # eight micro-batches per optimizer step: eight times the work
    assert bench.step_flops(args) == 8 * expected


def test_accumulated_micro_batches_run_before_each_optimizer_step(bench, tmp_path):
    path = tmp_path / "accumulate.json"
    bench.main(TINY + ["--variants", "mmft_lora", "mmft_dora", "--no-eval", "--accumulate", "2", "--json", str(path)])
    results = json.loads(path.read_text())
    assert results["setup"]["accumulate"] == 2 and "--accumulate 2" in results["setup"]["command"]


def test_unfused_variant_equals_fused_on_cpu(bench):
    """Without a GPU both DoRA variants run the same PyTorch ops: identical logits."""
    args = bench.parse_args(TINY)
    base = bench.build_base(args)
    models = {name: bench.make_variant(base, name, args).eval() for name in ("mmft_dora", "mmft_dora_unfused")}
    bench.randomize_adapters(models, base, seed=3)
    ids = torch.randint(0, args.vocab, (2, args.seq), generator=torch.Generator().manual_seed(0))
    logits = [bench.eval_forward(model, ids, args) for model in models.values()]
    torch.testing.assert_close(logits[0], logits[1], atol=0, rtol=0)


def test_loss_benchmark_reports_both_paths(tmp_path):
    """scripts/bench_loss.py on a small vocabulary: both paths measured, the chunked one holding less."""
    bench_loss = load_script("bench_loss")
    path = tmp_path / "loss.json"
    assert bench_loss.main(["--vocab", "4000", "--hidden", "16", "--batch", "1", "--seq", "64", "--rounds", "1",
                            "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert set(results["results"]) == {"plain", "chunked"}
    assert 0 < results["peak_ratio"] < 1
