"""Adapter math against independent float64 computations of the formulas in REFERENCE.md section 1."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mmft.adapters import AdapterConfig, apply_adapters, dora_weight_norm, merge_adapters, unmerge_adapters
from mmft.adapters.layers import AdaptedLinear, DoRAScaledLinear


class TwoLayer(nn.Module):
    def __init__(self, d_in=12, d_hidden=10, d_out=6, dtype=torch.float32):
        super().__init__()
        self.up = nn.Linear(d_in, d_hidden, dtype=dtype)
        self.down = nn.Linear(d_hidden, d_out, dtype=dtype)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def randomise_(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.requires_grad:
                p.copy_((0.5 + torch.rand(p.shape, generator=g)) if "magnitude" in name
                        else torch.randn(p.shape, generator=g) * 0.4)


def dense_reference(layer: AdaptedLinear, x: torch.Tensor, method: str, alpha: float, r: int) -> torch.Tensor:
    """The DoRA/LoRA/VeRA layer output from its definition (REFERENCE.md section 1), in float64 with a dense W',
    built from the layer's raw tensors with the scaling and the VeRA product written out here, not taken from
    mmft: LoRA / DoRA ``(alpha / r) B A``; VeRA / DVoRA ``diag(lambda_b) B_shared diag(lambda_d) A_shared`` over
    the first ``r`` rows / columns of the shared projections, unscaled."""
    W = layer.base_layer.weight.double()
    b = layer.base_layer.bias.double() if layer.base_layer.bias is not None else 0.0
    out_features, in_features = W.shape
    if layer.magnitude_only:
        delta = torch.zeros_like(W)
    elif method in ("vera", "dvora"):
        shared = layer.__dict__["_vera"]
        A = shared.vera_A[:r, :in_features].double()
        B = shared.vera_B[:out_features, :r].double()
        delta = layer.vera_lambda_b.double()[:, None] * (B @ (layer.vera_lambda_d.double()[:, None] * A))
    else:
        delta = (alpha / r) * layer.lora_B.weight.double() @ layer.lora_A.weight.double()
    if method in ("dora", "dvora"):
        combined = W + delta
        norm = combined.norm(dim=1, keepdim=True).clamp_min(1e-6)
        W_prime = layer.lora_magnitude_vector.double()[:, None] * combined / norm
    else:
        W_prime = W + delta
    return x.double() @ W_prime.T + b


@pytest.mark.parametrize("method", ["lora", "dora", "vera", "dvora"])
def test_layer_output_matches_float64_definition_and_starts_at_base(method):
    base = TwoLayer()
    x = torch.randn(4, 3, 12)
    model = copy.deepcopy(base)
    apply_adapters(model, AdapterConfig(method=method, r=3, alpha=5, target_modules=["up", "down"]))
    torch.testing.assert_close(model(x), base(x), atol=1e-6, rtol=1e-5)  # initialisation leaves outputs unchanged
    randomise_(model)
    layer = model.up
    torch.testing.assert_close(layer(x).double(), dense_reference(layer, x, method, 5, 3), atol=1e-5, rtol=1e-5)


def test_factored_norm_matches_dense_float64():
    torch.manual_seed(0)
    W, A, B = torch.randn(40, 24), torch.randn(5, 24), torch.randn(40, 5)
    s = 1.7
    sq = W.pow(2).sum(1)
    dense = (W.double() + s * B.double() @ A.double()).norm(dim=1)
    torch.testing.assert_close(dora_weight_norm(W, A, B, s, sq).double(), dense, rtol=1e-5, atol=1e-6)


def test_zero_weight_rows_give_finite_outputs_and_gradients():
    base = TwoLayer()
    with torch.no_grad():
        base.up.weight[[0, 3]] = 0.0
    model = copy.deepcopy(base)
    apply_adapters(model, AdapterConfig(method="dora", r=2, alpha=2, target_modules=["up"], detach_norm=False))
    x = torch.randn(5, 12)
    torch.testing.assert_close(model(x), base(x))
    model(x).sum().backward()  # B = 0: the zero rows have a zero norm at this point
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    randomise_(model)
    with torch.no_grad():
        model.up.lora_magnitude_vector[[0, 3]] = 0.0
    merge_check(model, x)


def merge_check(model, x):
    before = model(x)
    merge_adapters(model)
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules()), "merged model still has adapter layers"
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    unmerge_adapters(model)
    assert isinstance(model.up, AdaptedLinear)
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["lora", "dora", "vera", "dvora"])
def test_merge_and_unmerge_are_exact(method):
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(method=method, r=3, alpha=6, target_modules=["up", "down"]))
    randomise_(model)
    weight_before = model.up.base_layer.weight.clone()
    merge_check(model, torch.randn(7, 12))
    torch.testing.assert_close(model.up.base_layer.weight, weight_before, atol=1e-6, rtol=1e-6)


def test_merged_model_is_plain_and_saves_as_an_ordinary_state_dict():
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(method="dora", r=2, alpha=2, target_modules=["up", "down"]))
    randomise_(model)
    x = torch.randn(3, 12)
    expected = model(x)
    merge_adapters(model)
    plain = TwoLayer()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("with_dropout_input", [False, True])
def test_dora_function_gradcheck_float64(recompute, with_bias, with_dropout_input):
    """Every input's gradient, the norm's (detach_norm=False) included, on each save/recompute path."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    x_base = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True) if with_dropout_input else None
    W = torch.randn(5, 6, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True) if with_bias else None
    A = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    B = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    m = torch.rand(5, dtype=torch.float64, requires_grad=True)
    norm = (torch.rand(5, dtype=torch.float64) + 0.5).requires_grad_()

    def function(x, x_base, bias, A, B, m, norm):
        return DoRAScaledLinear.apply(x, x_base, W, bias, A, B, m, norm, 0.7, recompute)

    assert torch.autograd.gradcheck(function, (x, x_base, bias, A, B, m, norm))


def test_dora_function_with_dropout_input_is_pefts_formula():
    """x_base W^T + b + (g - 1) x W^T + g s (x A^T) B^T, against float64 autograd of that formula."""
    torch.manual_seed(1)
    x, x_base = torch.randn(7, 6, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
    W, bias = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    A, B = torch.randn(2, 6, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    m, norm = torch.rand(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) + 0.5
    g = m / norm
    expected = x_base @ W.T + bias + (g - 1) * (x @ W.T) + g * 0.7 * (x @ A.T @ B.T)
    torch.testing.assert_close(DoRAScaledLinear.apply(x, x_base, W, bias, A, B, m, norm, 0.7, False), expected)


@pytest.mark.parametrize("detach_norm", [True, False])
def test_dora_gradients_match_float64_autograd_of_the_definition(detach_norm):
    """detach_norm=True is the paper's trick (norm treated as a constant); False is the exact gradient."""
    torch.manual_seed(0)
    model = TwoLayer(dtype=torch.float64)
    apply_adapters(model, AdapterConfig(method="dora", r=3, alpha=6, target_modules=["up"], detach_norm=detach_norm))
    randomise_(model)
    layer = model.up
    x = torch.randn(8, 12, dtype=torch.float64)
    layer(x).pow(2).sum().backward()

    W = layer.base_layer.weight.detach()
    A = layer.lora_A.weight.detach().clone().requires_grad_()
    B = layer.lora_B.weight.detach().clone().requires_grad_()
    m = layer.lora_magnitude_vector.detach().clone().requires_grad_()
    combined = W + layer.scaling * B @ A
    norm = combined.norm(dim=1, keepdim=True)
    if detach_norm:
        norm = norm.detach()
    out = x @ (m[:, None] * combined / norm).T + layer.base_layer.bias
    out.pow(2).sum().backward()
    for mine, ref in ((layer.lora_A.weight, A), (layer.lora_B.weight, B), (layer.lora_magnitude_vector, m)):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-9, atol=1e-10)


def test_recompute_gives_the_same_outputs_and_gradients():
    base = TwoLayer()
    runs = []
    for recompute in (False, True):
        model = copy.deepcopy(base)
        apply_adapters(model, AdapterConfig(method="dora", r=3, alpha=6, target_modules=["up", "down"],
                                            dora_recompute=recompute))
        randomise_(model)
        x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
        out = model(x)
        out.sum().backward()
        runs.append((out, [p.grad for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b)


def test_dropout_in_training_follows_the_adapter_path_formula():
    """With dropout, y = x W^T + b + (g - 1) x_d W^T + g s B A x_d (only the adapter input is dropped)."""
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(method="dora", r=3, alpha=6, dropout=0.5, target_modules=["up"]))
    randomise_(model)
    layer = model.up.train()
    x = torch.randn(6, 12)
    torch.manual_seed(4)
    y = layer(x)
    torch.manual_seed(4)
    x_d = torch.nn.functional.dropout(x, 0.5, training=True)
    W, b = layer.base_layer.weight.double(), layer.base_layer.bias.double()
    A, B = layer.lora_A.weight.double(), layer.lora_B.weight.double()
    g = layer.lora_magnitude_vector.double() / (W + layer.scaling * B @ A).norm(dim=1)
    ref = x.double() @ W.T + b + (g - 1) * (x_d.double() @ W.T) + g * layer.scaling * (x_d.double() @ A.T @ B.T)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


def test_eval_norm_cache_is_invalidated_by_an_optimizer_step():
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(method="dora", r=2, alpha=4, target_modules=["up", "down"]))
    randomise_(model)
    x = torch.randn(4, 12)
    model.eval()
    with torch.no_grad():
        first = model(x)
        assert model.up._scale_cache is not None
        cached = model.up._scale_cache[1]
        torch.testing.assert_close(model(x), first)
        assert model.up._scale_cache[1] is cached  # reused, not recomputed
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(x).pow(2).sum().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(x)
    assert not torch.allclose(after, first)
    torch.testing.assert_close(after.double(), dense_reference(model.down, torch.relu(model.up(x)), "dora", 6, 3),
                               atol=1e-5,
                               rtol=1e-5)


def test_magnitude_only_layers_train_only_the_magnitude():
    model = TwoLayer()
    report = apply_adapters(model, AdapterConfig(method="dora", r=2, alpha=4, target_modules=["up"],
                                                 magnitude_only_modules=["down"]))
    assert report.magnitude_only == ["down"] and report.adapted == ["up"]
    assert [n for n, p in model.down.named_parameters() if p.requires_grad] == ["lora_magnitude_vector"]
    randomise_(model)
    x = torch.randn(3, 10)
    torch.testing.assert_close(model.down(x).double(), dense_reference(model.down, x, "dora", 4, 2), atol=1e-5,
                               rtol=1e-5)


def test_report_counts_and_freezing():
    model = TwoLayer()
    report = apply_adapters(model, AdapterConfig(method="lora", r=2, alpha=4, target_modules=["up"], bias="all"))
    # lora_A 2x12 + lora_B 10x2 + biases 10 + 6
    assert report.trainable_params == 24 + 20 + 16
    assert report.total_params == 12 * 10 + 10 + 10 * 6 + 6 + 24 + 20
    assert report.trainable_percent == pytest.approx(100 * 60 / 240)
    assert not model.up.base_layer.weight.requires_grad and not model.down.weight.requires_grad
    assert "25.0000%" in str(report)


def test_layers_to_transform_restricts_list_targets():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.ModuleDict({"q": nn.Linear(4, 4)}) for _ in range(3)])
            self.experts = nn.ModuleList([Stack.Expert() for _ in range(2)])

        class Expert(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.ModuleList([nn.ModuleDict({"q": nn.Linear(4, 4)}) for _ in range(2)])

    model = Stack()
    report = apply_adapters(model, AdapterConfig(method="lora", r=2, target_modules=["q"], layers_to_transform=[0, 2]))
    assert report.adapted == ["layers.0.q", "layers.2.q", "experts.0.blocks.0.q", "experts.0.blocks.1.q"]
    model = Stack()
    report = apply_adapters(model, AdapterConfig(method="lora", r=2, target_modules=["q"], layers_to_transform=1,
                                                 layers_pattern="blocks"))
    assert report.adapted == ["experts.0.blocks.1.q", "experts.1.blocks.1.q"]


def test_rank_and_alpha_patterns_and_rslora_scaling():
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(method="lora", r=4, alpha=8, target_modules=["up", "down"], use_rslora=True,
                                        rank_pattern={"down": 2}, alpha_pattern={"up": 3}))
    assert model.up.r == 4 and model.up.scaling == pytest.approx(3 / 2)
    assert model.down.r == 2 and model.down.scaling == pytest.approx(8 / 2 ** 0.5)


# per-feature scale error of rounding alone (the scale itself is rounded to the dtype: up to half an ulp, 0.4% in
# bf16), measured at most 0.70% (bf16) and 0.08% (fp16) over 30 seeds; a 2% magnitude error is twice the bf16 bound
HALF_SCALE_BOUND = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_weights(dtype):
    base = TwoLayer(dtype=dtype)
    model = copy.deepcopy(base)
    apply_adapters(model, AdapterConfig(method="dora", r=3, alpha=6, target_modules=["up", "down"]))
    assert model.up.lora_magnitude_vector.dtype == torch.float32  # adapter math in fp32
    x = torch.randn(4, 12, dtype=dtype)
    torch.testing.assert_close(model(x), base(x), atol=1e-2, rtol=2e-2)  # bias added after rounding: 1 ulp apart
    randomise_(model)
    out = model.up(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), dense_reference(model.up, x, "dora", 6, 3), atol=5e-2, rtol=3e-2)
    out.float().sum().backward()
    assert torch.isfinite(model.up.lora_A.weight.grad).all()
    # elementwise, half-precision rounding allows a few ulps; a wrong magnitude (or norm) is systematic: each output
    # feature's least-squares scale against float64 over many rows must be 1 within the rounding's average
    rows = torch.randn(512, 12, dtype=dtype)
    ref = dense_reference(model.up, rows, "dora", 6, 3)
    with torch.no_grad():
        evaluated = model.up(rows).double()  # the inference path
    trained = model.up(rows).detach().double()  # the autograd path
    for out in (evaluated, trained):
        scale = (out * ref).sum(0) / (ref * ref).sum(0)
        assert (scale - 1).abs().max() < HALF_SCALE_BOUND[dtype], scale


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_autocast_matches_float64():
    model = TwoLayer().cuda()
    apply_adapters(model, AdapterConfig(method="dora", r=3, alpha=6, target_modules=["up", "down"]))
    randomise_(model)
    x = torch.randn(16, 12, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.up(x)
    torch.testing.assert_close(out.double(), dense_reference(model.up, x, "dora", 6, 3), atol=5e-2, rtol=3e-2)
    out.float().sum().backward()
    assert torch.isfinite(model.up.lora_B.weight.grad).all()


@pytest.mark.parametrize("method", ["dora", "dvora"])
def test_eval_cache_follows_loaded_weights(method):
    """A weight load (in-place copy) must invalidate the cached scale, for VeRA-based DoRA too."""
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(method=method, r=3, alpha=6, target_modules=["up"]))
    x = torch.randn(4, 12)
    model.eval()
    with torch.no_grad():
        before = model.up(x)
        trained = copy.deepcopy(model)
        randomise_(trained)
        model.load_state_dict(trained.state_dict())
        after = model.up(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after.double(), dense_reference(model.up, x, method, 6, 3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", [
    {"method": "dora"}, {"method": "dora", "dropout": 0.3}, {"method": "dora", "detach_norm": False},
    {"method": "dora", "dora_recompute": True}, {"method": "dvora"}, {"method": "lora", "dropout": 0.3},
    {"method": "dora", "magnitude_only_modules": ["down"]},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_torch_compile_traces_one_graph_with_the_same_outputs_and_gradients(options):
    """fullgraph=True fails on any graph break (the norm caches key on data pointers, which dynamo cannot trace, so
    compiled code must take the uncached path). aot_eager runs the traced forward and backward graphs without
    generating kernels, and keeps eager's dropout masks, so training outputs compare exactly."""
    torch._dynamo.reset()
    targets = ["up"] if "magnitude_only_modules" in options else ["up", "down"]
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(r=3, alpha=6, target_modules=targets, **options))
    randomise_(model)
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 5, 12)
    outputs = []
    for runner in (model, compiled):
        torch.manual_seed(7)
        out = runner(x)
        out.pow(2).sum().backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[1], outputs[0])
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    twin_grads = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
    assert grads and grads.keys() == twin_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(twin_grads[name], grad, msg=name)
    model.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_dora_norm_stays_fp32_under_autocast():
    """Under bf16 autocast the factored norm's small GEMMs must not drop to bf16: the terms nearly cancel at times, so
    the norm is computed in fp32 whatever the surrounding autocast says (against float64)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48)).to(torch.bfloat16)
    apply_adapters(model, AdapterConfig(method="dora", r=4, alpha=8, target_modules=["0"]))
    layer = model[0]
    nn.init.normal_(layer.lora_B.weight)
    expected = (layer.base_layer.weight.double() + layer.scaling * layer.lora_B.weight.double()
                @ layer.lora_A.weight.to(torch.bfloat16).double()).norm(dim=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        norm = layer.weight_norm()
    assert norm.dtype == torch.float32
    torch.testing.assert_close(norm.double(), expected, rtol=2e-3, atol=0)


@pytest.mark.parametrize("method", ["dora", "dvora"])
def test_the_detached_norm_is_computed_once_per_optimizer_step(method, monkeypatch):
    """With the norm detached (a constant for autograd), every micro-batch of a gradient accumulation divides by the
    same norm: it is computed once, and again only after the optimizer changed A and B (or a weight was loaded).
    Losses and gradients are exactly those of computing it afresh every time."""
    import mmft.adapters.layers as layers

    calls = {"norm": 0}
    original = layers.dora_weight_norm

    def counted(*args, **kwargs):
        calls["norm"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(layers, "dora_weight_norm", counted)
    torch.manual_seed(0)
    config = AdapterConfig(method=method, r=3, alpha=6, target_modules=["up", "down"])
    model = TwoLayer()
    apply_adapters(model, config)
    randomise_(model)
    fresh = copy.deepcopy(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    fresh_optimizer = torch.optim.SGD([p for p in fresh.parameters() if p.requires_grad], lr=0.1)
    micro_batches = [torch.randn(4, 12) for _ in range(3)]
    for step in range(2):
        calls["norm"] = 0
        for x in micro_batches:
            model(x).pow(2).sum().backward()
        assert calls["norm"] == 2  # once per adapted layer for the whole accumulation
        for x in micro_batches:  # the reference: no norm reused across forwards
            for layer in (fresh.up, fresh.down):
                layer._norm_cache = None
            fresh(x).pow(2).sum().backward()
        for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
            if p.requires_grad:
                assert torch.equal(p.grad, q.grad), name
        optimizer.step(), fresh_optimizer.step()
        optimizer.zero_grad(), fresh_optimizer.zero_grad()
    calls["norm"] = 0
    with torch.no_grad():
        model.up.base_layer.weight.add_(0.1)  # a loaded or changed base weight
    model(micro_batches[0]).sum().backward()
    assert calls["norm"] == 2
