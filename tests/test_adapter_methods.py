"""The method table (mmft.adapters.methods) is what the layers, the config checks and the PEFT folders follow."""

from __future__ import annotations

import json
import math

import pytest
from torch import nn

from mmft.adapters import AdapterConfig, apply_adapters, find_adapted_modules, save_adapters
from mmft.adapters.config import AdapterConfigError
from mmft.adapters.methods import METHODS, adapter_method, method_of_peft_folder


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))


@pytest.mark.parametrize("name", [name for name, method in METHODS.items() if not method.full_weights])
def test_each_layer_has_the_parts_its_method_names(name, tmp_path):
    method = adapter_method(name)
    model = tiny_model()
    apply_adapters(model, AdapterConfig(method=name, r=4, alpha=8, target_modules=["0", "2"]))
    layer = find_adapted_modules(model)["0"]
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert ("lora_magnitude_vector" in trainable) == method.magnitude
    assert ({"vera_lambda_b", "vera_lambda_d"} <= trainable) == method.shared_projections
    assert ("lora_A.weight" in trainable) == (not method.shared_projections)
    # LoRA's s = alpha / r (hand-worked: 8 / 4 = 2); VeRA's vectors carry the scale
    assert layer.scaling == (1.0 if method.shared_projections else 2.0)
    save_adapters(model, tmp_path / "adapter")
    folder = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert folder["peft_type"] == method.peft_type
    assert method_of_peft_folder(folder["peft_type"], folder.get("use_dora", False)) is method


def test_rslora_scaling_and_unknown_methods():
    assert adapter_method("lora").scaling(alpha=8, r=16, use_rslora=True) == pytest.approx(8 / math.sqrt(16))
    with pytest.raises(KeyError, match="'pissa': choose one of lora, dora, vera, dvora"):
        adapter_method("pissa")
    with pytest.raises(AdapterConfigError, match=r"method='pissa': choose one of lora, dora, vera, dvora"):
        AdapterConfig(method="pissa", target_modules=["0"])
    with pytest.raises(AdapterConfigError, match="magnitude_only_modules needs method dora or dvora"):
        AdapterConfig(method="vera", target_modules=["0"], magnitude_only_modules=["2"])
    assert method_of_peft_folder("IA3", False) is None
