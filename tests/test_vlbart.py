"""VL-BART: visual embedding shapes, feature files vs end-to-end features, loss masking, trainable selection,
checkpoint loading from local folders, the linear schedule."""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from data_modules import NLVR2, CocoKarpathy, ExampleDataset, VQAv2
from mmft.adapters import AdapterConfig
from mmft.models import WarmupLinear
from mmft.models.lm_loss import IGNORE_INDEX
from mmft.models.visual_features import FeatureStore, VisualConfig, VisualEncoder, VisualFeatureError
from mmft.models.vlbart import VisualEmbedding, VLBartConfigError, VLBartModule
from mmft.models.vlbart_collate import VLBartCollate, VLBartCollateError
from mmft.tasks import VLBART_PREFIXES
from mmft.tools import extract_features

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "configs" / "tiny" / "vlbart_image.yaml"


@functools.cache
def _tiny_config(method: str) -> dict:
    from mmft.cli import resolve_config

    with contextlib.chdir(ROOT):
        return resolve_config(["--config", str(TINY_RECIPE), "--config", f"configs/methods/{method}.yaml"])


def tiny_init_args(method: str = "dora") -> dict:
    """The tiny recipe's model arguments with ``method``, as the CLI composes the recipe (and the real recipe it
    builds on) with configs/methods/<method>.yaml."""
    return copy.deepcopy(_tiny_config(method)["model"]["init_args"])


def tiny_module(method: str = "dora", **overrides) -> VLBartModule:
    """The tiny config's model (the shipped tokenizer, random frozen weights)."""
    args = tiny_init_args(method)
    kwargs = {
        "bart": args["bart"],
        "adapter": AdapterConfig(**args["adapter"]),
        "tokenizer": str(ROOT / args["tokenizer"]),
        "visual": VisualConfig(**args["visual"]),
        "num_beams": 1,
        "max_new_tokens": 4,
        "seed": args["seed"],
    }
    kwargs.update(overrides)
    return VLBartModule(**kwargs)



@pytest.fixture(scope="module")
def module() -> VLBartModule:
    return tiny_module().eval()


@pytest.fixture(scope="module")
def samples(sample_data: Path) -> list:
    """Two NLVR2 pairs, two VQAv2 questions and one COCO caption, images decoded."""
    root = sample_data
    examples = (
        NLVR2(root / "nlvr2" / "dev.json", root / "nlvr2" / "images" / "dev").read()[:2]
        + VQAv2(
            root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json",
            root / "coco" / "val2014",
            "val2014",
            root / "vqav2" / "v2_mscoco_val2014_annotations.json",
        ).read()[:2]
        + CocoKarpathy(root / "coco_karpathy" / "dataset_coco.json", root / "coco", split="val").read()[:1]
    )
    dataset = ExampleDataset(examples)
    return [dataset[i] for i in range(len(dataset))]


# ------------------------------------------------------------------------------------------------- visual tokens
def test_visual_embedding_tokens_masks_and_image_order() -> None:
    torch.manual_seed(0)
    embedding = VisualEmbedding(feature_dim=5, d_model=8, max_images=2)
    features = torch.randn(4, 36, 5)  # example 0: one image, example 1: a pair, example 2: one image
    grid = torch.randn(36, 8)
    tokens, mask = embedding(features, torch.tensor([1, 2, 1]), grid)
    assert tokens.shape == (3, 72, 8) and mask.shape == (3, 72)
    assert mask.tolist() == [[1] * 36 + [0] * 36, [1] * 72, [1] * 36 + [0] * 36]
    # by hand: LayerNorm(Linear(f)) + image_order[k] + grid[t]
    base = torch.nn.functional.layer_norm(
        features @ embedding.feature_projection.weight.T + embedding.feature_projection.bias, (8,),
        embedding.layer_norm.weight, embedding.layer_norm.bias,
    )
    order = embedding.image_order.weight
    torch.testing.assert_close(tokens[0, :36], base[0] + order[0] + grid)
    torch.testing.assert_close(tokens[1, :36], base[1] + order[0] + grid)
    torch.testing.assert_close(tokens[1, 36:], base[2] + order[1] + grid)
    torch.testing.assert_close(tokens[2, :36], base[3] + order[0] + grid)
    assert torch.all(tokens[0, 36:] == 0)
    with pytest.raises(ValueError, match="visual embedding knows 2"):
        embedding(torch.randn(3, 36, 5), torch.tensor([3]), grid)


def test_clip_resnet101_gives_36_tokens_of_2048() -> None:
    encoder = VisualEncoder(VisualConfig(encoder="resnet101_clip", image_size=224, grid=6))
    assert encoder.feature_dim == 2048
    assert encoder(torch.zeros(1, 3, 224, 224)).shape == (1, 36, 2048)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not any(m.training for m in encoder.modules()), "the frozen encoder must stay in eval mode"


def test_batch_holds_36_tokens_per_image_72_for_nlvr2(module: VLBartModule, samples: list) -> None:
    batch = module.collate(samples)
    assert batch["tasks"] == ["nlvr2", "nlvr2", "vqav2", "vqav2", "coco_caption"]
    assert batch["image_counts"].tolist() == [2, 2, 1, 1, 1]
    features = module.visual_features(batch)
    assert features.shape == (7, 36, 128)
    tokens, mask = module.model.visual_embedding(features, batch["image_counts"], module.model.grid_order(36))
    assert tokens.shape == (5, 72, 128)
    assert mask.sum(dim=1).tolist() == [72, 72, 36, 36, 36]


# ------------------------------------------------------------------------------------------------------- collate
def test_collate_prefixes_special_tokens_and_labels(module: VLBartModule, samples: list) -> None:
    tokenizer = module.tokenizer
    batch = module.collate(samples)
    texts = tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert texts[0] == f"nlvr: {samples[0].example.prompt}"
    assert texts[2] == f"vqa: {samples[2].example.prompt}"
    assert texts[4] == "caption:"
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for row, row_mask in zip(ids, mask):
        real = row[row_mask.bool()].tolist()
        assert real[0] == tokenizer.bos_token_id and real[-1] == tokenizer.eos_token_id
        assert (row[~row_mask.bool()] == tokenizer.pad_token_id).all()
    labels = batch["labels"]
    for label, sample in zip(labels, samples):
        kept = label[label != IGNORE_INDEX].tolist()
        assert kept[0] == tokenizer.bos_token_id and kept[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(kept[1:-1]) == sample.example.target
        assert (label[len(kept):] == IGNORE_INDEX).all()


def test_collate_errors_name_the_record(module: VLBartModule, samples: list) -> None:
    from data_modules.records import Sample

    unknown = Sample(replace(samples[2].example, task="okvqa"), samples[2].images)
    with pytest.raises(VLBartCollateError, match="no prefix for task 'okvqa'.*model.init_args.prefixes"):
        module.collate([unknown])
    three = Sample(replace(samples[0].example, images=samples[0].example.images * 2), samples[0].images * 2)
    with pytest.raises(VLBartCollateError, match=r"dev\.json.*4 images; VL-BART takes 1 to 2"):
        module.collate([three])


def test_long_subtitles_are_cut_never_the_question_or_choices(module: VLBartModule) -> None:
    from data_modules.records import Example, Sample, Turn

    tokenizer = module.tokenizer
    subtitles = " ".join(["the red circle moves left and then right"] * 5)
    question = "[Q] what moves? [Choices] a0: circle a1: square a2: cross a3: star a4: ring"
    example = Example("tvqa", "7", (Turn("user", f"[Subs] {subtitles} {question}"), Turn("assistant", "a0")),
                      video=Path("clip.mp4"), source="tvqa_train.jsonl:7")
    full = len(tokenizer(f"tvqa: [Subs] {subtitles} {question}")["input_ids"])
    collate = VLBartCollate(tokenizer, VLBART_PREFIXES, max_length=full - 10, image_transform=lambda images: images,
                            max_images=8)
    (ids,) = collate([Sample(example, frames=torch.zeros(1, 8, 8, 3, dtype=torch.uint8))])["input_ids"].tolist()
    text = tokenizer.decode(ids)
    assert len(ids) == full - 10 and ids[-1] == tokenizer.eos_token_id
    assert text.startswith("<s>tvqa: [Subs] the red circle") and text.endswith(f" {question}</s>")
    assert collate.check_length(example, training=True) == (True, None, None)
    # a question and choices that do not fit even without subtitles: refused, naming the record
    tight = VLBartCollate(tokenizer, VLBART_PREFIXES, max_length=20, image_transform=lambda images: images)
    problem = tight.check_length(example, training=True).problem
    assert problem.startswith("tvqa_train.jsonl:7: the encoder text is longer than max_length=20")
    with pytest.raises(VLBartCollateError, match="even without subtitles"):
        tight([Sample(example, frames=torch.zeros(1, 8, 8, 3, dtype=torch.uint8))])


def test_a_long_caption_target_is_cut_before_its_eos_and_counted(module: VLBartModule) -> None:
    from data_modules.records import Example, Turn

    caption = " ".join(["a red circle moves to the left"] * 6)
    example = Example("coco_caption", "3", (Turn("user", ""), Turn("assistant", caption)))
    collate = module.collate
    assert collate.check_length(example, training=True) == (True, None, None)
    assert collate.check_length(example, training=False) == (False, None, None)
    (labels,) = collate._encode([caption], collate.max_target_length)
    assert len(labels) == collate.max_target_length and labels[-1] == module.tokenizer.eos_token_id


# -------------------------------------------------------------------------------------------------- the network
def test_loss_is_mean_over_examples_and_independent_of_padding(module: VLBartModule, samples: list) -> None:
    """Padded text sits between an example's text and its visual tokens: it must change nothing."""
    batch_loss = module.training_loss(module.collate(samples))
    single = [module.training_loss(module.collate([s])) for s in samples]
    torch.testing.assert_close(batch_loss, torch.stack(single).mean(), rtol=1e-5, atol=1e-5)


def test_generation_is_independent_of_the_batch(module: VLBartModule, samples: list) -> None:
    together = module.generate_answers(module.collate(samples))
    assert together == [module.generate_answers(module.collate([s]))[0] for s in samples]


def test_beam_search_is_independent_of_the_batch_and_is_transformers_own(samples: list) -> None:
    """The recipes answer with beam search (5 beams): batched equals one by one, and the answers are those of
    transformers' beam search run on the same encoder states."""
    beams = tiny_module(num_beams=3).eval()
    batch = beams.collate(samples)
    together = beams.generate_answers(batch)
    assert together == [beams.generate_answers(beams.collate([s]))[0] for s in samples]
    greedy = tiny_module(num_beams=1).eval().generate_answers(batch)
    with torch.no_grad():
        encoded, mask = beams.model.encode(batch["input_ids"], batch["attention_mask"], beams.visual_features(batch),
                                           batch["image_counts"])
        output = beams.model.bart.generate(encoder_outputs=encoded, attention_mask=mask, num_beams=3,
                                           max_new_tokens=beams.max_new_tokens, do_sample=False)
    assert together == [a.strip() for a in beams.tokenizer.batch_decode(output, skip_special_tokens=True)]
    assert together != greedy  # these samples' beam answers differ from greedy ones: the check can tell them apart


def test_trainable_parameters_are_the_papers(module: VLBartModule) -> None:
    """Adapters on q_proj / v_proj of encoder self-, decoder self- and cross-attention; visual embedding, every
    bias and every LayerNorm of BART trained; nothing else (token embeddings, other projections, the encoder)."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    adapted = {n.rsplit(".", 1)[0] for n in trainable if ".lora_A." in n or ".lora_B." in n}
    layers = module.model.config.encoder_layers
    expected_adapted = {
        f"model.bart.model.{place}.{proj}.lora_{part}"
        for i in range(layers)
        for place in (f"encoder.layers.{i}.self_attn", f"decoder.layers.{i}.self_attn",
                      f"decoder.layers.{i}.encoder_attn")
        for proj in ("q_proj", "v_proj")
        for part in ("A", "B")
    }
    assert adapted == expected_adapted
    assert sum(n.endswith("lora_magnitude_vector") for n in trainable) == 3 * 2 * layers
    for name, param in module.named_parameters():
        bart_part = name.startswith("model.bart.")
        is_norm = "layer_norm" in name or "layernorm_embedding" in name
        should_train = (
            ".lora_" in name
            or name.startswith("model.visual_embedding.")
            or (bart_part and name.endswith(".bias"))
            or (bart_part and is_norm)
        )
        assert param.requires_grad == should_train, name
    assert not any(p.requires_grad for p in module.visual_encoder.parameters())


def test_lora_config_trains_the_same_but_magnitudes() -> None:
    lora = tiny_module("lora")
    dora_names = {n for n, p in tiny_module("dora").named_parameters() if p.requires_grad}
    lora_names = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert dora_names - lora_names == {n for n in dora_names if n.endswith("lora_magnitude_vector")}
    assert lora_names <= dora_names


def test_adapters_outside_bart_are_refused() -> None:
    args = tiny_init_args()
    bad = AdapterConfig(**{**args["adapter"], "target_modules": r".*(q_proj|feature_projection)"})
    with pytest.raises(VLBartConfigError, match="outside BART.*visual_embedding.feature_projection"):
        tiny_module(adapter=bad)


@pytest.mark.parametrize("key", ["max_length", "max_target_length"])
def test_more_tokens_than_the_model_has_positions_are_refused(key) -> None:
    with pytest.raises(VLBartConfigError, match=rf"model\.init_args\.{key}=129: more tokens than the model has "
                                                r"positions \(128\)"):
        tiny_module(**{key: 129})


# ---------------------------------------------------------------------------------- pre-extracted visual features
def test_feature_file_gives_the_end_to_end_features(module: VLBartModule, samples: list, tmp_path: Path) -> None:
    config = extract_features.visual_config_from([TINY_RECIPE, ROOT / "configs" / "methods" / "dora.yaml"])
    images = sorted({path for s in samples for path in s.example.images})
    out = tmp_path / "features.safetensors"
    counts = extract_features.extract(config, images, out, batch_size=3)
    assert counts == {"images": len(images), "videos": 0, "frames": 0, "tokens_per_image": 36, "feature_dim": 128}

    from_files = tiny_module(visual=VisualConfig(**{**tiny_init_args()["visual"], "features": [str(out)]})).eval()
    assert from_files.visual_encoder is None and not from_files.collate.needs_media
    end_to_end_batch, file_batch = module.collate(samples), from_files.collate(samples)
    assert "pixel_values" in end_to_end_batch and "pixel_values" not in file_batch
    torch.testing.assert_close(file_batch["visual_features"], module.visual_features(end_to_end_batch),
                               rtol=1e-5, atol=1e-5)
    # same seed, same weights: the whole model agrees
    torch.testing.assert_close(from_files.training_loss(file_batch), module.training_loss(end_to_end_batch),
                               rtol=1e-5, atol=1e-5)


def test_feature_files_made_otherwise_or_incomplete_are_refused(samples: list, tmp_path: Path) -> None:
    config = extract_features.visual_config_from([TINY_RECIPE, ROOT / "configs" / "methods" / "dora.yaml"])
    out = tmp_path / "one.safetensors"
    extract_features.extract(config, [samples[2].example.images[0]], out)
    other_grid = VisualConfig(**{**tiny_init_args()["visual"], "grid": 5})
    with pytest.raises(VisualFeatureError, match=r"one\.safetensors was extracted with grid='6'.*visual\.grid is '5'"):
        FeatureStore([out], other_grid)
    other_seed = VisualConfig(**{**tiny_init_args()["visual"], "seed": 1})
    with pytest.raises(VisualFeatureError, match="seed"):
        FeatureStore([out], other_seed)
    store = FeatureStore([out], config)
    with pytest.raises(VisualFeatureError,
                       match=r"dev\.json.*no features for image .*img0\.png.*mmft extract-features"):
        store.get(samples[0].example.images[0], samples[0].example.source)
    with pytest.raises(VisualFeatureError, match="not found"):
        FeatureStore([tmp_path / "missing.safetensors"], config)


# -------------------------------------------------------------------------------------------- local checkpoints
def test_bart_and_visual_encoder_load_from_local_files(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    args = tiny_init_args()
    tokenizer = AutoTokenizer.from_pretrained(ROOT / args["tokenizer"])
    torch.manual_seed(3)
    bart = BartForConditionalGeneration(BartConfig(
        **{**args["bart"], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "decoder_start_token_id": tokenizer.eos_token_id}))
    bart.save_pretrained(tmp_path / "bart")
    tokenizer.save_pretrained(tmp_path / "bart")
    visual = VisualConfig(**args["visual"])
    torch.manual_seed(4)
    cnn = timm.create_model(visual.encoder, **visual.encoder_kwargs).eval()
    save_file(cnn.state_dict(), str(tmp_path / "cnn.safetensors"))

    module = tiny_module(bart=str(tmp_path / "bart"), tokenizer=None,
                         visual=VisualConfig(**{**args["visual"], "checkpoint": str(tmp_path / "cnn.safetensors")}))
    assert module.base_model_name_or_path == str(tmp_path / "bart")
    loaded = module.model.bart.model.encoder.layers[0].fc1.weight
    torch.testing.assert_close(loaded, bart.model.encoder.layers[0].fc1.weight)
    pixels = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = torch.nn.functional.adaptive_max_pool2d(cnn.forward_features(pixels), 6).flatten(2).transpose(1, 2)
    torch.testing.assert_close(module.visual_encoder(pixels), expected)

    with pytest.raises(VLBartConfigError, match=r"model\.init_args\.bart='/nowhere': no such folder"):
        tiny_module(bart="/nowhere", tokenizer=None)
    with pytest.raises(VisualFeatureError, match=r"visual\.checkpoint='/nowhere\.safetensors': no such file"):
        VisualEncoder(VisualConfig(**{**args["visual"], "checkpoint": "/nowhere.safetensors"}))


# ------------------------------------------------------------------------------------------------------ schedule
def test_warmup_linear_matches_transformers() -> None:
    from transformers import get_linear_schedule_with_warmup

    total = 50
    ours = WarmupLinear(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), total, warmup_ratio=0.1)
    reference = get_linear_schedule_with_warmup(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), math.ceil(0.1 * total), total
    )
    for step in range(total + 1):
        assert ours.factor(step) == pytest.approx(reference.lr_lambdas[0](step), abs=1e-12), step


# ------------------------------------------------------------------------------------------------------ PEFT export
def test_exported_adapter_gives_the_same_model_in_peft(samples: list, tmp_path: Path) -> None:
    """What PeftExport writes at the end of fit rebuilds the same VL-BART in PEFT (DoRA on BART's q/v projections,
    biases, LayerNorms and the visual embedding)."""
    from peft import PeftModel

    from mmft.adapters import save_adapters
    from mmft.models.vlbart import VLBart, build_bart

    trained = tiny_module().eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in sorted(trained.named_parameters()):
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator)
                param.mul_(1 + 0.2 * noise) if "magnitude" in name else param.add_(0.1 * noise)
    save_adapters(trained.model, tmp_path / "adapter")

    args = tiny_init_args()
    base_bart = build_bart(args["bart"], trained.tokenizer, args["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args["seed"])
        base = VLBart(base_bart, trained.visual_encoder.feature_dim)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()

    batch = trained.collate(samples)
    inputs = (batch["input_ids"], batch["attention_mask"], trained.visual_features(batch), batch["image_counts"],
              batch["labels"])
    with torch.no_grad():
        ours = trained.model(*inputs).logits
        theirs = peft_model(*inputs).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------- video
def test_video_frames_are_images_in_frame_order(sample_data: Path) -> None:
    """A video example's frames (from its caption's span) become one visual token each; the errors name the fix."""
    from data_modules import VideoCaptions

    module = tiny_module(visual=VisualConfig(**{**tiny_init_args()["visual"], "grid": 1}), max_images=4).eval()
    root = sample_data / "tvc"
    examples = VideoCaptions(root / "tvc_val.jsonl", root / "videos", subtitles=root / "tvc_subtitles.jsonl").read()
    dataset = ExampleDataset(examples[:2], num_frames=4)
    samples = [dataset[0], dataset[1]]
    batch = module.collate(samples)
    assert batch["tasks"] == ["tvc", "tvc"] and batch["image_counts"].tolist() == [4, 4]
    assert batch["pixel_values"].shape == (8, 3, 112, 112)
    frames = [Image.fromarray(frame) for s in samples for frame in s.frames.numpy()]
    torch.testing.assert_close(batch["pixel_values"], module.collate.image_transform(frames))  # in frame order
    features = module.visual_features(batch)
    assert features.shape == (8, 1, 128)
    assert module.training_loss(batch).isfinite()
    assert len(module.generate_answers(batch)) == 2

    too_many = ExampleDataset(examples[:1], num_frames=5)[0]
    with pytest.raises(VLBartCollateError, match=r"5 video frames but the model takes at most 4.*max_images"):
        module.collate([too_many])


def test_max_images_is_the_one_frame_setting_of_training_and_optimize(sample_data: Path) -> None:
    """``max_images`` alone sets a video's frame count: the collate states it, the DataModule samples that many, and
    ``mmft optimize`` derives the same sampling from the recipe; a different data.num_frames is refused by both."""
    from data_modules import MultitaskDataModule, VideoCaptions
    from data_modules.formats.base import DataFormatError
    from mmft.cli import resolve_config
    from mmft.tools.optimize import frame_sampling

    module = tiny_module(max_images=5)
    root = sample_data / "tvc"
    reader = VideoCaptions(root / "tvc_val.jsonl", root / "videos")
    data = MultitaskDataModule(val=[reader], collate_fn=module.collate, eval_batch_size=2)
    data.setup("validate")
    assert next(iter(data.val_dataloader()[0]))["image_counts"].tolist() == [5, 5]
    with pytest.raises(ValueError, match=r"num_frames=4, but the model takes 5 frames per video"):
        MultitaskDataModule(val=[reader], collate_fn=module.collate, num_frames=4)

    with contextlib.chdir(ROOT):
        recipe = resolve_config(["--config", "configs/tiny/vlbart_video.yaml"])
    model, data_args = recipe["model"], recipe["data"]["init_args"]
    assert data_args["num_frames"] is None
    assert frame_sampling(data_args, model).num_frames == model["init_args"]["max_images"] == 8
    with pytest.raises(DataFormatError, match=r"num_frames=4, but the model takes 8 frames per video"):
        frame_sampling({**data_args, "num_frames": 4}, model)
    qwen = {"class_path": "mmft.models.VisionLanguageModule", "init_args": {}}
    assert frame_sampling({"num_frames": 4}, qwen).num_frames == 4 and frame_sampling({}, qwen).num_frames == 8
    own = {"class_path": "lightning.pytorch.demos.boring_classes.BoringModel", "init_args": {}}  # not an mmft module
    assert frame_sampling({"num_frames": 5}, own).num_frames == 5


def test_video_feature_files_give_the_end_to_end_frame_features(sample_data: Path, tmp_path: Path) -> None:
    """Every frame stored (--video-fps 0): the span's frames picked from the file are the decoded ones."""
    from data_modules import VideoCaptions

    visual = {**tiny_init_args()["visual"], "grid": 1}
    root = sample_data / "tvc"
    examples = VideoCaptions(root / "tvc_val.jsonl", root / "videos").read()[:3]
    videos = sorted({e.video for e in examples})
    out = tmp_path / "tvc.safetensors"
    counts = extract_features.extract(VisualConfig(**visual), [], out, batch_size=5, videos=videos)
    assert counts["videos"] == len(videos) and counts["frames"] == 16 * len(videos)  # 16-frame sample videos

    end_to_end = tiny_module(visual=VisualConfig(**visual), max_images=4).eval()
    from_files = tiny_module(visual=VisualConfig(**{**visual, "features": [str(out)]}), max_images=4).eval()
    decoded = ExampleDataset(examples, num_frames=4)
    undecoded = ExampleDataset(examples, load_media=False)
    expected = end_to_end.visual_features(end_to_end.collate([decoded[i] for i in range(3)]))
    batch = from_files.collate([undecoded[i] for i in range(3)])
    assert batch["image_counts"].tolist() == [4, 4, 4]
    torch.testing.assert_close(batch["visual_features"], expected, rtol=1e-5, atol=1e-5)

    outside = replace(examples[0], video_span=(5.0, 6.0))  # the sample videos last 2 s
    with pytest.raises(VisualFeatureError, match=r"span 5-6 s lies outside the video"):
        from_files.collate([ExampleDataset([outside], load_media=False)[0]])


def test_extract_script_keeps_frames_at_the_asked_rate(sample_data: Path, tmp_path: Path, capsys) -> None:
    """16-frame 8 fps sample videos at --video-fps 4: every second frame, stored with its rate."""
    from safetensors import safe_open

    out = tmp_path / "tvc.safetensors"
    config = ROOT / "configs" / "tiny" / "vlbart_video.yaml"
    extract_features.main(["--config", str(config), "--videos", str(sample_data / "tvc" / "videos"), "--video-fps", "4",
                 "--out", str(out)])
    videos = sorted((sample_data / "tvc" / "videos").glob("*.mp4"))
    assert f"0 images and {len(videos)} videos ({8 * len(videos)} frames)" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as file:
        assert file.get_tensor(videos[0].name).shape == (8, 1, 128)
        assert float(file.get_tensor(videos[0].name + "#fps")) == pytest.approx(4.0)
