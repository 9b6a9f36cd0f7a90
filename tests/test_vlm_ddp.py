"""Steps that mix text-only and image batches across processes finish: two gloo processes through the CLI, where
every step one rank's batch is text-only (its vision tower runs on the zero-weight dummy), for a chat-template
family (without the dummy the run stops: the text-only rank never reduces the projector's gradients). That the dummy
adds exactly zero and reaches the projector is tests/test_vlm.py's, family by family."""

from __future__ import annotations

import json

import pytest
from cli_helpers import make_workdir, run_mmft

# two examples, one per rank each step (the sampler deals every second example of the shuffled order to each rank):
# one rank always has the image, the other always a text-only batch
MIXED = [
    {"id": "with-image", "image": "coco/train2014/COCO_train2014_000000000001.jpg",
     "conversations": [{"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}]},
    {"id": "text-only",
     "conversations": [{"from": "human", "value": "How many corners does a triangle have?"},
                       {"from": "gpt", "value": "A triangle has 3 corners."}]},
]


@pytest.mark.slow
def test_ddp_steps_mixing_text_only_and_image_ranks_finish(sample_data, tmp_path):
    config, run = "configs/tiny/qwen2_5_vl.yaml", "tiny_qwen2_5_vl_dora"
    (tmp_path / "mixed.json").write_text(json.dumps(MIXED))
    short = {
        "trainer": {"max_epochs": 3, "limit_val_batches": 0, "num_sanity_val_steps": 0, "log_every_n_steps": 1},
        "data": {"init_args": {"batch_size": 1, "val": [], "train": [{"class_path": "data_modules.LlavaInstruct", "init_args": {
            "json_path": str(tmp_path / "mixed.json"), "image_folder": "data/sample"}}]}},
    }
    (tmp_path / "work").mkdir()
    workdir = make_workdir(tmp_path / "work", sample_data, short)
    out = run_mmft(workdir, "fit", config, "--config", "configs/methods/dora.yaml", "--trainer.strategy", "ddp",
                   "--trainer.devices", "2",
                   "--trainer.accelerator", "cpu", timeout=300)
    assert "Starting with 2 processes" in out
    assert (workdir / "runs" / run / "adapter" / "adapter_model.safetensors").is_file()
