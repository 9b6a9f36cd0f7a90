"""A cheap fingerprint of a model's frozen weights, so adapter weights are never applied to another base unnoticed.

Adapter checkpoints hold only the trained tensors: the same file loads without complaint into any base of the same
shapes (another seed, another fine-tune of the same architecture) and then scores nothing. The fingerprint hashes,
for every frozen parameter in name order, its name, its shape and a fixed strided sample of its values: a few
thousand values of a 7B model, read in well under a second.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

SAMPLES_PER_TENSOR = 64


def _sample(tensor: torch.Tensor) -> bytes:
    """Up to SAMPLES_PER_TENSOR evenly spaced values. Floats are rounded to bfloat16 first, so one base loaded in
    fp32 or in bf16 gives one fingerprint; other dtypes (packed 4-bit weights) are hashed as stored."""
    flat = tensor.detach().reshape(-1)
    if flat.numel() > SAMPLES_PER_TENSOR:
        index = torch.linspace(0, flat.numel() - 1, SAMPLES_PER_TENSOR, device=flat.device).long()
        flat = flat[index]
    if flat.is_floating_point():
        return flat.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
    return flat.cpu().numpy().tobytes()


def frozen_weights_hash(model: nn.Module) -> str:
    """SHA-256 (hex) over the names, shapes and sampled values of ``model``'s frozen parameters."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            continue
        digest.update(f"{name}:{tuple(param.shape)};".encode())
        digest.update(_sample(param))
    return digest.hexdigest()
