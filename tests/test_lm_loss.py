"""The training loss without full logits (mmft.models.lm_loss) against the plain loss: value and gradients, several
chunks, nothing supervised, and the plain path for heads that are more than a linear layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_llama

from mmft.adapters import AdapterConfig, apply_adapters
from mmft.models.lm_loss import IGNORE_INDEX, next_token_loss


def plain_loss(model, ids, labels):
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    shifted = labels[:, 1:]
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / (shifted != IGNORE_INDEX).sum().clamp_min(1)


def adapted_llama():
    model = tiny_llama()
    apply_adapters(model, AdapterConfig(method="dora", r=2, alpha=4, target_modules=["q_proj", "v_proj"],
                                        modules_to_save=["lm_head"]))  # the head trains too: its gradient counts
    return model


@pytest.mark.parametrize("chunk_tokens", [3, 1024])
def test_chunked_loss_equals_the_plain_loss_and_its_gradients(chunk_tokens, monkeypatch):
    import mmft.models.lm_loss as lm_loss

    chunks = []
    original = lm_loss._chunk_loss
    monkeypatch.setattr(lm_loss, "_chunk_loss", lambda hidden, *rest: chunks.append(len(hidden)) or original(hidden,
                                                                                                             *rest))
    torch.manual_seed(0)
    model = adapted_llama()
    reference = copy.deepcopy(model)
    ids = torch.randint(0, 64, (3, 12))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX  # the prompt
    labels[2, 9:] = IGNORE_INDEX  # padding
    loss = next_token_loss(model, {"input_ids": ids}, labels, chunk_tokens=chunk_tokens)
    supervised = 7 + 7 + 4  # labels 5..11 of each row (predicted from 4..10); the last row ends at 8
    assert sum(chunks) == supervised and max(chunks) <= chunk_tokens  # only supervised positions, in chunks
    expected = plain_loss(reference, ids, labels)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    loss.backward()
    expected.backward()
    trained = [(n, p, q) for (n, p), q in zip(model.named_parameters(), reference.parameters()) if p.requires_grad]
    assert any("lm_head" in n for n, _, _ in trained)
    for name, p, q in trained:
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_nothing_supervised_gives_zero():
    model = adapted_llama()
    ids = torch.randint(0, 64, (2, 6))
    loss = next_token_loss(model, {"input_ids": ids}, torch.full_like(ids, IGNORE_INDEX))
    assert loss.item() == 0.0


def test_a_head_with_soft_capping_takes_the_plain_path(monkeypatch):
    """A config that changes the logits after the head (Gemma's soft-capping) must not be chunked: the chunked path
    would skip it. The plain path is the model's own forward."""
    import mmft.models.lm_loss as lm_loss

    model = adapted_llama()
    model.config.final_logit_softcapping = 30.0
    monkeypatch.setattr(lm_loss, "_chunk_loss", None)  # would fail if called
    ids = torch.randint(0, 64, (2, 6))
    loss = next_token_loss(model, {"input_ids": ids}, ids)
    torch.testing.assert_close(loss, plain_loss(model, ids, ids))
