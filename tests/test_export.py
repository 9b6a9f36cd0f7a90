"""Merged exports: every image-text-to-text family's folder (LLaVA-1.5 included) loads offline with transformers' own
classes (model and processor) and gives the adapted model's logits and greedy answers (LoRA and DoRA, fp32, bf16
and 4-bit bases; DoRA's trained magnitude is the merged weight's row norm); the VL-BART folder reloads in mmft with
the same outputs; mmft_merged.yaml rebuilds the merged model without adapters."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from generation_checks import ATOL, first_step_logits
from safetensors import safe_open
from test_vlm import vqa_samples as chat_samples
from tiny_vlms import FAMILIES, QWEN2_5_VL_4BIT_SIZES, TOKENIZER, lm_adapter
from tiny_vlms import tiny_backbone as tiny_vlm_backbone
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    BartForConditionalGeneration,
)

from data_modules import ExampleDataset, VQAv2
from data_modules.records import Example, Sample, Turn
from mmft.adapters import QuantizationConfig, find_adapted_modules
from mmft.adapters.base_weight import is_4bit
from mmft.models import (
    HFVisionLanguage,
    VisionLanguageFromConfig,
    VisionLanguageModule,
)
from mmft.models.export import MERGED_CONFIG, export_merged
from mmft.tasks import SHORT_ANSWER_SUFFIX


def trained(module, scale: float = 0.05, seed: int = 0):
    """Move every trainable tensor away from its (identity) initial value, as training would; DoRA magnitudes
    included, so a merge that lost them would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=generator).to(param.dtype))
    return module.eval()


def magnitudes_survive(module, merged) -> None:
    """DoRA: W' = m (W + s B A) / ||W + s B A||, so each merged row's norm is the trained magnitude m."""
    merged_modules = dict(merged.named_modules())
    checked = 0
    for name, layer in find_adapted_modules(module.model).items():
        if layer.use_dora:
            norms = merged_modules[name].weight.float().norm(dim=1)
            rtol = 1e-5 if merged_modules[name].weight.dtype == torch.float32 else 1e-2
            torch.testing.assert_close(norms, layer.lora_magnitude_vector.float().abs(), rtol=rtol, atol=1e-6)
            checked += 1
    assert checked > 0


def greedy(model, inputs: dict, prompt_length: int, tokenizer, max_new_tokens: int) -> str:
    """Greedy decoding with the folder's own generation config (pad and eos as mmft generates)."""
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip()


def test_merged_config_composes_after_the_recipe(tmp_path, monkeypatch, capsys):
    """The embedded default's recipe, then the export's mmft_merged.yaml: the merged folder as the backbone."""
    from mmft.cli import main

    module = trained(VisionLanguageModule(tiny_vlm_backbone("llava", seed=2), lm_adapter("llava", "lora")))
    folder = export_merged(module, tmp_path / "merged")
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.setattr("sys.argv", ["mmft", "test", "--config", "configs/tiny/llava_dora.yaml",
                                     "--config", str(folder / MERGED_CONFIG), "--print_config"])
    with pytest.raises(SystemExit):
        main()
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert printed["adapter"] is None
    assert printed["backbone"]["class_path"] == "mmft.models.HFVisionLanguage"
    assert printed["backbone"]["init_args"].items() >= {"path": str(folder), "dtype": "float32"}.items()
    assert "tokenizer" not in printed["backbone"]["init_args"]  # the recipe's tiny-model settings are gone


def test_fitting_a_model_without_adapters_is_refused():
    module = VisionLanguageModule(tiny_vlm_backbone("llava", seed=2), adapter=None)
    with pytest.raises(RuntimeError, match="adapter is null"):
        module.on_fit_start()


# ------------------------------------------------------------------------------------ image-text-to-text families


def export_and_reload(module: VisionLanguageModule, folder: Path):
    """Export; the module stays unmerged, no temporary folder is left, and transformers' Auto classes load the folder
    offline as a plain model of the module's class, in the base's dtype, with DoRA's magnitudes as its row norms."""
    before = {k: v.clone() for k, v in module.state_dict().items()}
    export_merged(module, folder)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert not list(folder.parent.glob(f".{folder.name}.*"))
    merged = AutoModelForImageTextToText.from_pretrained(folder, local_files_only=True).eval()
    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    assert type(merged) is type(module.model)
    dtype = next(p.dtype for p in module.model.parameters() if not p.requires_grad)
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {dtype}
    assert not any("lora" in k or "magnitude" in k or "base_layer" in k for k in merged.state_dict())
    if module.adapter_config.method == "dora":
        magnitudes_survive(module, merged)
    return merged, processor


@pytest.mark.parametrize("method", ["lora", "dora"])
@pytest.mark.parametrize("family", FAMILIES)
def test_vision_language_merged_folder_loads_in_transformers_and_equals_the_adapted_model(family, method, tmp_path):
    torch.manual_seed(0)  # the adapters' initial A
    module = trained(VisionLanguageModule(tiny_vlm_backbone(family, seed=2), lm_adapter(family, method),
                                          max_new_tokens=4))
    merged, processor = export_and_reload(module, tmp_path / "merged")
    samples = chat_samples(2)
    batch = module.collate(samples)
    with torch.no_grad():
        expected = module.model(**module._inputs(batch, prompt=False)).logits
        got = merged(**module._inputs(batch, prompt=False)).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)  # measured: 1.8e-7 at most, logits about 0.5
    for sample, answer in zip(samples, module.generate_answers(batch)):
        # what a user of the folder does: its chat template and processor give mmft's prompt, its generation
        # config (end of turn, padding) mmft's greedy answer
        inputs = folder_inputs(processor, sample)
        assert inputs["input_ids"].tolist() == module.collate([sample])["prompt_input_ids"].tolist()
        assert greedy(merged, dict(inputs), inputs["input_ids"].shape[1], processor.tokenizer, 4) == answer
    # mmft's batched, left-padded generation: each row's first-step logits are the folder's for that sample alone
    longer = Sample(Example("vqav2", "long", (Turn("user", "Is there a blue square in the picture? Look closely."),),
                            images=(Path("long.jpg"),), references=("no",)), samples[1].images)
    padded = [samples[0], longer]
    together, mask = first_step_logits(module, padded)
    assert (mask == 0).any()
    for row, sample in enumerate(padded):
        with torch.no_grad():
            alone = merged.generate(**folder_inputs(processor, sample), max_new_tokens=1, do_sample=False,
                                    output_logits=True, return_dict_in_generate=True).logits[0][0]
        torch.testing.assert_close(together[row], alone.float(), atol=ATOL, rtol=0)


def folder_inputs(processor, sample) -> dict:
    """A sample's prompt as a user of an exported folder makes it: the folder's chat template, then its processor."""
    question = f"{sample.example.turns[0].text}\n{SHORT_ANSWER_SUFFIX}"
    if processor.chat_template is None:  # PaliGemma: the processor writes its prompt format itself
        return dict(processor(text=[f"<image>{question}"], images=[list(sample.images)], return_tensors="pt"))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return dict(processor(text=[text], images=[list(sample.images)], return_tensors="pt"))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_vision_language_bf16_merged_folder_stays_bf16_and_is_as_close_as_the_adapted_model(method, tmp_path):
    built = tiny_vlm_backbone("qwen2_5_vl", seed=3).build()
    built.model.to(torch.bfloat16).save_pretrained(tmp_path / "base")
    built.processor.save_pretrained(tmp_path / "base")
    torch.manual_seed(0)
    module = trained(VisionLanguageModule(HFVisionLanguage(path=str(tmp_path / "base"), dtype="bfloat16"),
                                          lm_adapter("qwen2_5_vl", method)))
    merged, _ = export_and_reload(module, tmp_path / "merged")
    assert merged.dtype == torch.bfloat16
    inputs = module._inputs(module.collate(chat_samples(2)), prompt=False)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as Lightning's bf16-mixed evaluates the adapted model
            adapted = module.model(**inputs).logits.float()
        got = merged(**inputs).logits.float()
        exact = copy.deepcopy(module.model).float()(**inputs).logits
    # the merge rounds W + delta to bf16 once, where the adapted model rounds W and the update apart: measured over 3
    # seeds, the merged model's largest logit error is 0.85x to 1.10x the adapted model's (about 3e-3)
    assert (got - exact).abs().max() <= 1.5 * (adapted - exact).abs().max()


def test_vision_language_4bit_base_merges_into_plain_weights(tmp_path):
    """QDoRA: every 4-bit layer, adapted (q, v, o, down) or not (k, gate, up), is saved dequantized, so plain
    transformers loads the folder and computes what the adapted 4-bit model computes."""
    backbone = VisionLanguageFromConfig(family="qwen2_5_vl", tokenizer=TOKENIZER, seed=2,
                                        quantization=QuantizationConfig(compute_dtype="float32"),
                                        **QWEN2_5_VL_4BIT_SIZES)
    torch.manual_seed(0)
    module = trained(VisionLanguageModule(backbone, lm_adapter("qwen2_5_vl", "dora")))
    assert any(is_4bit(m.weight) for n, m in module.model.named_modules() if n.endswith("k_proj"))
    merged, _ = export_and_reload(module, tmp_path / "merged")
    inputs = module._inputs(module.collate(chat_samples(2)), prompt=False)
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, module.model(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_vision_language_merged_config_rebuilds_the_merged_model_without_adapters(tmp_path):
    module = trained(VisionLanguageModule(tiny_vlm_backbone("smolvlm", seed=2), lm_adapter("smolvlm", "dora"),
                                          max_new_tokens=4))
    folder = export_merged(module, tmp_path / "merged")
    overlay = yaml.safe_load((folder / MERGED_CONFIG).read_text())["model"]["init_args"]
    assert overlay["adapter"] is None and overlay["backbone"] == {
        "class_path": "mmft.models.HFVisionLanguage", "init_args": {"path": str(folder), "dtype": "float32"}}
    reloaded = VisionLanguageModule(HFVisionLanguage(**overlay["backbone"]["init_args"]), adapter=None,
                                    max_new_tokens=4).eval()
    assert not any(p.requires_grad for p in reloaded.parameters())
    assert reloaded.end_of_turn_id == module.end_of_turn_id
    batch = module.collate(chat_samples(2))
    assert torch.equal(reloaded.collate(chat_samples(2))["input_ids"], batch["input_ids"])
    assert reloaded.generate_answers(batch) == module.generate_answers(batch)


# ------------------------------------------------------------------------------------------------------- VL-BART


def test_vlbart_merged_weights_reload_in_mmft_with_the_same_outputs(sample_data, tmp_path):
    from test_vlbart import tiny_module

    module = trained(tiny_module("dora", num_beams=3))  # the answers below are beam search's, as the recipes use
    examples = VQAv2(
        sample_data / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json",
        sample_data / "coco" / "val2014",
        "val2014",
        sample_data / "vqav2" / "v2_mscoco_val2014_annotations.json",
    ).read()[:3]
    dataset = ExampleDataset(examples)
    batch = module.collate([dataset[i] for i in range(len(dataset))])
    folder = export_merged(module, tmp_path / "merged")

    bart = BartForConditionalGeneration.from_pretrained(folder / "bart", local_files_only=True)
    assert not any("lora" in k for k in bart.state_dict())  # a plain transformers BART
    overlay = yaml.safe_load((folder / MERGED_CONFIG).read_text())["model"]["init_args"]
    assert overlay["adapter"] is None
    reloaded = tiny_module("dora", num_beams=3, **overlay).eval()  # the recipe's other settings, the export's weights
    assert reloaded.adapter_report is None and not any(p.requires_grad for p in reloaded.parameters())
    magnitudes_survive(module, reloaded.model)

    def logits(model_module):
        with torch.no_grad():
            return model_module.model(batch["input_ids"], batch["attention_mask"],
                                      model_module.visual_features(batch), batch["image_counts"],
                                      batch["labels"]).logits

    torch.testing.assert_close(logits(reloaded), logits(module), atol=2e-5, rtol=1e-4)
    assert reloaded.generate_answers(batch) == module.generate_answers(batch)


def test_vlbart_visual_embedding_file_errors(tmp_path):
    from test_vlbart import tiny_module

    from mmft.models.vlbart import VLBartConfigError

    with pytest.raises(VLBartConfigError, match=r"model\.init_args\.visual_embedding=.*no such file"):
        tiny_module("dora", adapter=None, visual_embedding=str(tmp_path / "missing.safetensors"))
    from safetensors.torch import save_file

    save_file({"feature_projection.weight": torch.zeros(2, 2)}, tmp_path / "wrong.safetensors")
    with pytest.raises(VLBartConfigError, match="does not fit the visual embedding"):
        tiny_module("dora", adapter=None, visual_embedding=str(tmp_path / "wrong.safetensors"))
