"""LlavaModule: the three backbones, loss masking, generation, trainable-only checkpoints, optimizer groups."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from generation_checks import assert_batched_logits_equal_one_by_one
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPImageProcessor,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from data_modules.records import Example, Sample, Turn
from mmft.adapters import AdapterConfig
from mmft.models import (
    CheckpointMismatchError,
    HFLlava,
    LlavaFromConfig,
    LlavaModule,
    ParamGroup,
    TimmLlava,
    WarmupCosine,
)
from mmft.models.llava_backbones import BackboneConfigError
from mmft.models.optim import ParamGroupError, build_param_groups

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "configs" / "tiny" / "tokenizer")
LM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 16, "patch_size": 8}
TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256}


def adapter(method: str = "dora", targets=LM_TARGETS, dropout: float = 0.0) -> AdapterConfig:
    return AdapterConfig(method=method, r=4, alpha=8, dropout=dropout, target_modules=targets,
                         modules_to_save=["multi_modal_projector"])


def tiny_backbone(seed: int = 0) -> LlavaFromConfig:
    return LlavaFromConfig(tokenizer=TOKENIZER, vision_config=VISION, text_config=TEXT, seed=seed)


def vqa_samples() -> list[Sample]:
    rows = [("1", "What color is the circle?", "red", (220, 40, 40)),
            ("2", "Is there a square in the picture? Look carefully.", "no", (40, 80, 225))]
    return [
        Sample(Example("vqav2", id_, (Turn("user", q), Turn("assistant", a)), images=(Path(f"{id_}.jpg"),),
                       references=(a,) * 10), [Image.new("RGB", (24, 16), color)])
        for id_, q, a, color in rows
    ]


@pytest.fixture(scope="module")
def module() -> LlavaModule:
    return LlavaModule(tiny_backbone(), adapter())


def test_from_config_is_a_function_of_the_config():
    first, second = tiny_backbone(seed=3).build(), tiny_backbone(seed=3).build()
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    other = tiny_backbone(seed=4).build()
    assert not torch.equal(first.model.lm_head.weight, other.model.lm_head.weight)
    assert first.num_image_tokens == (16 // 8) ** 2
    assert first.model.config.text_config.vocab_size == len(first.tokenizer)


def test_hf_llava_checkpoint_loads_from_a_local_folder(tmp_path):
    built = tiny_backbone(seed=1).build()
    built.model.save_pretrained(tmp_path)
    built.tokenizer.save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(tmp_path)

    loaded = LlavaModule(HFLlava(path=str(tmp_path)), adapter())
    assert isinstance(loaded.model, LlavaForConditionalGeneration)
    assert loaded.base_model_name_or_path == str(tmp_path)
    batch = loaded.collate(vqa_samples())
    reference = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    loaded.eval()
    with torch.no_grad():  # adapters start as the identity, so outputs equal the saved model's
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"]).logits
        got = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           pixel_values=batch["pixel_values"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_hf_llava_path_errors_name_the_config_key(tmp_path):
    with pytest.raises(BackboneConfigError, match=r"model\.init_args\.backbone\.init_args\.path is not set"):
        HFLlava().build()
    with pytest.raises(BackboneConfigError, match=r"backbone\.init_args\.path='.*missing': no such folder"):
        HFLlava(path=str(tmp_path / "missing")).build()


def word_tokenizer(folder: Path) -> None:
    """A tokenizer without <image>, saved like a causal LM's own."""
    words = ["<unk>", "<pad>", "</s>", "<s>", "USER", ":", "ASSISTANT", "What", "color", "is", "the", "circle", "?",
             "red", "no", "A", "chat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
                            bos_token="<s>").save_pretrained(folder)


def test_timm_tower_with_a_local_causal_lm(tmp_path):
    lm_folder = tmp_path / "lm"
    word_tokenizer(lm_folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=17, **TEXT)).save_pretrained(lm_folder)
    tower = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=3)
    torch.save(tower.state_dict(), tmp_path / "tower.pth")
    projector = {"model.mm_projector.0.weight": torch.randn(32, 192), "model.mm_projector.0.bias": torch.randn(32),
                 "model.mm_projector.2.weight": torch.randn(32, 32), "model.mm_projector.2.bias": torch.randn(32)}
    torch.save(projector, tmp_path / "mm_projector.bin")

    backbone = TimmLlava(
        vision_tower="vit_tiny_patch16_224",
        language_model=str(lm_folder),
        vision_checkpoint=str(tmp_path / "tower.pth"),
        projector_checkpoint=str(tmp_path / "mm_projector.bin"),
        vision_kwargs={"img_size": 32, "patch_size": 8, "depth": 3},
        seed=5,
    )
    module = LlavaModule(backbone, adapter(), max_new_tokens=3)
    net = module.model
    assert net.num_image_tokens == 16  # (32 / 8)^2 patches, CLS dropped
    assert torch.equal(net.vision_tower.blocks[0].attn.qkv.weight, tower.blocks[0].attn.qkv.weight)
    assert torch.equal(net.multi_modal_projector.linear_1.weight, projector["model.mm_projector.0.weight"])
    # <image> was added to the tokenizer, beyond the language model's 17 embeddings
    assert module.collate.image_token_id == 17
    assert module.base_model_name_or_path == str(lm_folder)
    adapted = module.adapter_report.adapted
    assert adapted and all(".language_model." in f".{n}" for n in adapted)

    batch = module.collate(vqa_samples())
    loss = module.training_loss(batch)
    loss.backward()
    assert net.multi_modal_projector.linear_1.weight.grad is not None
    assert all(p.grad is None for p in net.vision_tower.parameters())
    module.eval()
    answers = module.generate_answers(batch)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_timm_tower_with_a_causal_lm_from_config():
    backbone = TimmLlava(vision_tower="resnet18", language_model={"model_type": "llama", **TEXT},
                         tokenizer=TOKENIZER, vision_kwargs={"pretrained_cfg_overlay": {"input_size": (3, 32, 32)}})
    module = LlavaModule(backbone, adapter("lora"))
    assert module.model.num_image_tokens == 4  # a CNN's second-to-last stage (stride 16) at 32 px: a 2x2 grid
    module.train()
    assert not module.model.vision_tower.training  # frozen BatchNorm statistics stay put
    running_mean = module.model.vision_tower.bn1.running_mean.clone()
    assert torch.isfinite(module.training_loss(module.collate(vqa_samples())))
    assert torch.equal(module.model.vision_tower.bn1.running_mean, running_mean)
    with pytest.raises(BackboneConfigError, match=r"backbone\.init_args\.tokenizer is not set"):
        TimmLlava(vision_tower="resnet18", language_model={"model_type": "llama", **TEXT}).build()


def test_loss_is_the_mean_over_supervised_tokens_only(module):
    batch = module.collate(vqa_samples())
    module.eval()
    with torch.no_grad():
        ours = module.training_loss(batch)
        # transformers' own shifted, -100-ignoring loss as the reference
        reference = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
    torch.testing.assert_close(ours, reference)
    supervised = (batch["labels"] != -100).sum(dim=1).tolist()
    assert supervised == [2, 2]  # " red</s>", " no</s>"


def test_batched_left_padded_generation_equals_one_by_one(module):
    module.eval()
    samples = vqa_samples()
    together = module.generate_answers(module.collate(samples))
    alone = [module.generate_answers(module.collate([s]))[0] for s in samples]
    assert together == alone
    assert_batched_logits_equal_one_by_one(module, samples)


def test_adapters_must_stay_in_the_language_model():
    with pytest.raises(BackboneConfigError, match="outside the language model"):
        LlavaModule(tiny_backbone(), adapter(targets=["q_proj", "v_proj"]))  # the CLIP tower has them too


def test_checkpoints_hold_trainable_parameters_only(module):
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == trainable
    assert all(("lora_" in k or "multi_modal_projector" in k) for k in trainable)
    assert not any("vision_tower" in k or "base_layer" in k for k in checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)  # exactly the trainable keys: accepted
    missing = {"state_dict": dict(list(checkpoint["state_dict"].items())[1:])}
    with pytest.raises(CheckpointMismatchError, match="1 missing"):
        module.on_load_checkpoint(missing)
    extra = {"state_dict": {**checkpoint["state_dict"], "model.lm_head.weight": torch.zeros(1)}}
    with pytest.raises(CheckpointMismatchError, match="1 unexpected"):
        module.on_load_checkpoint(extra)


def test_param_groups_cover_trainable_parameters_only(module):
    groups = build_param_groups(module, [ParamGroup(pattern="multi_modal_projector", lr=2e-5, name="projector")])
    by_name = {g["name"]: g for g in groups}
    assert by_name["projector"]["lr"] == 2e-5 and "lr" not in by_name["default"]
    projector = {id(p) for p in module.model.model.multi_modal_projector.parameters()}
    assert {id(p) for p in by_name["projector"]["params"]} == projector
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in module.parameters() if p.requires_grad}
    with pytest.raises(ParamGroupError, match=r"param_groups\[0\]\.pattern='mm_projector' matches no trainable"):
        build_param_groups(module, [ParamGroup(pattern="mm_projector")])


def test_warmup_cosine_matches_the_closed_form():
    params = [nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": params, "lr": 1.0}], lr=1.0)
    schedule = WarmupCosine(optimizer, total_steps=100, warmup_ratio=0.03)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1 / 3) and lrs[3] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(0.5 * (1 + math.cos(math.pi * 47 / 97)))
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)


def test_tiny_tokenizer_is_reproducible_from_the_sample_data(sample_data, tmp_path):
    from mmft.models.tiny_tokenizer import TEMPLATE_TEXTS, build_tiny_tokenizer, sample_data_texts

    build_tiny_tokenizer([*TEMPLATE_TEXTS, *sample_data_texts(sample_data)]).save_pretrained(tmp_path)
    shipped = AutoTokenizer.from_pretrained(TOKENIZER)
    rebuilt = AutoTokenizer.from_pretrained(tmp_path)
    hint = "the sample data changed: python -m mmft.models.tiny_tokenizer --sample-data data/sample"
    assert rebuilt.get_vocab() == shipped.get_vocab(), hint
    assert (tmp_path / "tokenizer.json").read_text() == (Path(TOKENIZER) / "tokenizer.json").read_text(), hint


def test_gradient_checkpointing_reaches_the_language_model():
    plain, checkpointed = (LlavaModule(tiny_backbone(), adapter(), gradient_checkpointing=gc) for gc in (False, True))
    assert checkpointed.language_model.is_activation_checkpointing
    assert not plain.language_model.is_activation_checkpointing
    batch = plain.collate(vqa_samples())
    for module in (plain, checkpointed):
        module.train()
        module.training_loss(batch).backward()
    grads = [m.model.model.multi_modal_projector.linear_1.weight.grad for m in (plain, checkpointed)]
    torch.testing.assert_close(grads[0], grads[1])


def test_exported_adapter_gives_the_same_model_in_peft(tmp_path):
    from types import SimpleNamespace

    from peft import PeftModel

    from mmft.callbacks import PeftExport

    module = LlavaModule(tiny_backbone(seed=2), adapter("dora"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every trainable tensor away from its (identity) initial value
        for param in module.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    trainer = SimpleNamespace(is_global_zero=True, log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    PeftExport().on_fit_end(trainer, module)

    peft_model = PeftModel.from_pretrained(tiny_backbone(seed=2).build().model, tmp_path / "adapter").eval()
    module.eval()
    batch = module.collate(vqa_samples())
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**inputs).logits, module.model(**inputs).logits, atol=1e-5, rtol=1e-4)


def test_a_checkpoint_loads_after_its_base_folder_moved(tmp_path):
    """The fingerprint compares what the base is (class, config, weights), not where it lies: the checkpoint of a
    run on a folder loads under the same folder moved elsewhere, and still refuses a different base there."""
    import shutil

    from mmft.models.base import CheckpointMismatchError

    built = tiny_backbone(seed=1).build()
    first = tmp_path / "bases" / "llava"
    built.model.save_pretrained(first)
    built.tokenizer.save_pretrained(first)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(first)
    trained = LlavaModule(HFLlava(path=str(first)), adapter())
    checkpoint = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(checkpoint)
    assert checkpoint["mmft"]["base"]["name_or_path"] == str(first)

    moved = tmp_path / "elsewhere" / "llava-copy"
    moved.parent.mkdir()
    shutil.move(first, moved)
    LlavaModule(HFLlava(path=str(moved)), adapter()).on_load_checkpoint(checkpoint)  # loads, no error

    other = tiny_backbone(seed=2).build()  # same shapes, other weights, at the old place
    other.model.save_pretrained(first)
    shutil.copytree(moved, first, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    with pytest.raises(CheckpointMismatchError, match=r"base\.weights_sha256"):
        LlavaModule(HFLlava(path=str(first)), adapter()).on_load_checkpoint(checkpoint)
