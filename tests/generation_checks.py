"""Batched generation checked by its logits: the first generated step of every left-padded row of a batch against
the same sample generated alone. Greedy answers of near-random tiny models hide small errors (their top-1 margins
are larger than the effect of attending to padding); the logits do not."""

from __future__ import annotations

import torch

# fp32 on a CPU: a padded row differs from the same row alone by rounding only (measured below 1e-5)
ATOL = 1e-4


def first_step_logits(module, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the first generated token, one row per sample, and the batch's prompt attention mask."""
    batch = module.collate(samples)
    out = module.generate(batch, max_new_tokens=1, output_logits=True, return_dict_in_generate=True)
    return out.logits[0].float(), batch["prompt_attention_mask"]


def assert_batched_logits_equal_one_by_one(module, samples: list) -> None:
    module.eval()
    together, mask = first_step_logits(module, samples)
    assert (mask == 0).any(), "no prompt of the batch is padded: the check would not test padding"
    alone = torch.cat([first_step_logits(module, [sample])[0] for sample in samples])
    torch.testing.assert_close(together, alone, atol=ATOL, rtol=0)
