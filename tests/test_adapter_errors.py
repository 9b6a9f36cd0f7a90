"""Every way the adapter library can be misused ends in an error that names the module, key or file."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_llama
from torch import nn

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


def lora(**kw):
    return AdapterConfig(**{"method": "lora", "r": 2, "alpha": 4, **kw})


def test_pattern_matching_nothing_lists_similar_module_names():
    with pytest.raises(AdapterError, match=r"target_modules=.*matches no module.*q_proj"):
        apply_adapters(tiny_llama(), lora(target_modules=["qproj"]))
    with pytest.raises(AdapterError, match=r"modules_to_save=.*matches no module.*lm_head"):
        apply_adapters(tiny_llama(), lora(target_modules=["q_proj"], modules_to_save=["lm_heads"]))


def test_regex_targets_must_match_the_whole_name():
    with pytest.raises(AdapterError, match="matches no module"):
        apply_adapters(tiny_llama(), lora(target_modules="q_proj"))  # a full match is needed, as in PEFT
    report = apply_adapters(tiny_llama(), lora(target_modules=r".*\.q_proj"))
    assert report.adapted == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_applying_twice_is_an_error():
    model = tiny_llama()
    apply_adapters(model, lora(target_modules=["q_proj"]))
    with pytest.raises(AdapterError, match="already has mmft adapters"):
        apply_adapters(model, lora(target_modules=["v_proj"]))


def test_unsupported_layer_types_are_named():
    with pytest.raises(AdapterError, match=r"'model.embed_tokens' \(Embedding\).*nn.Linear layers only"):
        apply_adapters(tiny_llama(), lora(target_modules=["embed_tokens"]))
    with pytest.raises(AdapterError, match=r"\(LlamaAttention\)"):
        apply_adapters(tiny_llama(), lora(target_modules=["self_attn"]))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"method": "dorra"}, "method='dorra'"),
        ({"r": 0}, r"AdapterConfig.r=0"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"bias": "some"}, "bias='some'"),
        ({"target_modules": None}, "target_modules is required"),
        ({"magnitude_only_modules": ["o_proj"]}, "magnitude_only_modules needs method dora"),
        ({"method": "vera", "rank_pattern": {"q_proj": 2}}, "not available with VeRA"),
        ({"target_modules": ".*q_proj", "layers_to_transform": [0]}, "layers_to_transform applies to a list"),
        ({"rank_pattern": {"q_proj": 0}}, r"rank_pattern\['q_proj'\]=0"),
    ],
)
def test_bad_config_values_name_the_field(fields, message):
    with pytest.raises(AdapterConfigError, match=message):
        AdapterConfig(**{"method": "lora", "target_modules": ["q_proj"], **fields})


def test_loading_into_a_model_of_another_size_names_the_key_and_shapes(tmp_path):
    model = tiny_llama()
    apply_adapters(model, lora(target_modules=["q_proj"]))
    save_adapters(model, tmp_path)
    other = tiny_llama()
    apply_adapters(other, lora(target_modules=["q_proj"], r=3))
    with pytest.raises(AdapterError, match=r"q_proj.lora_A.weight has shape \(2, 32\) but .* has \(3, 32\)"):
        load_adapters(other, tmp_path)


def test_loading_an_adapter_for_other_modules_lists_the_keys(tmp_path):
    model = tiny_llama()
    apply_adapters(model, lora(target_modules=["q_proj"]))
    save_adapters(model, tmp_path)
    other = tiny_llama()
    apply_adapters(other, lora(target_modules=["k_proj"]))
    with pytest.raises(AdapterError, match=r"keys with no place in the model.*q_proj.*missing from the file.*k_proj"):
        load_adapters(other, tmp_path)


def test_bad_folders_are_named(tmp_path):
    with pytest.raises(AdapterError, match=f"{tmp_path}.*no adapter config"):
        load_adapters(tiny_llama(), tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="adapter_config.json: not valid JSON"):
        load_adapters(tiny_llama(), tmp_path)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "fan_in_fan_out": True}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="fan_in_fan_out=True is not supported"):
        load_adapters(tiny_llama(), tmp_path)
    config.update(fan_in_fan_out=False, peft_type="IA3")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="peft_type='IA3'"):
        load_adapters(tiny_llama(), tmp_path)
    config.update(peft_type="LORA")
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="adapter_model.safetensors: missing adapter weights"):
        load_adapters(tiny_llama(), tmp_path)


def test_merge_state_errors(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(AdapterError, match="no unmerged mmft adapters"):
        merge_adapters(model)
    apply_adapters(model, lora(target_modules=["0"]))
    with pytest.raises(AdapterError, match="no merged mmft adapters"):
        unmerge_adapters(model)
    merge_adapters(model)
    with pytest.raises(AdapterError, match="adapters are merged"):
        save_adapters(model, tmp_path)
    unmerge_adapters(model)
    save_adapters(model, tmp_path)


def test_dvora_folders_are_refused_by_peft_rather_than_misread(tmp_path):
    model = tiny_llama()
    apply_adapters(model, AdapterConfig(method="dvora", r=4, target_modules=["q_proj", "v_proj"]))
    save_adapters(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["peft_type"] == "DVORA"
    reloaded = load_adapters(tiny_llama(), tmp_path)
    x = {"input_ids": torch.tensor([[1, 2, 3]])}
    torch.testing.assert_close(reloaded(**x).logits, model(**x).logits)
    from peft import PeftModel

    with pytest.raises(Exception, match="DVORA"):
        PeftModel.from_pretrained(tiny_llama(), tmp_path)


def test_modules_to_save_on_a_module_list_names_its_entries():
    """PEFT cannot train a ModuleList as one module: the error names the entries to write instead."""
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(4, 4))
    model.add_module("mergers", nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]))
    with pytest.raises(AdapterError, match=r"mergers is a container.*mergers\.0, mergers\.1"):
        apply_adapters(model, lora(target_modules=["proj"], modules_to_save=["mergers"]))
    report = apply_adapters(model, lora(target_modules=["proj"], modules_to_save=["mergers.0", "mergers.1"]))
    assert report.modules_to_save == ["mergers.0", "mergers.1"]
