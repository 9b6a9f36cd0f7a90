"""Adapters on a 4-bit (bitsandbytes NF4) base: QLoRA, QDoRA, and VeRA / DVoRA on the same base.

References: bitsandbytes' own dequantization, a float model built from the dequantized weights (outputs and
gradients), and PEFT's QLoRA / QDoRA on the same quantized weights (outputs, gradients and adapter folders).
"""

from __future__ import annotations

import copy

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from peft import PeftModel, get_peft_model
from test_adapter_peft import assert_same, peft_config, randomise_
from tiny_models import llama_inputs, tiny_llama
from torch import nn

import mmft.adapters.base_weight as base_weight
from mmft.adapters import (
    AdapterConfig,
    AdapterConfigError,
    QuantizationConfig,
    QuantizationError,
    apply_adapters,
    load_adapters,
    merge_adapters,
    quantize_linear_layers,
    save_adapters,
    unmerge_adapters,
)
from mmft.adapters.base_weight import dense_weight, row_chunks
from mmft.analysis import weight_updates

FP32 = QuantizationConfig(compute_dtype="float32")


class TwoLayers(nn.Module):
    """136 inputs to the second layer: rows that do not fill whole quantization blocks of 64."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(192, 136)
        self.second = nn.Linear(136, 96, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.tanh(self.first(x)))


def quantized_and_float_twins(seed: int = 0, config: QuantizationConfig = FP32) -> tuple[nn.Module, nn.Module]:
    """A 4-bit TwoLayers and a float one whose weights are its dequantized weights."""
    torch.manual_seed(seed)
    quantized = TwoLayers()
    quantize_linear_layers(quantized, config)
    reference = TwoLayers()
    with torch.no_grad():
        for name in ("first", "second"):
            q, r = getattr(quantized, name), getattr(reference, name)
            r.weight.copy_(dequantize_4bit(q.weight.data, q.weight.quant_state).float())
            if r.bias is not None:
                r.bias.copy_(q.bias)
    return quantized, reference


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_row_chunks_equal_bitsandbytes_dequantization(monkeypatch, double_quant, quant_type):
    quantized, _ = quantized_and_float_twins(config=QuantizationConfig(
        quant_type=quant_type, double_quant=double_quant, compute_dtype="float32"))
    monkeypatch.setattr(base_weight, "CHUNK_ELEMENTS", 1000)
    for layer in (quantized.first, quantized.second):
        weight = layer.weight
        full = dequantize_4bit(weight.data, weight.quant_state)
        chunks = list(row_chunks(weight, torch.float32))
        assert len(chunks) > 3 and [start for start, _ in chunks] == sorted({start for start, _ in chunks})
        torch.testing.assert_close(torch.cat([c for _, c in chunks]), full, rtol=0, atol=0)


def quantizable_llama() -> nn.Module:
    """The tiny Llama with rows of 64 and 128 weights: shapes bitsandbytes quantizes correctly on every CPU."""
    return tiny_llama(hidden_size=64, intermediate_size=128)


NF4_CODE = torch.tensor([-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0, 0.0795803,
                         0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0])  # QLoRA paper


def test_quantize_keeps_skipped_layers_and_the_quantization_error_is_nf4_sized():
    model = quantizable_llama()
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = quantize_linear_layers(model, QuantizationConfig(double_quant=False), skip=["lm_head"])
    assert "lm_head" not in names and len(names) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert type(model.lm_head) is nn.Linear
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == "nf4"
        # the QLoRA paper's NF4 by hand: each weight's nearest code value times its 64-weight block's absmax
        blocks = dense[name].flatten().view(-1, 64)
        absmax = blocks.abs().amax(1, keepdim=True)
        nearest = NF4_CODE[(blocks / absmax).unsqueeze(-1).sub(NF4_CODE).abs().argmin(-1)] * absmax
        restored = dense_weight(layer.weight, torch.float32).flatten().view(-1, 64)
        torch.testing.assert_close(restored, nearest, atol=1e-6, rtol=1e-5)


def corrupt_codes(weight: torch.Tensor, positions: slice) -> None:
    """Put other 4-bit codes into some bytes of a packed weight, as a broken kernel would."""
    weight.data.view(-1)[positions] ^= 0x33


@pytest.mark.parametrize("double_quant", [False, True])
def test_a_wrong_quantization_is_a_named_error(double_quant, monkeypatch):
    """The check after quantizing passes bitsandbytes' correct output and refuses a wrong one, naming the layer,
    whatever the CPU: the wrong output is made here, not left to a CPU that happens to produce it."""
    config = QuantizationConfig(double_quant=double_quant)
    model = quantizable_llama()
    quantize_linear_layers(model, config, skip=["lm_head"])  # correct: passes
    original = bnb.nn.Params4bit.to

    def broken_to(self, *args, **kwargs):
        moved = original(self, *args, **kwargs)
        corrupt_codes(moved, slice(5, 9))
        return moved

    monkeypatch.setattr(bnb.nn.Params4bit, "to", broken_to)
    with pytest.raises(QuantizationError, match=r"4-bit quantization of model\.layers\.0\.self_attn\.q_proj is "
                                                r"wrong on this machine: .*skip_modules: \[q_proj\]"):
        quantize_linear_layers(quantizable_llama(), config, skip=["lm_head"])


def test_skip_modules_leaves_layers_unquantized():
    model = quantizable_llama()
    names = quantize_linear_layers(model, QuantizationConfig(skip_modules=["down_proj"]), skip=["lm_head"])
    assert len(names) == 12 and not any(name.endswith("down_proj") for name in names)
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear


@pytest.mark.parametrize("key,value", [("bits", 8), ("quant_type", "int4"), ("compute_dtype", "fp8"),
                                       ("blocksize", 48)])
def test_quantization_config_errors_name_the_field(key, value):
    with pytest.raises(AdapterConfigError, match=rf"QuantizationConfig\.{key}"):
        QuantizationConfig(**{key: value})


def run(model: nn.Module, x: torch.Tensor, train: bool, seed: int = 7):
    """Output and the gradients of a fixed projection of it, for the input and every trainable tensor."""
    model.train(train)
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same dropout masks on both sides
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("method", ["lora", "dora", "vera", "dvora"])
@pytest.mark.parametrize("dropout,detach_norm", [(0.0, True), (0.1, True), (0.0, False)])
def test_quantized_layer_equals_the_float_reference(method, dropout, detach_norm):
    quantized, reference = quantized_and_float_twins()
    config = AdapterConfig(method=method, r=4, alpha=8, dropout=dropout, detach_norm=detach_norm,
                           target_modules=["first", "second"])
    for model in (quantized, reference):
        apply_adapters(model, config)
        randomise_(model)
    x = torch.randn(3, 5, 192, generator=torch.Generator().manual_seed(1))
    for train in (True, False):
        out_q, grad_x_q, grads_q = run(quantized, x, train)
        out_r, grad_x_r, grads_r = run(reference, x, train)
        torch.testing.assert_close(out_q, out_r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad_x_q, grad_x_r, atol=1e-5, rtol=1e-5)
        assert grads_q.keys() == grads_r.keys() and len(grads_q) >= 4
        for name in grads_q:
            torch.testing.assert_close(grads_q[name], grads_r[name], atol=1e-5, rtol=1e-5, msg=name)
    quantized.eval()
    reference.eval()
    with torch.no_grad():  # the cached-scale inference path
        torch.testing.assert_close(quantized(x), reference(x), atol=1e-5, rtol=1e-5)


def test_magnitude_only_and_bf16_compute_follow_the_reference():
    quantized, reference = quantized_and_float_twins()
    config = AdapterConfig(method="dora", r=4, alpha=8, target_modules=["first"], magnitude_only_modules=["second"])
    for model in (quantized, reference):
        apply_adapters(model, config)
        randomise_(model)
    x = torch.randn(4, 192, generator=torch.Generator().manual_seed(2))
    out_q, _, grads_q = run(quantized, x, train=True)
    out_r, _, grads_r = run(reference, x, train=True)
    torch.testing.assert_close(out_q, out_r, atol=1e-5, rtol=1e-5)
    for name in grads_r:
        torch.testing.assert_close(grads_q[name], grads_r[name], atol=1e-5, rtol=1e-5, msg=name)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 matmuls as under bf16-mixed, to bf16 precision
        out_bf16, _, _ = run(quantized, x, train=True)
    torch.testing.assert_close(out_bf16.float(), out_r, atol=0.05, rtol=0.05)


def test_dora_backward_keeps_the_packed_weight_not_a_dense_copy():
    quantized, _ = quantized_and_float_twins()
    apply_adapters(quantized, AdapterConfig(method="dora", r=4, alpha=8, target_modules=["second"]))
    out = quantized.second(torch.randn(5, 136, requires_grad=True))
    assert out.grad_fn.packed_weight is quantized.second.base_layer.weight
    assert not any(t.shape == (96, 136) for t in out.grad_fn.saved_tensors if t is not None)


def test_backward_under_saved_tensor_hooks_and_activation_checkpointing():
    """Hooks (offloading, checkpointing) hand back plain tensors: the 4-bit weight must not pass through them."""
    quantized, reference = quantized_and_float_twins()
    config = AdapterConfig(method="dora", r=4, alpha=8, detach_norm=False, target_modules=["first", "second"])
    for model in (quantized, reference):
        apply_adapters(model, config)
        randomise_(model)
    x = torch.randn(4, 192, generator=torch.Generator().manual_seed(4))
    _, _, expected = run(reference, x, train=True)
    for wrap in ("hooks", "checkpoint"):
        quantized.zero_grad(set_to_none=True)
        if wrap == "hooks":
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.detach().clone(), lambda t: t):
                out = quantized(x)
        else:
            out = torch.utils.checkpoint.checkpoint(quantized, x, use_reentrant=False)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        for name, grad in expected.items():
            torch.testing.assert_close(dict(quantized.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-5,
                                       msg=f"{wrap}: {name}")


@pytest.mark.parametrize("method", ["lora", "dora", "dvora"])
def test_merge_into_a_dequantized_copy_and_unmerge_back_to_4bit(method):
    quantized, reference = quantized_and_float_twins()
    config = AdapterConfig(method=method, r=4, alpha=8, target_modules=["first", "second"])
    for model in (quantized, reference):
        apply_adapters(model, config)
        randomise_(model)
    x = torch.randn(6, 192, generator=torch.Generator().manual_seed(3))
    quantized.eval()
    reference.eval()
    with torch.no_grad():
        expected = reference(x)
        four_bit = quantized.second.base_layer
        merge_adapters(quantized)
        assert type(quantized.second) is nn.Linear and quantized.second.weight.dtype == torch.float32
        torch.testing.assert_close(quantized(x), expected, atol=1e-5, rtol=1e-5)
        unmerge_adapters(quantized)
        assert quantized.second.base_layer is four_bit
        torch.testing.assert_close(quantized(x), expected, atol=1e-5, rtol=1e-5)


def test_report_and_weight_updates_count_the_real_weights():
    quantized, reference = quantized_and_float_twins()
    config = AdapterConfig(method="dora", r=4, alpha=8, target_modules=["first", "second"])
    report_q, report_r = apply_adapters(quantized, config), apply_adapters(reference, config)
    assert report_q.total_params == report_r.total_params
    assert report_q.trainable_params == report_r.trainable_params
    randomise_(quantized)
    randomise_(reference)
    for mine, theirs in zip(weight_updates(quantized), weight_updates(reference)):
        assert mine.delta_magnitude == pytest.approx(theirs.delta_magnitude, rel=1e-6)
        assert mine.delta_direction == pytest.approx(theirs.delta_direction, rel=1e-6)


def quantized_llama() -> nn.Module:
    model = quantizable_llama()
    quantize_linear_layers(model, FP32, skip=["lm_head"])
    return model


TARGETS = r".*\.(q_proj|v_proj|down_proj)"


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_peft_qlora_qdora_folder_loads_in_mmft_with_same_outputs_and_gradients(tmp_path, method):
    base = quantized_llama()
    peft_model = get_peft_model(copy.deepcopy(base), peft_config(method, TARGETS))
    assert isinstance(peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    randomise_(peft_model)
    peft_model.save_pretrained(tmp_path)
    mmft_model = load_adapters(copy.deepcopy(base), tmp_path)
    assert_same(mmft_model, peft_model, llama_inputs(), train=False)
    assert_same(mmft_model, peft_model, llama_inputs(), train=True)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_mmft_qlora_qdora_folder_loads_in_peft_with_same_outputs(tmp_path, method):
    base = quantized_llama()
    mmft_model = copy.deepcopy(base)
    apply_adapters(mmft_model, AdapterConfig(method=method, r=4, alpha=8, target_modules=TARGETS))
    randomise_(mmft_model)
    save_adapters(mmft_model, tmp_path)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert_same(mmft_model, peft_model, llama_inputs(), train=False)
    assert_same(mmft_model, peft_model, llama_inputs(), train=True)
