"""The fused DoRA kernels (mmft.adapters.kernels) against the PyTorch path they replace.

On the CPU the kernels run under Triton's interpreter, which executes the same kernel code with NumPy. Triton reads
``TRITON_INTERPRET=1`` when it is imported, so `test_under_triton_interpreter` runs this file again in a subprocess
with it set, where the ``interpreted`` tests run (and every DoRA layer of that process takes the kernels). On a CUDA
machine the ``cuda`` tests run them compiled. All compare with the PyTorch ops (and float64 for the norm), for the
kernels alone and for a whole DoRA layer's outputs and gradients.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from mmft.adapters import AdapterConfig, apply_adapters, kernels, layers
from mmft.adapters.layers import NORM_EPS

pytest.importorskip("triton")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs a CUDA GPU")
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in test_under_triton_interpreter's subprocess")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(INTERPRETED, reason="this is the interpreted run")
def test_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout


def reference_norm(w, a, b, s):
    return (w.double() + s * b.double() @ a.double()).norm(dim=1)


@interpreted
@pytest.mark.parametrize("rank, out_features, in_features", [(4, 70, 33), (16, 200, 64), (128, 64, 40), (3, 5, 7)])
def test_norm_kernel_equals_float64(rank, out_features, in_features):
    g = torch.Generator().manual_seed(rank)
    w = torch.randn(out_features, in_features, generator=g)
    a = torch.randn(rank, in_features, generator=g) / in_features**0.5
    b = torch.randn(out_features, rank, generator=g) * 0.1
    w[1] = 0.0  # an all-zero row: the clamp keeps it finite
    norm = kernels.fused_dora_norm(a @ w.T, a @ a.T, b, 2.0, w.square().sum(1), NORM_EPS)
    expected = reference_norm(w, a, b, 2.0).clamp_min(NORM_EPS)
    torch.testing.assert_close(norm.double(), expected, rtol=1e-5, atol=1e-6)


@interpreted
def test_norm_kernel_declines_wide_ranks():
    rank = kernels.MAX_FUSED_RANK + 1
    assert kernels.fused_dora_norm(torch.zeros(rank, 4), torch.zeros(rank, rank), torch.zeros(4, rank), 1.0,
                                   torch.ones(4), NORM_EPS) is None


@interpreted
@pytest.mark.parametrize("rows, out_features", [(5, 7), (300, 130), (1000, 257), (33, 128)])
def test_backward_tail_kernel(rows, out_features):
    g = torch.Generator().manual_seed(rows)
    gy, y = torch.randn(rows, out_features, generator=g), torch.randn(rows, out_features, generator=g)
    scale = torch.randn(out_features, generator=g)
    gh, dot = kernels.fused_dora_backward_tail(gy, y, scale)
    torch.testing.assert_close(gh, gy * scale, rtol=0, atol=0)
    torch.testing.assert_close(dot.double(), (gy.double() * y.double()).sum(0), rtol=1e-5, atol=1e-5)


@interpreted
def test_backward_tail_reads_strided_inputs():
    g = torch.Generator().manual_seed(0)
    gy = torch.randn(40, 64, generator=g).T  # column-major: the kernel needs unit column stride, so it copies
    y = torch.randn(128, 40, generator=g)[::2]  # row stride 80: read in place
    scale = torch.randn(40, generator=g)
    gh, dot = kernels.fused_dora_backward_tail(gy, y, scale)
    torch.testing.assert_close(gh, gy * scale, rtol=0, atol=0)
    torch.testing.assert_close(dot, (gy * y).sum(0), rtol=1e-5, atol=1e-5)


def dora_pair(dropout: float = 0.0, bias: bool = False, dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(48, 96, bias=bias)).to(device, dtype)
    config = AdapterConfig(method="dora", r=8, alpha=16, dropout=dropout, target_modules=["0"])
    model = copy.deepcopy(base)
    apply_adapters(model, config)
    layer = model[0]
    with torch.no_grad():
        layer.lora_B.weight.normal_(0, 0.1)
        layer.lora_magnitude_vector.mul_(1 + 0.1 * torch.randn_like(layer.lora_magnitude_vector))
    return model, copy.deepcopy(model)


def step(model, x, fused: bool):
    torch.manual_seed(1)  # the same dropout mask for both paths
    with kernels.fused_kernels(fused):
        x = x.clone().requires_grad_(True)
        out = model(x)
        (out.float() * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), x.grad, grads


def count_kernel_calls(monkeypatch) -> Counter:
    """Count the layer's calls of each fused kernel (that returned a result), so a test knows which path ran."""
    calls: Counter = Counter()
    for name in ("fused_dora_norm", "fused_dora_backward_tail"):
        kernel = getattr(layers, name)

        def counted(*args, _kernel=kernel, _name=name, **kwargs):
            result = _kernel(*args, **kwargs)
            calls[_name] += result is not None
            return result

        monkeypatch.setattr(layers, name, counted)
    return calls


@interpreted
@pytest.mark.parametrize("dropout, bias", [(0.0, False), (0.0, True), (0.1, False)])
def test_dora_layer_with_kernels_equals_pytorch_path(dropout, bias, monkeypatch):
    monkeypatch.setattr(layers, "FUSED_TAIL_MIN_ELEMENTS", 0)  # the layer is small: take the tail kernel anyway
    calls = count_kernel_calls(monkeypatch)
    fused_model, plain_model = dora_pair(dropout, bias)
    fused_model.train(), plain_model.train()
    x = torch.randn(3, 11, 48)
    out_f, gx_f, grads_f = step(fused_model, x, True)
    assert calls["fused_dora_backward_tail"] == 1  # the fused path ran: one backward of one layer
    out_p, gx_p, grads_p = step(plain_model, x, False)
    assert calls["fused_dora_backward_tail"] == 1  # and the plain one did not
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-5, atol=1e-6)
    assert grads_f.keys() == grads_p.keys() and "0.lora_magnitude_vector" in grads_f
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)


@interpreted
def test_dora_inference_with_the_norm_kernel_equals_pytorch_path(monkeypatch):
    """Without gradients for A and B (evaluation) the norm comes from the fused kernel."""
    calls = count_kernel_calls(monkeypatch)
    fused_model, plain_model = dora_pair()
    fused_model.eval(), plain_model.eval()
    x = torch.randn(3, 11, 48)
    with torch.no_grad():
        with kernels.fused_kernels(True):
            fused = fused_model(x)
        assert calls["fused_dora_norm"] >= 1
        before = calls["fused_dora_norm"]
        with kernels.fused_kernels(False):
            plain = plain_model(x)
        assert calls["fused_dora_norm"] == before
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(), reason="CPU without the interpreter")
def test_kernels_off_on_cpu():
    assert not kernels.kernels_usable(torch.zeros(1))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_equal_pytorch_path(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    gy = torch.randn(4096, 1000, device="cuda", dtype=dtype, generator=gen)
    y = torch.randn(4096, 1000, device="cuda", dtype=dtype, generator=gen)
    scale = torch.randn(1000, device="cuda", dtype=dtype, generator=gen)
    gh, dot = kernels.fused_dora_backward_tail(gy, y, scale)
    torch.testing.assert_close(gh, gy * scale, rtol=0, atol=0)
    torch.testing.assert_close(dot.double(), (gy.double() * y.double()).sum(0), rtol=1e-4, atol=1e-3)
    w = torch.randn(1000, 512, device="cuda", generator=gen).to(dtype)
    a = torch.randn(64, 512, device="cuda", generator=gen) / 512**0.5
    b = torch.randn(1000, 64, device="cuda", generator=gen) * 0.05
    a_wt = a.to(dtype) @ w.T
    norm = kernels.fused_dora_norm(a_wt, a @ a.T, b, 2.0, w.float().square().sum(1), NORM_EPS)
    expected = (w.double().square().sum(1) + 2.0 * (b.double() * (2 * a_wt.double().T + 2.0 * b.double() @
                (a.double() @ a.double().T))).sum(1)).sqrt()
    torch.testing.assert_close(norm.double(), expected, rtol=1e-5, atol=1e-5)


@cuda
@pytest.mark.parametrize("dropout, bias", [(0.0, False), (0.0, True), (0.1, False)])
def test_cuda_dora_layer_with_kernels_equals_pytorch_path(dropout, bias, monkeypatch):
    monkeypatch.setattr(layers, "FUSED_TAIL_MIN_ELEMENTS", 0)
    calls = count_kernel_calls(monkeypatch)
    fused_model, plain_model = dora_pair(dropout, bias, device="cuda")
    fused_model.train(), plain_model.train()
    x = torch.randn(4, 256, 48, device="cuda")
    out_f, gx_f, grads_f = step(fused_model, x, True)
    assert calls["fused_dora_backward_tail"] == 1
    out_p, gx_p, grads_p = step(plain_model, x, False)
    assert calls["fused_dora_backward_tail"] == 1
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_p, rtol=1e-5, atol=1e-5)
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-4, atol=1e-5, msg=name)
