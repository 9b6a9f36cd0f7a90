"""LoRA on mixture-of-experts expert weights (``AdapterConfig.target_parameters``), checked against PEFT's own
``target_parameters`` implementation, a float64 hand computation, and the whole training and export path."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_vlms import lm_adapter, tiny_backbone
from torch import nn
from torch.nn import functional as F

from mmft.adapters import (
    AdapterConfig,
    AdapterConfigError,
    AdapterError,
    apply_adapters,
    load_adapters,
    merge_adapters,
    save_adapters,
    unmerge_adapters,
)
from mmft.adapters.inject import find_adapted_parameters
from mmft.models import VisionLanguageModule

EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def moe_model() -> nn.Module:
    return tiny_backbone("qwen3_vl_moe", seed=1).build().model.eval()


def expert_lora(**fields) -> AdapterConfig:
    return AdapterConfig(**{"method": "lora", "r": 2, "alpha": 6, "target_modules": ["q_proj"],
                            "target_parameters": EXPERTS, **fields})


def randomise_factors(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


def tokens() -> torch.Tensor:
    return torch.randint(5, 200, (2, 10), generator=torch.Generator().manual_seed(3))


def test_an_mmft_expert_adapter_gives_peft_the_same_model(tmp_path):
    base = moe_model()
    model = copy.deepcopy(base)
    report = apply_adapters(model, expert_lora())
    assert len(report.adapted_parameters) == 4  # two expert tensors in each of the two decoder layers
    randomise_factors(model)
    with torch.no_grad():
        expected = model(input_ids=tokens()).logits
        assert not torch.allclose(expected, base(input_ids=tokens()).logits, atol=1e-3)  # the experts changed
    save_adapters(model, tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())
    assert written["target_parameters"] == sorted(f"model.language_model.layers.{i}.{p}" for i in (0, 1)
                                                  for p in EXPERTS)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=tokens()).logits, expected, atol=1e-6, rtol=1e-6)


def test_a_peft_expert_adapter_loads_into_mmft_with_the_same_outputs(tmp_path):
    base = moe_model()
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"], target_parameters=EXPERTS,
                        init_lora_weights=False)  # PEFT draws both factors at random
    peft_model = get_peft_model(copy.deepcopy(base), config).eval()
    peft_model.save_pretrained(tmp_path)
    model = load_adapters(copy.deepcopy(base), tmp_path)
    assert len(find_adapted_parameters(model)) == 2
    with torch.no_grad():
        expected = peft_model(input_ids=tokens()).logits
        torch.testing.assert_close(model(input_ids=tokens()).logits, expected, atol=1e-6, rtol=1e-6)


class Experts(nn.Module):
    """Three experts of 6 -> 5 features, stored [experts, in, out] (``is_transposed``) or [experts, out, in]."""

    def __init__(self, is_transposed: bool) -> None:
        super().__init__()
        self.is_transposed = is_transposed
        shape = (3, 6, 5) if is_transposed else (3, 5, 6)
        self.weight = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        weight = self.weight[expert]  # one expert per row of x
        return torch.einsum("ni,nio->no" if self.is_transposed else "ni,noi->no", x, weight)


class Gate(nn.Module):
    """A 2-D parameter used as a weight by a module that is not an nn.Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4, generator=torch.Generator().manual_seed(2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class Net(nn.Module):
    def __init__(self, is_transposed: bool) -> None:
        super().__init__()
        self.gate = Gate()
        self.experts = Experts(is_transposed)

    def forward(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        return self.experts(self.gate(x), expert)


@pytest.mark.parametrize("is_transposed", [False, True])
def test_both_expert_layouts_and_a_two_dimensional_weight_equal_peft_and_float64(is_transposed, tmp_path):
    base = Net(is_transposed).double()
    x = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expert = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    model = copy.deepcopy(base)
    apply_adapters(model, AdapterConfig(method="lora", r=2, alpha=3, target_parameters=["weight"]))
    randomise_factors(model)
    wrapper = model.experts
    # by hand: expert e's factors are rows e*r..e*r+r-1 of A and the columns k*experts+e of B
    r, scaling = 2, 3 / 2
    lora_a, lora_b = wrapper.lora_A["weight"], wrapper.lora_B["weight"]
    for e in range(3):
        delta = scaling * lora_b[:, [k * 3 + e for k in range(r)]] @ lora_a[e * r:(e + 1) * r]  # [out, in]
        expected = base.experts.weight[e] + (delta.T if is_transposed else delta)
        torch.testing.assert_close(wrapper.adapted_weight("weight")[e], expected, rtol=0, atol=1e-12)
    save_adapters(model, tmp_path)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x, expert), model(x, expert), rtol=0, atol=1e-12)


def test_merging_expert_adapters_equals_the_adapted_model_and_unmerges_exactly():
    model = moe_model()
    apply_adapters(model, expert_lora())
    randomise_factors(model)
    original = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    with torch.no_grad():
        adapted = model(input_ids=tokens()).logits
    merge_adapters(model)
    assert not find_adapted_parameters(model)
    names = set(model.state_dict())
    assert "model.language_model.layers.0.mlp.experts.gate_up_proj" in names
    assert not any("lora" in n or "base_layer" in n for n in names)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=tokens()).logits, adapted, atol=1e-5, rtol=1e-5)
    unmerge_adapters(model)
    restored = {k: v for k, v in model.state_dict().items() if "base_layer" in k}
    for key, value in original.items():
        torch.testing.assert_close(restored[key], value, atol=1e-6, rtol=0)


def test_expert_adapters_train_save_and_export_through_the_module(tmp_path):
    from test_export import export_and_reload, trained
    from test_vlm import vqa_samples

    config = dataclasses.replace(lm_adapter("qwen3_vl_moe", "lora"), target_parameters=EXPERTS)
    module = VisionLanguageModule(tiny_backbone("qwen3_vl_moe", seed=2), config, max_new_tokens=3)
    batch = module.collate(vqa_samples(2))
    module.train()
    module.training_loss(batch).backward()
    factors = {n: p for n, p in module.named_parameters() if "experts.lora_B" in n}
    assert len(factors) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in factors.values())
    module.zero_grad()
    trained(module)
    save_adapters(module.model, tmp_path / "adapter")
    peft_model = PeftModel.from_pretrained(tiny_backbone("qwen3_vl_moe", seed=2).build().model,
                                           tmp_path / "adapter").eval()
    merged, _ = export_and_reload(module, tmp_path / "merged")
    with torch.no_grad():
        expected = module.model(**module._inputs(batch, prompt=False)).logits
        torch.testing.assert_close(peft_model(**module._inputs(batch, prompt=False)).logits, expected,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(**module._inputs(batch, prompt=False)).logits, expected,
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"method": "dora"}, r"target_parameters with method 'dora'.*LoRA only"),
        ({"dropout": 0.1}, r"dropout=0.1 with target_parameters"),
        ({"target_parameters": "mlp.experts.down_proj"}, r"give a list of parameter names"),
    ],
)
def test_expert_adapter_settings_mmft_cannot_honour_are_named(fields, message):
    with pytest.raises(AdapterConfigError, match=message):
        expert_lora(**fields)


def test_expert_targets_that_miss_or_overlap_are_named():
    with pytest.raises(AdapterError, match=r"target_parameters=.*matches no module.*gate_up_proj"):
        apply_adapters(moe_model(), expert_lora(target_parameters=["mlp.experts.gate_proj"]))
    with pytest.raises(AdapterError, match=r"nn.Linear layers only.*target_parameters.*experts.gate_up_proj"):
        apply_adapters(moe_model(), expert_lora(target_modules=["experts"], target_parameters=None))
    with pytest.raises(AdapterError, match=r"q_proj.weight, a parameter of .*q_proj, which target_modules adapts"):
        apply_adapters(moe_model(), expert_lora(target_parameters=["q_proj.weight"]))
    with pytest.raises(AdapterError, match=r"only floating-point 2-D weights and 3-D"):
        apply_adapters(moe_model(), expert_lora(target_parameters=["input_layernorm.weight"]))
