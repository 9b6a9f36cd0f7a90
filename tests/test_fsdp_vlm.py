"""VisionLanguageModule (tiny Qwen2.5-VL and SmolVLM: M-RoPE and a ``language_model``, a Llama ``text_model`` and a
SigLIP tower; DoRA on the language model and the vision tower; Qwen3-VL-MoE with LoRA on its expert weights too;
and Qwen2.5-VL fully fine-tuned, method full, on those layers) sharded by FSDP2 on two CPU processes (gloo), as
:class:`mmft.fsdp.AdapterFSDPStrategy` shards it: the training losses, every gradient, the
evaluation logits and the generated answers after each optimizer step equal one process's, in float32, with one
rank's batch text-only and the other's with an image, then a video; the checkpoint holds exactly the trainable
tensors, gathered whole, equal to one process's after training."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_vlm import BLUE, RED, VISION_TARGETS, video_sample
from tiny_vlms import LM_TARGETS, PROJECTORS, tiny_backbone
from torch.distributed.fsdp import FSDPModule

from data_modules.records import Example, Sample, Turn
from mmft.adapters import AdaptedLinear, AdapterConfig
from mmft.adapters.expert_layers import AdaptedParameters
from mmft.fsdp import AdapterFSDPStrategy
from mmft.models import VisionLanguageModule

WORLD = 2
# each family's decoder layer: the FSDP units, found through the model's get_decoder()
DECODER_LAYERS = {"qwen2_5_vl": "Qwen2_5_VLDecoderLayer", "smolvlm": "LlamaDecoderLayer",
                  "qwen3_vl_moe": "Qwen3VLMoeTextDecoderLayer"}
# a mixture of experts: LoRA (the method expert weights take) on attention, the vision tower and every expert
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
VISION_TOWERS = ("visual", "vision_model", "vision_tower")


def build_module(variant: str) -> VisionLanguageModule:
    """The tiny model with DoRA on its language model and vision tower, direction updates already non-zero (so
    DoRA's norm of ``W + s B A`` depends on every row of the sharded ``W``)."""
    torch.manual_seed(0)
    family, _, method = variant.partition(":")
    moe = family == "qwen3_vl_moe"
    adapter = AdapterConfig(method=method or ("lora" if moe else "dora"), r=4, alpha=8,
                            target_modules=rf"({LM_TARGETS})|({VISION_TARGETS[family]})",
                            target_parameters=EXPERTS if moe else None, modules_to_save=[PROJECTORS[family]])
    module = VisionLanguageModule(tiny_backbone(family), adapter, max_new_tokens=3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, AdaptedLinear):
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator) * 0.3)
            if isinstance(layer, AdaptedParameters):
                for factor in layer.lora_B.values():
                    factor.copy_(torch.randn(factor.shape, generator=generator) * 0.3)
    return module


def text_sample(i: int) -> Sample:
    turns = (Turn("user", f"Say a colour ({i})."), Turn("assistant", "red" if i % 2 else "blue"))
    return Sample(Example("instruct", f"t{i}", turns))


def image_sample(i: int) -> Sample:
    turns = (Turn("user", f"What color is it? ({i})"), Turn("assistant", "red" if i % 2 else "blue"))
    return Sample(Example("vqav2", f"i{i}", turns, images=(Path(f"{i}.jpg"),)), [RED if i % 2 else BLUE])


# per step, each rank's samples: text-only beside images (the vision dummy), then a video beside images
RANK_SAMPLES = [
    [[image_sample(0), image_sample(1)], [text_sample(0), text_sample(1)]],
    [[video_sample((0.0, 0.5, 1.0, 1.5))], [image_sample(2), text_sample(2)]],
]


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def train_and_evaluate(module: VisionLanguageModule, ranks: list[int]) -> dict[str, list]:
    """Per step: the mean training loss over the batches of ``ranks`` (FSDP averages the ranks' gradients as this mean
    does), its gradients, an SGD step, then each batch's evaluation logits and generated answers."""
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.2)
    record: dict[str, list] = {"losses": [], "grads": [], "logits": [], "answers": []}
    for step_samples in RANK_SAMPLES:
        batches = [module.collate(step_samples[rank]) for rank in ranks]
        module.train()
        losses = [module.training_loss(batch) for batch in batches]
        torch.stack(losses).mean().backward()
        record["losses"].append([loss.detach() for loss in losses])
        record["grads"].append({n: whole(p.grad) for n, p in module.named_parameters() if p.grad is not None})
        optimizer.step()
        optimizer.zero_grad()
        module.eval()
        with torch.no_grad():
            record["logits"].append([module.model(**module._inputs(b, prompt=False)).logits for b in batches])
        record["answers"].append([module.generate_answers(module.collate(step_samples[r])) for r in ranks])
    return record


def sharded_rank(rank: int, variant: str, init_file: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        module = build_module(variant)
        # as ModelParallelStrategy.setup_environment hands the mesh to the module before configure_model
        module._device_mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
        module.configure_model()
        units = [type(m).__name__ for m in module.model.modules() if isinstance(m, FSDPModule)]
        record = train_and_evaluate(module, [rank])
        strategy = AdapterFSDPStrategy()
        strategy.model = module
        record["checkpoint"] = strategy.lightning_module_state_dict()  # gathered on rank 0, empty elsewhere
        record["units"] = units
        torch.save(record, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("variant", [*sorted(DECODER_LAYERS), "qwen2_5_vl:full"])
def test_training_under_fsdp_matches_one_process(variant, tmp_path):
    family = variant.partition(":")[0]
    context = multiprocessing.get_context("fork")  # the children need no fresh imports
    ranks = [context.Process(target=sharded_rank, args=(r, variant, str(tmp_path / "init"), str(tmp_path)))
             for r in range(WORLD)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=240)
    hung = [process.pid for process in ranks if process.is_alive()]
    for process in ranks:
        if process.is_alive():
            process.terminate()
    assert not hung and [process.exitcode for process in ranks] == [0, 0]

    reference_module = build_module(variant)
    reference = train_and_evaluate(reference_module, list(range(WORLD)))
    got = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    # the decoder layers are units of their own; the vision tower stays in the root unit (fsdp_units' docstring)
    root = f"FSDP{type(reference_module.model).__name__}"
    assert sorted(got[0]["units"]) == sorted([f"FSDP{DECODER_LAYERS[family]}"] * 2 + [root])
    for rank in range(WORLD):
        for step in range(len(RANK_SAMPLES)):
            torch.testing.assert_close(got[rank]["losses"][step][0], reference["losses"][step][rank],
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[rank]["logits"][step][0], reference["logits"][step][rank],
                                       rtol=1e-5, atol=1e-5)
            assert got[rank]["answers"][step][0] == reference["answers"][step][rank]
            assert got[rank]["grads"][step].keys() == reference["grads"][step].keys()
            for name, grad in reference["grads"][step].items():
                torch.testing.assert_close(got[rank]["grads"][step][name], grad, rtol=1e-5, atol=1e-6)
    grads = reference["grads"][0]
    learned = {"qwen3_vl_moe": "lora_B", "qwen2_5_vl:full": "weight"}.get(variant, "magnitude")
    vision = [n for n in grads if learned in n and any(f".{tower}." in n for tower in VISION_TOWERS)]
    assert vision and all(grads[n].abs().sum() > 0 for n in vision)  # the tower's adapters learn
    if family == "qwen3_vl_moe":  # and so do the experts' (compared with one process's above)
        assert len([n for n in grads if "experts.lora_B" in n]) == 4
    checkpoint = got[0]["checkpoint"]
    assert sorted(checkpoint) == sorted(reference_module.trainable_state_keys()) and got[1]["checkpoint"] == {}
    trained = dict(reference_module.named_parameters())
    for name, tensor in checkpoint.items():
        torch.testing.assert_close(tensor, trained[name].detach(), rtol=1e-5, atol=1e-6)
