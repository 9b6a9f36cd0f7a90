"""LLaVA-1.5 as one family of VisionLanguageModule: its format token by token (Hugging Face Llava and the timm
layout), video frames as images, the timm tower + projector + causal LM backbone, and the deprecated LlavaModule
names, which must keep old configs and checkpoints working."""

from __future__ import annotations

import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch
from cli_helpers import make_workdir, run_command
from PIL import Image
from tiny_vlms import TEXT, TOKENIZER, lm_adapter, tiny_backbone
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from data_modules import ExampleDataset, LlavaInstruct, MultitaskDataModule
from data_modules.media import pad_to_square
from data_modules.records import Example, Sample, Turn
from mmft.adapters import AdapterConfig
from mmft.models import (
    CheckpointMismatchError,
    HFLlava,
    HFVisionLanguage,
    LlavaFromConfig,
    LlavaModule,
    ParamGroup,
    TimmLlava,
    VisionLanguageFromConfig,
    VisionLanguageModule,
    WarmupCosine,
)
from mmft.models.export import ExportError, export_merged
from mmft.models.lm_loss import IGNORE_INDEX
from mmft.models.optim import ParamGroupError, build_param_groups
from mmft.models.vlm_backbones import BackboneConfigError
from mmft.tasks import SHORT_ANSWER_SUFFIX

ROOT = Path(__file__).resolve().parents[1]
OLD_CHECKPOINT = ROOT / "tests" / "fixtures" / "llava_module_762749b"
LM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# LLaVA's vicuna_v1 system prompt (its conversation.py, conv_vicuna_v1), written out here, not taken from mmft
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions.")


def adapter(method: str = "dora", targets: str = LM_TARGETS) -> AdapterConfig:
    return AdapterConfig(method=method, r=4, alpha=8, target_modules=targets, modules_to_save=["multi_modal_projector"])


def timm_backbone(**kwargs) -> TimmLlava:
    """A ResNet-18 at 32 px (a 2 x 2 grid at its second-to-last stage) + a tiny Llama, the tiny tokenizer."""
    return TimmLlava(vision_tower="resnet18", language_model={"model_type": "llama", **TEXT}, tokenizer=TOKENIZER,
                     vision_kwargs={"pretrained_cfg_overlay": {"input_size": (3, 32, 32)}}, **kwargs)


@pytest.fixture(scope="module")
def hf_module() -> VisionLanguageModule:
    return VisionLanguageModule(tiny_backbone("llava"), lm_adapter("llava"))


@pytest.fixture(scope="module")
def timm_module() -> VisionLanguageModule:
    return VisionLanguageModule(timm_backbone(), adapter("lora"), max_new_tokens=3)


def image(width: int = 20, height: int = 12, color=(200, 10, 10)) -> Image.Image:
    return Image.new("RGB", (width, height), color)


def sample(turns, task="llava_instruct", images=1, id_="q1", references=()) -> Sample:
    example = Example(task=task, id=id_, turns=tuple(Turn(role, text) for role, text in turns),
                      images=tuple(Path(f"img{k}.jpg") for k in range(images)), references=tuple(references),
                      source=f"test.json#{id_}")
    return Sample(example, [image() for _ in range(images)])


def vqa_samples() -> list[Sample]:
    return [sample([("user", "What color is the circle?"), ("assistant", "red")], task="vqav2", id_="1",
                   references=["red"] * 10),
            sample([("user", "Is there a square in the picture? Look carefully."), ("assistant", "no")],
                   task="vqav2", id_="2", references=["no"] * 10)]


@pytest.mark.parametrize("layout", ["hf", "timm"])
def test_two_round_conversation_is_llava15s_format_token_by_token(layout, hf_module, timm_module):
    module = hf_module if layout == "hf" else timm_module
    tokenizer = module.tokenizer
    image_tokens = 4  # 16 px / 8 px patches; a ResNet's 2 x 2 grid at 32 px
    conversation = [("user", "What color is the circle?"), ("assistant", "red"),
                    ("user", "Is it a square?"), ("assistant", "No.")]
    batch = module.collate([sample(conversation)])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    # the text, written out by hand (LLaVA-1.5 conv_vicuna_v1), then tokenised piece by piece
    before_image = f"{VICUNA_V1_SYSTEM} USER: "
    round_1 = "\nWhat color is the circle? ASSISTANT:"
    round_2 = "USER: Is it a square? ASSISTANT:"

    def enc(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    image_id, eos = tokenizer.convert_tokens_to_ids("<image>"), tokenizer.eos_token_id
    expected = ([tokenizer.bos_token_id] + enc(before_image) + [image_id] * image_tokens + enc(round_1)
                + enc(" red") + [eos] + enc(round_2) + enc(" No.") + [eos])
    assert ids == expected
    reply_1 = 1 + len(enc(before_image)) + image_tokens + len(enc(round_1))
    reply_2 = reply_1 + len(enc(" red")) + 1 + len(enc(round_2))
    supervised = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert supervised == [reply_1, reply_1 + 1, reply_2, reply_2 + 1, reply_2 + 2]  # " red</s>", " No.</s>"
    assert tokenizer.convert_ids_to_tokens([ids[i] for i in supervised]) == ["Ġred", "</s>", "ĠNo", ".", "</s>"]

    # the prompt view of a VQA question: LLaVA-1.5's short-answer instruction, ending with the generation prompt
    batch = module.collate(vqa_samples()[:1])
    mask = batch["prompt_attention_mask"][0].bool()
    assert tokenizer.decode(batch["prompt_input_ids"][0][mask]) == (
        f"<s>{VICUNA_V1_SYSTEM} USER: " + "<image>" * image_tokens
        + f"\nWhat color is the circle?\n{SHORT_ANSWER_SUFFIX} ASSISTANT:")


def frames(count: int, height: int = 12, width: int = 16) -> torch.Tensor:
    return torch.stack([torch.full((height, width, 3), 40 * (k + 1), dtype=torch.uint8) for k in range(count)])


def test_video_frames_are_images_at_the_start_of_the_first_user_turn(hf_module):
    """LLaVA-1.5 has no video input: a video is its frames, each an <image> at the start of the first user turn,
    each padded to square like an image."""
    tokenizer = hf_module.tokenizer
    video = Example("msrvtt_qa", "e1", (Turn("user", "what color is the moving shape?"), Turn("assistant", "red")),
                    video=Path("clip.mp4"), source="test.json#0 (id e1)")
    batch = hf_module.collate([Sample(video, [], frames(3), (0.0, 0.5, 1.0))])
    assert tokenizer.decode(batch["prompt_input_ids"][0]) == (
        f"<s>{VICUNA_V1_SYSTEM} USER: " + ("<image>" * 4 + "\n") * 3
        + f"what color is the moving shape?\n{SHORT_ANSWER_SUFFIX} ASSISTANT:")
    image_processor = hf_module.processor.image_processor
    fill = tuple(int(255 * m) for m in image_processor.image_mean)
    squares = [pad_to_square(Image.fromarray(frame), fill) for frame in frames(3).numpy()]
    expected = image_processor(images=squares, do_pad=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(batch["media"]["pixel_values"], expected)


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
    LlamaForCausalLM(LlamaConfig(vocab_size=17, max_position_embeddings=256, **TEXT)).save_pretrained(lm_folder)
    tower = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=3)
    torch.save(tower.state_dict(), tmp_path / "tower.pth")
    projector = {"model.mm_projector.0.weight": torch.randn(32, 192), "model.mm_projector.0.bias": torch.randn(32),
                 "model.mm_projector.2.weight": torch.randn(32, 32), "model.mm_projector.2.bias": torch.randn(32)}
    torch.save(projector, tmp_path / "mm_projector.bin")

    backbone = TimmLlava(vision_tower="vit_tiny_patch16_224", language_model=str(lm_folder),
                         vision_checkpoint=str(tmp_path / "tower.pth"),
                         projector_checkpoint=str(tmp_path / "mm_projector.bin"),
                         vision_kwargs={"img_size": 32, "patch_size": 8, "depth": 3}, seed=5)
    module = VisionLanguageModule(backbone, adapter(), max_new_tokens=3)
    net = module.model
    assert net.num_image_tokens == 16  # (32 / 8)^2 patches, CLS dropped
    assert torch.equal(net.vision_tower.blocks[0].attn.qkv.weight, tower.blocks[0].attn.qkv.weight)
    assert torch.equal(net.multi_modal_projector.linear_1.weight, projector["model.mm_projector.0.weight"])
    # <image> was added to the tokenizer, beyond the language model's 17 embeddings
    assert module.processor.image_token_id == 17
    assert module.base_model_name_or_path == str(lm_folder)
    assert module.parts.projectors == ("multi_modal_projector",) and module.parts.language_model == "language_model"

    batch = module.collate(vqa_samples())
    loss = module.training_loss(batch)
    loss.backward()
    assert net.multi_modal_projector.linear_1.weight.grad is not None
    assert all(p.grad is None for p in net.vision_tower.parameters())
    module.eval()
    answers = module.generate_answers(batch)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_timm_tower_with_a_causal_lm_from_config(timm_module):
    assert timm_module.model.num_image_tokens == 4  # a CNN's second-to-last stage (stride 16) at 32 px: 2 x 2
    timm_module.train()
    assert not timm_module.model.vision_tower.training  # frozen BatchNorm statistics stay put
    running_mean = timm_module.model.vision_tower.bn1.running_mean.clone()
    assert torch.isfinite(timm_module.training_loss(timm_module.collate(vqa_samples())))
    assert torch.equal(timm_module.model.vision_tower.bn1.running_mean, running_mean)
    # the timm tower's eval transform after padding to square with its mean colour (ImageNet's for a ResNet)
    wide = Image.new("RGB", (20, 10), (255, 0, 0))
    processor = timm_module.processor.image_processor
    assert processor.fill == (123, 116, 103)
    transform = timm.data.create_transform(**processor.data_config, is_training=False)
    pixels = timm_module.collate([Sample(sample([("user", "q"), ("assistant", "a")]).example, [wide])])
    expected = transform(pad_to_square(wide, processor.fill)).unsqueeze(0)
    torch.testing.assert_close(pixels["media"]["pixel_values"], expected)
    with pytest.raises(BackboneConfigError, match=r"backbone\.init_args\.tokenizer is not set"):
        TimmLlava(vision_tower="resnet18", language_model={"model_type": "llama", **TEXT}).build()


def test_timm_gradient_checkpointing_and_a_merged_export_refused(tmp_path):
    plain = VisionLanguageModule(timm_backbone(), adapter("lora"))
    checkpointed = VisionLanguageModule(timm_backbone(), adapter("lora"), gradient_checkpointing=True)
    assert checkpointed.model.language_model.is_activation_checkpointing
    assert not plain.model.language_model.is_activation_checkpointing
    batch = plain.collate(vqa_samples())
    for module in (plain, checkpointed):
        module.train()
        module.training_loss(batch).backward()
    grads = [m.model.multi_modal_projector.linear_1.weight.grad for m in (plain, checkpointed)]
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ExportError, match="TimmLlava.*export its PEFT adapter instead"):
        export_merged(plain, tmp_path / "merged")


# ------------------------------------------------------------------------------------------ the deprecated names


def test_old_llava_settings_build_the_family_network_and_batches():
    """LlavaModule + LlavaFromConfig (the embedded default's old settings) give the network and batches the new
    recipe (configs/tiny/llava.yaml: VisionLanguageModule + VisionLanguageFromConfig family llava) gives."""
    import yaml

    backbone = yaml.safe_load((ROOT / "configs" / "tiny" / "llava.yaml").read_text())["model"]["init_args"]["backbone"]
    torch.manual_seed(0)  # the adapters' initial factors come from the global generator
    new = VisionLanguageModule(VisionLanguageFromConfig(**backbone["init_args"]), adapter())
    old_args = {k: backbone["init_args"][k] for k in ("tokenizer", "vision_config", "text_config", "seed")}
    torch.manual_seed(0)
    with pytest.warns(FutureWarning, match="LlavaModule is deprecated"):
        old = LlavaModule(LlavaFromConfig(**old_args), adapter(), template="vicuna_v1", video_frames=4)
    assert old.base_fingerprint() == new.base_fingerprint()
    for (name, a), (_, b) in zip(old.model.state_dict().items(), new.model.state_dict().items()):
        assert torch.equal(a, b), name
    samples = [*vqa_samples(), sample([("user", "Hi"), ("assistant", "hello")], images=0, id_="t")]
    old_batch, new_batch = old.collate(samples), new.collate(samples)
    for key in ("input_ids", "attention_mask", "labels", "prompt_input_ids", "prompt_attention_mask"):
        assert torch.equal(old_batch[key], new_batch[key]), key
    torch.testing.assert_close(old_batch["media"]["pixel_values"], new_batch["media"]["pixel_values"])


OWN_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {% for p in m['content'] %}{% if p['type'] == 'image' %}"
                "<image>\n{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% if m['role'] == 'assistant' %}</s>"
                "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")


def test_hf_llava_is_a_checkpoint_folder_with_vicuna_v1_and_square_padding(tmp_path):
    built = tiny_backbone("llava", seed=1).build()
    built.model.save_pretrained(tmp_path)
    built.processor.chat_template = OWN_TEMPLATE  # llava-hf checkpoints ship a template of their own
    built.processor.image_processor.do_pad = False
    built.processor.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        old = LlavaModule(HFLlava(path=str(tmp_path)), adapter())
        own_template = LlavaModule(HFLlava(path=str(tmp_path)), adapter(), template="chat_template",
                                   pad_images_to_square=False)
    new = VisionLanguageModule(HFVisionLanguage(path=str(tmp_path), chat_template="vicuna_v1",
                                                image_processor={"do_pad": True}), adapter())
    assert old.processor.chat_template == new.processor.chat_template
    assert old.processor.chat_template.startswith("{{ bos_token")
    assert old.processor.image_processor.do_pad and new.processor.image_processor.do_pad
    assert own_template.processor.chat_template == OWN_TEMPLATE
    assert not own_template.processor.image_processor.do_pad
    old_batch, new_batch = old.collate(vqa_samples()), new.collate(vqa_samples())
    assert torch.equal(old_batch["input_ids"], new_batch["input_ids"])
    with pytest.raises(BackboneConfigError, match=r"model\.init_args\.backbone\.init_args\.path is not set"):
        HFLlava().build()


def test_a_checkpoint_written_by_llava_module_tests_and_predicts_as_it_did(sample_data, tmp_path):
    """A LoRA checkpoint that ``mmft fit`` wrote with LlavaModule + LlavaFromConfig (mmft at commit 762749b, the
    last with those classes; tests/fixtures/llava_module_762749b/README.txt says how) loads through the stored
    config it carries: the fingerprint check passes and ``mmft predict`` writes the answers that commit wrote (8
    greedy tokens from random weights, so any change in the network, weights or prompts shows)."""
    workdir = make_workdir(tmp_path, sample_data, {})
    folder = workdir / "runs" / "old_llava_lora" / "checkpoints"
    folder.mkdir(parents=True)
    shutil.copy(OLD_CHECKPOINT / "last.ckpt", folder / "last.ckpt")
    output = run_command(workdir, [sys.executable, "-m", "mmft.cli", "predict", "--ckpt_path",
                                   str(folder / "last.ckpt")])
    assert "LlavaModule is deprecated" in output
    written = (workdir / "runs" / "old_llava_lora" / "predictions.jsonl").read_text().splitlines()
    expected = (OLD_CHECKPOINT / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in written] == [json.loads(line) for line in expected]


# ----------------------------------------------------------------------------- module basics, on the llava family


def test_checkpoints_hold_trainable_parameters_only(hf_module):
    trainable = {n for n, p in hf_module.named_parameters() if p.requires_grad}
    checkpoint = {"state_dict": hf_module.state_dict()}
    hf_module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == trainable
    assert all(("lora_" in k or "multi_modal_projector" in k) for k in trainable)
    assert not any("vision_tower" in k or "base_layer" in k for k in checkpoint["state_dict"])
    hf_module.on_load_checkpoint(checkpoint)  # exactly the trainable keys: accepted
    missing = {"state_dict": dict(list(checkpoint["state_dict"].items())[1:])}
    with pytest.raises(CheckpointMismatchError, match="1 missing"):
        hf_module.on_load_checkpoint(missing)
    extra = {"state_dict": {**checkpoint["state_dict"], "model.lm_head.weight": torch.zeros(1)}}
    with pytest.raises(CheckpointMismatchError, match="1 unexpected"):
        hf_module.on_load_checkpoint(extra)


def test_param_groups_cover_trainable_parameters_only(hf_module):
    groups = build_param_groups(hf_module, [ParamGroup(pattern="multi_modal_projector", lr=2e-5, name="projector")])
    by_name = {g["name"]: g for g in groups}
    assert by_name["projector"]["lr"] == 2e-5 and "lr" not in by_name["default"]
    projector = {id(p) for p in hf_module.model.model.multi_modal_projector.parameters()}
    assert {id(p) for p in by_name["projector"]["params"]} == projector
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert in_groups == {id(p) for p in hf_module.parameters() if p.requires_grad}
    with pytest.raises(ParamGroupError, match=r"param_groups\[0\]\.pattern='mm_projector' matches no trainable"):
        build_param_groups(hf_module, [ParamGroup(pattern="mm_projector")])


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
    from mmft.tools.tiny_tokenizer import TEMPLATE_TEXTS, build_tiny_tokenizer, sample_data_texts

    build_tiny_tokenizer([*TEMPLATE_TEXTS, *sample_data_texts(sample_data)]).save_pretrained(tmp_path)
    shipped = AutoTokenizer.from_pretrained(TOKENIZER)
    rebuilt = AutoTokenizer.from_pretrained(tmp_path)
    hint = "the sample data changed: python -m mmft.tools.tiny_tokenizer --sample-data data/sample"
    assert rebuilt.get_vocab() == shipped.get_vocab(), hint
    assert (tmp_path / "tokenizer.json").read_text() == (Path(TOKENIZER) / "tokenizer.json").read_text(), hint


def test_a_checkpoint_loads_after_its_base_folder_moved(tmp_path):
    """The fingerprint compares what the base is (class, config, weights), not where it lies: the checkpoint of a
    run on a folder loads under the same folder moved elsewhere, and still refuses a different base there."""
    built = tiny_backbone("llava", seed=1).build()
    first = tmp_path / "bases" / "llava"
    built.model.save_pretrained(first)
    built.processor.save_pretrained(first)
    trained = VisionLanguageModule(HFVisionLanguage(path=str(first)), adapter())
    checkpoint = {"state_dict": trained.state_dict()}
    trained.on_save_checkpoint(checkpoint)
    assert checkpoint["mmft"]["base"]["name_or_path"] == str(first)

    moved = tmp_path / "elsewhere" / "llava-copy"
    moved.parent.mkdir()
    shutil.move(first, moved)
    VisionLanguageModule(HFVisionLanguage(path=str(moved)), adapter()).on_load_checkpoint(checkpoint)  # loads

    other = tiny_backbone("llava", seed=2).build()  # same shapes, other weights, at the old place
    other.model.save_pretrained(first)
    shutil.copytree(moved, first, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    with pytest.raises(CheckpointMismatchError, match=r"base\.weights_sha256"):
        VisionLanguageModule(HFVisionLanguage(path=str(first)), adapter()).on_load_checkpoint(checkpoint)


@pytest.mark.slow
def test_tiny_llava_trains_and_answers_on_multi_image_and_video_records(sample_data: Path, tmp_path: Path) -> None:
    """The LLaVA-OneVision multi-image and LLaVA-Video-178K sample records through the DataModule, the collate and
    a transformers Llava (several images per prompt, video frames as images) under a Lightning Trainer."""
    from lightning.pytorch import Trainer

    module = VisionLanguageModule(tiny_backbone("llava"), adapter(targets=r".*language_model.*\.(q_proj|v_proj)"),
                                  max_length=512, max_new_tokens=2)
    llava = sample_data / "llava"
    multi = LlavaInstruct(llava / "llava_multi_image_sample.json", sample_data, task="multi_image")
    video = LlavaInstruct(llava / "llava_video_sample.json", sample_data, task="video")
    datamodule = MultitaskDataModule(train=[multi, video], batch_size=4, num_frames=2, collate_fn=module.collate)
    trainer = Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      default_root_dir=tmp_path)
    trainer.fit(module, datamodule)
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["train/loss"])

    image_id = module.processor.image_token_id
    for examples in datamodule.examples("train"):
        batch = module.collate([ExampleDataset(examples, num_frames=2)[k] for k in range(2)])
        images = batch["media"]["pixel_values"].shape[0]
        assert images == sum(len(e.images) or 2 for e in examples[:2])  # a video: its 2 frames
        assert (batch["prompt_input_ids"] == image_id).sum().item() == images * 4
        assert len(module.generate_answers(batch)) == 2


def test_a_template_the_old_module_never_had_and_a_missing_tokenizer_template_are_named():
    with pytest.raises(BackboneConfigError, match=r"model\.init_args\.template='vicuna': choose vicuna_v1"):
        LlavaModule(LlavaFromConfig(tokenizer=TOKENIZER, vision_config={}, text_config=TEXT), adapter(),
                    template="vicuna")
    with pytest.raises(BackboneConfigError, match=r"chat_template is null but the tokenizer has no chat template"):
        timm_backbone(chat_template=None).build()  # the tiny tokenizer ships none
