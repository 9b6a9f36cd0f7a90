"""Checkpoint files under faults and misuse: atomic writes (a failed save keeps the previous file), the base-model
fingerprint (a checkpoint refuses another base or adapter config), and clear errors for files that are not checkpoints."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Trainer
from tiny_vlms import tiny_backbone
from torch.utils.data import DataLoader

import mmft.checkpoint_io as checkpoint_io
from mmft.adapters import AdapterConfig, frozen_weights_hash
from mmft.checkpoint_io import AtomicCheckpointIO, CheckpointFileError
from mmft.models import CheckpointMismatchError, VisionLanguageModule

ROOT = Path(__file__).resolve().parents[1]


def tiny_module(seed: int = 0, alpha: float = 8.0, **kwargs) -> VisionLanguageModule:
    adapter = AdapterConfig(method="dora", r=4, alpha=alpha, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                            modules_to_save=["multi_modal_projector"])
    return VisionLanguageModule(tiny_backbone("llava", seed=seed), adapter, **kwargs)


def saved_checkpoint(module: VisionLanguageModule) -> dict:
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    return checkpoint


# ------------------------------------------------------------------------------------------------------- atomic saves
def test_a_save_that_fails_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.arange(4.0)}, "step": 1}, target)

    def disk_full(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", disk_full)
    with pytest.raises(CheckpointFileError, match=r"last\.ckpt failed .*No space left on device.*unchanged"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "step": 2}, target)
    monkeypatch.undo()
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temp file left behind
    previous = io.load_checkpoint(target)
    assert previous["step"] == 1 and torch.equal(previous["state_dict"]["w"], torch.arange(4.0))


def test_the_temp_file_lives_beside_the_target_not_in_tmpdir(tmp_path, monkeypatch):
    """A fake second filesystem: renames between folders fail with EXDEV (as between a local $TMPDIR and a data
    disk), and $TMPDIR points elsewhere. The save must still be one same-folder rename, never a copy into place."""
    other_fs, data_disk = tmp_path / "tmpdir", tmp_path / "data"
    other_fs.mkdir()
    monkeypatch.setenv("TMPDIR", str(other_fs))
    monkeypatch.setattr(tempfile, "tempdir", None)
    renames = []
    real_replace = os.replace

    def replace_within_one_fs(src, dst, *args, **kwargs):
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace_within_one_fs)
    monkeypatch.setattr(os, "rename", replace_within_one_fs)
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: pytest.fail("the checkpoint was copied into place"))
    target = data_disk / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    assert [dst for _, dst in renames] == [target]
    assert renames[0][0].name == f"last.ckpt.tmp-{os.getpid()}"
    assert list(other_fs.iterdir()) == []
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(target)["state_dict"]["w"], torch.ones(3))


def test_a_temp_file_of_a_killed_process_is_removed_by_the_next_save(tmp_path):
    target = tmp_path / "last.ckpt"
    dead = tmp_path / "last.ckpt.tmp-999999999"  # no such process
    dead.write_bytes(b"half")
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_module_installs_the_atomic_io_unless_the_user_chose_one(tmp_path):
    module = tiny_module()
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False, max_steps=1)
    assert type(trainer.strategy.checkpoint_io) is TorchCheckpointIO
    module.trainer = trainer
    module.setup("fit")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)

    class MyIO(TorchCheckpointIO):
        pass

    mine = MyIO()
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False, plugins=[mine])
    module.trainer = trainer
    module.setup("fit")
    assert trainer.strategy.checkpoint_io is mine


# ----------------------------------------------------------------------------------------------------- not checkpoints
class Payload:
    """Stands for pickled code: a weights-only load must refuse it."""


@pytest.mark.parametrize("content", ["text", "pickle", "empty", "tensor"])
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, content):
    path = tmp_path / "model.ckpt"
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "pickle":
        torch.save({"state_dict": {}, "payload": Payload()}, path)
    elif content == "empty":
        path.write_bytes(b"")
    else:
        torch.save(torch.zeros(2), path)
    with pytest.raises(CheckpointFileError, match="model.ckpt is not a") as error:
        AtomicCheckpointIO().load_checkpoint(path)
    assert "weights_only=False" not in str(error.value)


def test_ckpt_path_that_is_not_a_checkpoint_fails_clearly_through_the_trainer(tmp_path):
    module = tiny_module()
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    loader = DataLoader([], collate_fn=module.collate)
    with pytest.raises(CheckpointFileError, match="notes.txt is not a checkpoint"):
        trainer.test(module, dataloaders=loader, ckpt_path=str(path), verbose=False)


# ------------------------------------------------------------------------------------------------------- fingerprints
def test_a_checkpoint_loads_under_the_base_and_adapter_it_was_trained_on():
    checkpoint = saved_checkpoint(tiny_module())
    assert checkpoint["mmft"]["base"]["model_class"] == "LlavaForConditionalGeneration"
    assert checkpoint["mmft"]["adapter"]["alpha"] == 8.0
    tiny_module().on_load_checkpoint(checkpoint)  # rebuilt from the same config: accepted
    tiny_module().on_load_checkpoint(saved_checkpoint(tiny_module()) | {})


def test_a_checkpoint_refuses_another_base_of_the_same_shapes():
    checkpoint = saved_checkpoint(tiny_module(seed=0))
    other = tiny_module(seed=1)
    assert set(other.trainable_state_keys()) == set(checkpoint["state_dict"])  # same keys and shapes
    with pytest.raises(CheckpointMismatchError, match=r"base\.weights_sha256.*allow_base_mismatch: true") as error:
        other.on_load_checkpoint(checkpoint)
    assert "adapter." not in str(error.value)


def test_a_checkpoint_refuses_another_alpha_but_not_another_dropout():
    checkpoint = saved_checkpoint(tiny_module(alpha=8.0))
    with pytest.raises(CheckpointMismatchError, match=r"adapter\.alpha \(checkpoint 8\.0, this model 16\.0\)"):
        tiny_module(alpha=16.0).on_load_checkpoint(checkpoint)
    checkpoint["mmft"]["adapter"]["dropout"] = 0.3  # how training ran, not what the tensors mean
    tiny_module().on_load_checkpoint(checkpoint)


def test_allow_base_mismatch_loads_with_a_warning():
    checkpoint = saved_checkpoint(tiny_module(seed=0))
    with pytest.warns(UserWarning, match="Loading anyway"):
        tiny_module(seed=1, allow_base_mismatch=True).on_load_checkpoint(checkpoint)


def test_a_checkpoint_without_a_fingerprint_loads_with_a_warning():
    checkpoint = saved_checkpoint(tiny_module())
    del checkpoint["mmft"]
    with pytest.warns(UserWarning, match="no base-model fingerprint"):
        tiny_module().on_load_checkpoint(checkpoint)


def test_the_weights_hash_ignores_the_load_dtype_but_sees_one_changed_value():
    model = tiny_module().model
    reference = frozen_weights_hash(model)
    assert frozen_weights_hash(model.to(torch.bfloat16)) == frozen_weights_hash(model.float())  # fp32 vs bf16 load
    assert frozen_weights_hash(model) == reference
    weight = model.model.language_model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        weight.view(-1)[0] += 1.0  # the first value is always among the sampled ones
    assert frozen_weights_hash(model) != reference


@pytest.mark.parametrize("alpha", [-16, 0, float("inf"), float("nan")])
def test_a_negative_zero_or_infinite_alpha_is_refused(alpha):
    from mmft.adapters import AdapterConfigError

    with pytest.raises(AdapterConfigError, match=rf"alpha={alpha}: must be a positive finite number"):
        AdapterConfig(method="lora", r=8, alpha=alpha, target_modules=["q_proj"])
    with pytest.raises(AdapterConfigError, match=rf"alpha_pattern\['v_proj'\]={alpha}"):
        AdapterConfig(method="lora", r=8, alpha=16, target_modules=["q_proj"], alpha_pattern={"v_proj": alpha})


def test_a_full_disk_during_a_save_says_so(tmp_path, monkeypatch):
    """torch's zip writer turns a failed write into "unexpected pos"; the error names the disk's own cause."""
    target = tmp_path / "last.ckpt"
    opened = Path.open

    class FullDisk:
        def __init__(self, file):
            self.file, self.written = file, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

        def flush(self):
            self.file.flush()

        def fileno(self):
            return self.file.fileno()

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        file = opened(path, mode, *args, **kwargs)
        return FullDisk(file) if ".tmp-" in path.name and "w" in mode else file

    monkeypatch.setattr(Path, "open", open_on_a_full_disk)
    with pytest.raises(CheckpointFileError, match=r"last\.ckpt failed \(OSError: \[Errno 28\] No space left on "
                                                  r"device\)") as error:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(10_000)}}, target)
    assert "unexpected pos" not in str(error.value)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
