"""Padding-free packed batches: per family, the packed row's loss and gradients equal the padded batch's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from tiny_vlms import FAMILIES, lm_adapter, tiny_backbone

from data_modules.records import Example, Sample, Turn
from mmft.models import VisionLanguageModule
from mmft.models.lm_loss import IGNORE_INDEX
from mmft.models.packing import PACKED_LENGTHS, PackingError

RED, BLUE = Image.new("RGB", (24, 16), (220, 40, 40)), Image.new("RGB", (20, 28), (40, 80, 225))


def mixed_samples() -> list[Sample]:
    """Examples of different lengths and media: one image, two exchanges, a text-only one, another image."""
    def sample(id_: str, turns: list[tuple[str, str]], images: list) -> Sample:
        return Sample(Example("vqav2", id_, tuple(Turn(role, text) for role, text in turns),
                              images=tuple(Path(f"{id_}_{k}.jpg") for k in range(len(images)))), images)
    return [
        sample("a", [("user", "What colour is it?"), ("assistant", "red")], [RED]),
        sample("b", [("user", "What is it?"), ("assistant", "a blue square with round corners"),
                     ("user", "And its size?"), ("assistant", "small")], [BLUE]),
        sample("c", [("user", "Say hello."), ("assistant", "hello there")], []),
        sample("d", [("user", "Which colour is the shape on the left?"), ("assistant", "blue")], [BLUE]),
    ]


def loss_and_grads(module: VisionLanguageModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.training_loss(batch)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


UNPACKABLE = {"gemma3": "image blocks it looks up by token index", "minicpmv4_6": "linear_attention layers, which carry a state"}


def test_models_that_cannot_pack_are_named():
    """Packed rows of these models would differ from their padded batches: refused, naming why."""
    for family, reason in UNPACKABLE.items():
        module = VisionLanguageModule(tiny_backbone(family), lm_adapter(family))
        batch = module.collate(mixed_samples()[:2])
        with pytest.raises(PackingError, match=f"data.packing: .*{reason}.*train this model on padded batches"):
            module.collate.pack(batch)


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - set(UNPACKABLE)))
def test_packed_batch_has_the_padded_batchs_loss_and_gradients(family):
    """Images, a text-only conversation and two exchanges in one row: the same loss and adapter, projector and
    tower gradients as the padded batch (Qwen's and GLM's multimodal positions, Idefics3's per-row images and
    PaliGemma's prefix attention included)."""
    torch.manual_seed(0)
    module = VisionLanguageModule(tiny_backbone(family), lm_adapter(family), max_new_tokens=4).eval()
    for parameter in module.model.parameters():  # non-zero adapter factors: the gradients reach every factor
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.05) if parameter.dim() > 1 else None
    samples = mixed_samples()
    if family == "paligemma":
        samples = [s for s in samples if len(s.example.turns) == 2]
    padded = module.collate(samples)
    packed = module.collate.pack(padded)
    lengths = padded["attention_mask"].sum(dim=1)
    assert packed["input_ids"].shape == (1, int(lengths.sum())) and packed[PACKED_LENGTHS].tolist() == lengths.tolist()
    assert "attention_mask" not in packed and not any(key.startswith("prompt_") for key in packed)
    loss, grads = loss_and_grads(module, padded)
    packed_loss, packed_grads = loss_and_grads(module, packed)
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == packed_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
