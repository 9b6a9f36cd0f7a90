"""mmft adapters against the reference implementation, PEFT: same outputs, same gradients, each other's files."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, VeraConfig, get_peft_model
from tiny_models import MODELS, first_output

from mmft.adapters import AdapterConfig, apply_adapters, load_adapters, save_adapters

ATOL = 1e-5


def peft_name(name: str) -> str:
    """mmft parameter name -> the PEFT model's name for the same tensor."""
    name = re.sub(r"\.(lora_A|lora_B)\.weight$", r".\1.default.weight", name)
    name = re.sub(r"\.lora_magnitude_vector$", ".lora_magnitude_vector.default.weight", name)
    name = re.sub(r"\.(vera_lambda_b|vera_lambda_d)$", r".\1.default", name)
    return "base_model.model." + name


def randomise_(model: torch.nn.Module, seed: int = 3) -> None:
    """Give every trainable tensor a non-trivial value (B = 0 and lambda_b = 0 would hide most of the math)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.requires_grad:
                if "magnitude" in name:
                    p.mul_(0.5 + torch.rand(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def outputs_and_grads(model, inputs, train: bool, seed: int = 11):
    model.train(train)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # same dropout masks when both sides draw them in the same order
    out = first_output(model, inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    return out.detach(), grads


def peft_config(method: str, targets, dropout: float = 0.0, **extra):
    if method == "vera":
        return VeraConfig(r=4, target_modules=targets, vera_dropout=dropout, projection_prng_key=7, **extra)
    return LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=dropout, use_dora=method == "dora",
                      **extra)


def assert_same(mmft_model, peft_model, inputs, train: bool):
    out_m, grads_m = outputs_and_grads(mmft_model, inputs, train)
    out_p, grads_p = outputs_and_grads(peft_model, inputs, train)
    grads_p = {n.replace(".modules_to_save.default", ""): g for n, g in grads_p.items()}
    torch.testing.assert_close(out_m, out_p, atol=ATOL, rtol=1e-4)
    assert grads_m, "no trainable parameter received a gradient"
    for name, grad in grads_m.items():
        torch.testing.assert_close(grad, grads_p[peft_name(name)], atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("method", ["lora", "dora", "vera"])
def test_peft_folder_loads_in_mmft_with_same_outputs_and_gradients(tmp_path, family, method):
    build, make_inputs, targets = MODELS[family]
    base, inputs = build(), make_inputs()
    peft_model = get_peft_model(copy.deepcopy(base), peft_config(method, targets))
    randomise_(peft_model)
    peft_model.save_pretrained(tmp_path)

    mmft_model = load_adapters(copy.deepcopy(base), tmp_path)
    assert_same(mmft_model, peft_model, inputs, train=False)
    assert_same(mmft_model, peft_model, inputs, train=True)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_mmft_folder_loads_in_peft_with_same_outputs(tmp_path, method):
    build, make_inputs, targets = MODELS["llama"]
    base, inputs = build(), make_inputs()
    cfg = AdapterConfig(method=method, r=4, alpha=8, target_modules=targets, use_rslora=True,
                        rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3.0},
                        modules_to_save=["lm_head"], bias="none")
    mmft_model = copy.deepcopy(base)
    apply_adapters(mmft_model, cfg)
    randomise_(mmft_model)
    save_adapters(mmft_model, tmp_path)

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert peft_model.base_model.model.model.layers[0].mlp.down_proj.r["default"] == 2
    assert_same(mmft_model, peft_model, inputs, train=False)
    assert_same(mmft_model, peft_model, inputs, train=True)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_mmft_vera_folder_loads_in_peft_with_same_outputs(tmp_path, family):
    """The other way for VeRA: PEFT's own loader takes mmft's VeRA folder (its projections regenerated from the
    seed) and computes what mmft's trained model computes, with the same gradients."""
    build, make_inputs, targets = MODELS[family]
    base, inputs = build(), make_inputs()
    mmft_model = copy.deepcopy(base)
    apply_adapters(mmft_model, AdapterConfig(method="vera", r=4, target_modules=targets, vera_seed=7))
    randomise_(mmft_model)
    save_adapters(mmft_model, tmp_path)

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, is_trainable=True)
    assert type(peft_model.peft_config["default"]).__name__ == "VeraConfig"
    assert_same(mmft_model, peft_model, inputs, train=False)
    assert_same(mmft_model, peft_model, inputs, train=True)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_dropout_rslora_and_patterns_match_peft(tmp_path, method):
    """Dropout in eval is the identity; in training both draw the same masks from the same seed."""
    build, make_inputs, targets = MODELS["bart"]
    base, inputs = build(), make_inputs()
    peft_model = get_peft_model(copy.deepcopy(base), peft_config(
        method, targets, dropout=0.3, use_rslora=True, rank_pattern={"fc1": 2}, alpha_pattern={"q_proj": 5}))
    randomise_(peft_model)
    peft_model.save_pretrained(tmp_path)
    mmft_model = load_adapters(copy.deepcopy(base), tmp_path)
    assert_same(mmft_model, peft_model, inputs, train=False)
    assert_same(mmft_model, peft_model, inputs, train=True)


def test_vera_projections_match_peft_from_the_seed(tmp_path):
    """A VeRA folder saved without its projections must regenerate PEFT's from projection_prng_key."""
    build, make_inputs, targets = MODELS["clip"]
    base, inputs = build(), make_inputs()
    cfg = VeraConfig(r=4, target_modules=targets, projection_prng_key=7, save_projection=False)
    peft_model = get_peft_model(copy.deepcopy(base), cfg)
    randomise_(peft_model)
    peft_model.save_pretrained(tmp_path)
    mmft_model = load_adapters(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(mmft_model.mmft_vera.vera_A, peft_model.base_model.vera_A["default"])
    torch.testing.assert_close(mmft_model.mmft_vera.vera_B, peft_model.base_model.vera_B["default"])
    assert_same(mmft_model, peft_model, inputs, train=False)


def test_bias_and_modules_to_save_round_trip_through_peft(tmp_path):
    build, make_inputs, targets = MODELS["bart"]
    base, inputs = build(), make_inputs()
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, use_dora=True, bias="all",
        modules_to_save=["layernorm_embedding"]))
    randomise_(peft_model)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad and name.endswith("bias"):
                p.add_(0.5)
    peft_model.save_pretrained(tmp_path)
    mmft_model = load_adapters(copy.deepcopy(base), tmp_path)
    out_p = first_output(peft_model.eval(), inputs)
    torch.testing.assert_close(first_output(mmft_model, inputs), out_p, atol=ATOL, rtol=1e-4)

    save_adapters(mmft_model, tmp_path / "again")
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "again")
    torch.testing.assert_close(first_output(reloaded, inputs), out_p, atol=ATOL, rtol=1e-4)


def test_modules_to_save_match_the_modules_peft_trains(tmp_path):
    """mmft trains the modules PEFT wraps for the same modules_to_save ("norm": the final norm, not each layer's
    input_layernorm, a name that only ends with it), and its folder names them exactly, so PEFT of any version
    rebuilds the same model from it."""
    build, make_inputs, targets = MODELS["llama"]
    base, inputs = build(), make_inputs()
    model = copy.deepcopy(base)
    report = apply_adapters(model, AdapterConfig(method="lora", r=2, alpha=4, target_modules=targets,
                                                 modules_to_save=["norm"]))
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=2, lora_alpha=4, target_modules=targets,
                                                                modules_to_save=["norm"]))
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules()
               if type(m).__name__ == "ModulesToSaveWrapper"}
    assert set(report.modules_to_save) == wrapped == {"model.norm"}
    randomise_(model)
    save_adapters(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"] == ["model.norm"]
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(first_output(reloaded, inputs), first_output(model, inputs), atol=ATOL, rtol=1e-4)


def test_magnitude_only_modules_load_in_peft_as_zero_updates(tmp_path):
    build, make_inputs, _ = MODELS["llama"]
    base, inputs = build(), make_inputs()
    cfg = AdapterConfig(method="dora", r=4, alpha=8, target_modules=["q_proj", "v_proj"],
                        magnitude_only_modules=["o_proj", "up_proj"])
    mmft_model = copy.deepcopy(base)
    report = apply_adapters(mmft_model, cfg)
    assert len(report.magnitude_only) == 4 and len(report.adapted) == 4
    randomise_(mmft_model)
    save_adapters(mmft_model, tmp_path)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(first_output(peft_model, inputs), first_output(mmft_model, inputs),
                               atol=ATOL, rtol=1e-4)
    again = load_adapters(copy.deepcopy(base), tmp_path)
    assert again.model.layers[0].self_attn.o_proj.magnitude_only
    torch.testing.assert_close(first_output(again, inputs), first_output(mmft_model, inputs))
