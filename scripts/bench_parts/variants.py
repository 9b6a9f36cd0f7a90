"""The models under test: a random Llama base, one copy per variant (mmft or PEFT adapters), the same non-zero
adapter values for all, and the training step, eval forward, compiled and merged forms."""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bench_parts.meters import SavedTensorMeter, eager
from bench_parts.settings import TARGETS, VARIANTS, BenchError, autocast_context, compute_dtype


def build_base(args: argparse.Namespace) -> nn.Module:
    """A randomly initialised Llama-style causal LM of the requested size, on the device, base weights in --dtype."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(args.seq, 64), attention_dropout=0.0, tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(args.seed)
    with torch.device(args.device):  # initialise on the device: a 1B model initialises slowly on CPU
        model = LlamaForCausalLM(config)
    return model.to(compute_dtype(args)).eval()


def make_variant(base: nn.Module, name: str, args: argparse.Namespace) -> nn.Module:
    """A copy of ``base`` with variant ``name``'s adapters (rank, alpha, targets and dropout 0 shared by all)."""
    library, _, options = VARIANTS[name]
    options = {k: v for k, v in options.items() if k != "fused"}
    model = copy.deepcopy(base)
    if library == "mmft":
        from mmft.adapters import AdapterConfig, apply_adapters

        apply_adapters(model, AdapterConfig(r=args.rank, alpha=args.alpha, dropout=0.0, target_modules=TARGETS,
                                             **options))
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=TARGETS,
                        task_type="CAUSAL_LM", **options)
    return get_peft_model(model, config)  # autocast_adapter_dtype=True (default): fp32 adapters


def adapter_tensors(model: nn.Module) -> dict[str, dict[str, Tensor]]:
    """``{module name in the base model: {"A", "B", "m"?}}`` for mmft and PEFT models alike."""
    from mmft.adapters import find_adapted_modules

    layers = find_adapted_modules(model)
    if layers:
        found = {}
        for name, layer in layers.items():
            found[name] = {"A": layer.lora_A.weight, "B": layer.lora_B.weight}
            if layer.use_dora:
                found[name]["m"] = layer.lora_magnitude_vector
        return found
    from peft.tuners.lora import LoraLayer

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            key = name.removeprefix("base_model.model.")
            found[key] = {"A": module.lora_A["default"].weight, "B": module.lora_B["default"].weight}
            if "default" in module.lora_magnitude_vector:
                found[key]["m"] = module.lora_magnitude_vector["default"].weight
    return found


def randomize_adapters(models: dict[str, nn.Module], base: nn.Module, seed: int) -> None:
    """Give every variant the same non-zero A, B (and magnitude, near ||W||) so the update is not trivial."""
    per_model = {name: adapter_tensors(model) for name, model in models.items()}
    per_model = {name: tensors for name, tensors in per_model.items() if tensors}  # full fine-tuning has none
    if not per_model:
        return
    names = list(per_model)
    modules = sorted(per_model[names[0]])
    for name, tensors in per_model.items():
        if sorted(tensors) != modules:
            raise BenchError(f"variant {name} adapts different modules than the others: cannot compare them")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            weight = base.get_submodule(module).weight.float().cpu()
            out_features, in_features = weight.shape
            rank = per_model[names[0]][module]["A"].shape[0]
            a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) / in_features**0.5
            b = torch.randn(out_features, rank, generator=generator) * 0.02
            m = torch.linalg.vector_norm(weight, dim=1) * (1 + 0.05 * torch.randn(out_features, generator=generator))
            for name in names:
                tensors = per_model[name][module]
                tensors["A"].copy_(a)
                tensors["B"].copy_(b)
                if "m" in tensors:
                    tensors["m"].copy_(m)


@dataclass
class Variant:
    """One model under test and its optimizer."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None
    runner: nn.Module | None = None  # what timed steps call: the model, or its torch.compile wrapper
    trainable_params: int = 0
    step_times: list[float] = field(default_factory=list)
    step_peaks: list[int] = field(default_factory=list)
    eval_times: list[float] = field(default_factory=list)
    merged_eval_times: list[float] = field(default_factory=list)
    saved_bytes: int | None = None
    peak_step_bytes: int | None = None
    static_bytes: int = 0
    fused: bool = True  # mmft.adapters.kernels on (where they can run)
    device_busy_s: float | None = None


def model_tensors(model: nn.Module) -> list[Tensor]:
    return list(model.parameters()) + list(model.buffers())


def loss_of(model: nn.Module, ids: Tensor, args: argparse.Namespace) -> Tensor:
    with autocast_context(args):
        return model(input_ids=ids, labels=ids, use_cache=False).loss


def train_step(variant: Variant, ids: Tensor, args: argparse.Namespace, meter: SavedTensorMeter | None = None) -> None:
    """Forward, LM cross-entropy, backward (``args.accumulate`` times), AdamW step, zero_grad. With ``meter``: one
    forward and backward, recording the saved bytes too (on the eager model: saved-tensor hooks do not reach into
    compiled graphs)."""
    from mmft.adapters.kernels import fused_kernels

    with fused_kernels(variant.fused):
        if meter is None:
            for _ in range(args.accumulate):  # micro-batches of one optimizer step
                if args.compile == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                loss = loss_of(variant.model if variant.runner is None else variant.runner, ids, args)
                loss.backward()
        else:
            with meter, eager():
                loss = loss_of(variant.model, ids, args)
            variant.saved_bytes = meter.live_bytes()
            loss.backward()
    variant.optimizer.step()
    variant.optimizer.zero_grad(set_to_none=True)


def eval_forward(model: nn.Module, ids: Tensor, args: argparse.Namespace) -> Tensor:
    with torch.no_grad(), autocast_context(args):
        return model(input_ids=ids, use_cache=False).logits


def compiled(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    """With ``--compile``: ``torch.compile`` in the chosen mode, of each decoder layer in place (``--compile-scope
    layers``: all layers share one compilation, so compiling takes seconds, not minutes) or of the whole model (a fresh
    wrapper). Without it: the model."""
    if not args.compile:
        return model
    # every variant, in train and eval mode, recompiles the shared decoder-layer code: keep them all cached
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if args.compile_scope == "model":
        return torch.compile(model, mode=args.compile)
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise BenchError(f"--compile-scope layers: {type(model).__name__} has no decoder layers")
    for layer in layers:
        layer.compile(mode=args.compile)
    return model


def merge_variant(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights: mmft ``merge_adapters`` (in place) or PEFT ``merge_and_unload``."""
    from mmft.adapters import find_adapted_modules, merge_adapters

    if find_adapted_modules(model):
        merge_adapters(model)
        return model
    return model.merge_and_unload()
