"""scripts/bench_adapters.py --quant 4bit at tiny sizes: the report's structure and its checks (no timing asserts)."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark

TINY = ["--quant", "4bit", "--device", "cpu", "--threads", "1", "--warmup", "1", "--rounds", "1", "--quiet"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark()


def test_quant_report_compares_dense_and_4bit_bases_and_mmft_with_peft(bench, tmp_path):
    path = tmp_path / "quant.json"
    bench.main(TINY + ["--preset", "tiny", "--json", str(path)])
    results = json.loads(path.read_text())
    rows = results["variants"]
    assert set(rows) == set(bench.QUANT_VARIANTS)
    assert results["checks_max_abs_logit_diff"]["mmft_qdora vs peft_qdora"] < 1e-4
    assert results["checks_max_abs_logit_diff"]["mmft_qdora vs mmft_dora (quantization)"] > 1e-4
    # fp32 dense weights against NF4 (half a byte) plus double-quantized scales
    assert 0.125 < results["ratios"]["4bit/dense base-weight bytes"] < 0.2
    assert rows["mmft_qdora"]["trainable_params"] == rows["peft_qdora"]["trainable_params"]
    for key, num, den, quantity in bench.QUANT_RATIOS:
        assert results["ratios"][key] == pytest.approx(rows[num][quantity] / rows[den][quantity])
    assert "| mmft QDoRA |" in bench.quant_tables(results)


def test_llava_report_follows_the_recipe(bench, tmp_path):
    path = tmp_path / "llava.json"
    bench.main(TINY + ["--llava", "tiny", "--batch", "2", "--seq", "40", "--json", str(path)])
    results = json.loads(path.read_text())
    setup = results["setup"]
    assert setup["adapter"]["r"] == 128 and setup["gradient_checkpointing"] is True
    assert (setup["batch"], setup["seq"]) == (2, 40)
    four, dense = results["variants"]["4bit"], results["variants"]["bf16"]
    assert four["trainable_params"] == dense["trainable_params"]
    assert four["base_weight_bytes"] < 0.4 * dense["base_weight_bytes"]  # bf16 against NF4 + scales
    assert four["peak_bytes"] > 0 and four["step_time_s"] > 0


def test_llava_needs_quant(bench):
    with pytest.raises(bench.BenchError, match="--quant 4bit"):
        bench.parse_args(["--llava", "tiny"])
