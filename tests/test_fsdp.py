"""FSDP (FSDP2 through :class:`mmft.fsdp.AdapterFSDPStrategy`) on two CPU processes (gloo).

- DoRA under FSDP equals DoRA in one process: outputs, gradients and evaluation outputs after optimizer steps, in
  float32, with the base weight sharded unevenly;
- the tiny LLaVA recipe plus the FSDP overlay, launched by torchrun (one node, two processes, as a multi-node launch
  is written), writes adapter-only checkpoints fingerprinted like the unsharded base, resumes with the losses of the
  uninterrupted run, and exports a PEFT folder that PEFT loads with the adapted model's logits;
- a 4-bit base is refused with the config key to change.
"""

from __future__ import annotations

import csv
import shutil
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_helpers import ROOT, make_workdir, run_command
from peft import PeftModel
from safetensors.torch import load_file
from test_llava_family import vqa_samples
from torch import nn

from mmft.adapters import AdaptedLinear, AdapterConfig, QuantizationConfig, apply_adapters, quantize_linear_layers
from mmft.callbacks import WeightUpdates
from mmft.cli import resolve_config
from mmft.fsdp import AdapterFSDPStrategy, ShardingError, shard_model
from mmft.models import VisionLanguageFromConfig
from mmft.tools.export import export_peft, load_module

WORLD = 2
STEPS = 2


def dora_net() -> nn.Module:
    """Two DoRA layers, the first with 7 output rows (sharded 4 + 3), and a direction update already trained, so that
    the norm of ``W + s B A`` depends on every row of ``W``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 7), nn.Tanh(), nn.Linear(7, 5))
    apply_adapters(net, AdapterConfig(method="dora", r=3, alpha=6, target_modules=["0", "2"]))
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, AdaptedLinear):
                layer.lora_B.weight.normal_(std=0.5)
    return net


def rank_input(rank: int) -> torch.Tensor:
    return torch.randn(3, 4, 10, generator=torch.Generator().manual_seed(100 + rank))


def train_and_evaluate(net: nn.Module, inputs: list[torch.Tensor]) -> dict[str, list]:
    """STEPS rounds of a training step on the mean loss over ``inputs``, then an evaluation forward of each (no grad:
    DoRA's cached scale); the outputs, the gradients of each step and the evaluation outputs."""
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    record = {"outputs": [], "grads": [], "evals": []}
    for _ in range(STEPS):
        net.train()
        outputs = [net(x) for x in inputs]
        loss = torch.stack([out.square().mean() for out in outputs]).mean()
        loss.backward()
        record["outputs"].append([out.detach() for out in outputs])
        record["grads"].append({n: whole(p.grad) for n, p in net.named_parameters() if p.grad is not None})
        optimizer.step()
        optimizer.zero_grad()
        net.eval()
        with torch.no_grad():
            record["evals"].append([net(x) for x in inputs])
    return record


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def sharded_worker(rank: int, init_file: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        net = dora_net()
        shard_model(net, init_device_mesh("cpu", (WORLD,)), units=[net[0]])
        assert net[0].base_layer.weight.to_local().shape[0] == (4 if rank == 0 else 3)
        torch.save(train_and_evaluate(net, [rank_input(rank)]), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_dora_under_fsdp_matches_one_process(tmp_path):
    # forked, not spawned: the children need no fresh imports
    mp.start_processes(sharded_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="fork")
    # one process sees both ranks' inputs; FSDP averages the ranks' gradients, as the mean loss over both does
    reference = train_and_evaluate(dora_net(), [rank_input(rank) for rank in range(WORLD)])
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for step in range(STEPS):
            torch.testing.assert_close(got["outputs"][step][0], reference["outputs"][step][rank], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["evals"][step][0], reference["evals"][step][rank], rtol=1e-5, atol=1e-6)
            assert got["grads"][step].keys() == reference["grads"][step].keys()
            for name, grad in reference["grads"][step].items():
                torch.testing.assert_close(got["grads"][step][name], grad, rtol=1e-5, atol=1e-6)
    assert any("magnitude" in name for name in reference["grads"][0])


def test_a_4bit_base_is_refused_with_the_config_key():
    pytest.importorskip("bitsandbytes")
    model = nn.Sequential(nn.Linear(64, 64))
    quantize_linear_layers(model, QuantizationConfig(bits=4, compute_dtype="float32"), skip=[],
                           device=torch.device("cpu"))
    with pytest.raises(ShardingError, match=r"model\.init_args\.backbone\.init_args\.quantization"):
        shard_model(model, mesh=None, units=[])


def test_weight_updates_refuses_fsdp_with_the_callback_named():
    trainer = SimpleNamespace(strategy=AdapterFSDPStrategy())
    with pytest.raises(ValueError, match=r"WeightUpdates \(trainer\.callbacks\).*strategy ddp"):
        WeightUpdates(modules=["0"]).setup(trainer, dora_net(), "fit")


# ---------------------------------------------------------------------------------------------------------- the CLI
RUN = Path("runs") / "tiny_llava_fsdp"
CHECKPOINTS = RUN / "checkpoints"
UNINTERRUPTED = Path("uninterrupted")
FSDP_RUN = {
    "trainer": {
        "max_epochs": 1,
        "limit_train_batches": 4,
        "limit_val_batches": 1,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"save_last": True, "save_on_train_epoch_end": False}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",  # mid-epoch: after step 2
             "init_args": {"every_n_train_steps": 2, "save_top_k": -1, "filename": "{step}"}},
            {"class_path": "mmft.callbacks.PeftExport"},
        ],
    }
}
CONFIGS = ["--config", "configs/tiny/llava_dora.yaml", "--config", "configs/tiny/overlays/fsdp.yaml",
           "--config", "short.yaml"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_losses(version_dir: Path) -> dict[int, float]:
    with (version_dir / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row["train/loss"]}


@pytest.fixture(scope="module")
def fsdp_run(sample_data, tmp_path_factory) -> Path:
    """The uninterrupted run, launched as on a cluster node: torchrun starts the processes, Lightning joins them."""
    workdir = make_workdir(tmp_path_factory.mktemp("cli_fsdp"), sample_data, FSDP_RUN)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--node_rank", "0",
                "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    out = run_command(workdir, [*torchrun, "-m", "mmft.cli", "fit", *CONFIGS, "--trainer.num_nodes", "1",
                                "--trainer.devices", "2"])
    assert "MEMBER: 2/2" in out and "distributed_backend=gloo" in out
    # what the run wrote, kept apart: the resume test continues in the same run folder
    shutil.copytree(workdir / RUN / "adapter", workdir / UNINTERRUPTED / "adapter")
    shutil.copy(workdir / CHECKPOINTS / "last.ckpt", workdir / UNINTERRUPTED / "last.ckpt")
    return workdir


@pytest.mark.slow
def test_fsdp_checkpoints_resume_exactly(fsdp_run):
    uninterrupted = train_losses(fsdp_run / RUN / "csv" / "version_0")
    assert sorted(uninterrupted) == [0, 1, 2, 3]
    # Lightning's own launcher this time, from the checkpoint written after step 2
    run_command(fsdp_run, [sys.executable, "-m", "mmft.cli", "fit", *CONFIGS,
                           "--ckpt_path", str(CHECKPOINTS / "step=2.ckpt")])
    resumed = train_losses(fsdp_run / RUN / "csv" / "version_1")
    assert sorted(resumed) == [2, 3]
    # the same batches, masks and optimizer state: equal to float rounding (two process launches may differ in the
    # last bit, as CPU matrix kernels may with the buffers' alignment), where a wrong resume differs by far more
    assert resumed == {step: pytest.approx(uninterrupted[step], rel=1e-6, abs=0) for step in resumed}


@pytest.mark.slow
def test_fsdp_checkpoint_is_adapter_only_and_exports_for_peft(fsdp_run, monkeypatch, tmp_path):
    monkeypatch.chdir(fsdp_run)  # the config's relative paths (tokenizer)
    ckpt = UNINTERRUPTED / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    module = load_module(ckpt)  # one process, unsharded: checks the fingerprint and the keys on load
    assert sorted(checkpoint["state_dict"]) == sorted(module.trainable_state_keys())
    assert checkpoint["mmft"] == module.base_fingerprint()  # taken before sharding: the whole frozen base

    folder = export_peft(ckpt, tmp_path / "adapter")  # what `mmft export --ckpt_path` writes
    at_fit_end = load_file(fsdp_run / UNINTERRUPTED / "adapter" / "adapter_model.safetensors")  # PeftExport, gathered
    exported = load_file(folder / "adapter_model.safetensors")
    assert at_fit_end.keys() == exported.keys()
    assert all(torch.equal(at_fit_end[k], exported[k]) for k in exported)

    base = VisionLanguageFromConfig(**checkpoint["hyper_parameters"]["backbone"]["init_args"]).build().model
    peft_model = PeftModel.from_pretrained(base, folder).eval()
    batch = module.collate(vqa_samples())
    inputs = module._inputs(batch, prompt=False)
    with torch.no_grad():
        expected = module.eval().model(**inputs).logits
        with peft_model.disable_adapter():
            assert (peft_model(**inputs).logits - expected).abs().max() > 0.1  # the adapter changed the model
        # fp32 with PEFT's own DoRA arithmetic (a dense B A): agreement to rounding on logits of size ~10
        torch.testing.assert_close(peft_model(**inputs).logits, expected, rtol=1e-4, atol=1e-4)


def test_the_real_recipe_composes_with_the_fsdp_overlay(monkeypatch):
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    monkeypatch.chdir(ROOT)
    config = resolve_config(["--config", "configs/llava.yaml", "--config", "configs/methods/dora.yaml", "--config",
                             "configs/overlays/fsdp.yaml"])
    assert config["trainer"]["strategy"]["class_path"] == "mmft.fsdp.AdapterFSDPStrategy"
    assert config["trainer"]["precision"] == "bf16-mixed"  # the recipe's, which the strategy supports
    assert config["model"]["init_args"]["adapter"]["method"] == "dora"
