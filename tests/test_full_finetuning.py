"""``method: full``: full fine-tuning of the chosen modules as one more method. It trains exactly their tensors,
resumes exactly, checkpoints only them, exports a whole model that transformers loads with equal logits, and its
weight updates (the DoRA paper's delta_M / delta_D, the spectrum of W - W0) are measured against W0."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny_models import tiny_llama
from tiny_vlms import tiny_backbone
from torch.utils.data import DataLoader

from mmft.adapters import AdapterConfig, AdapterConfigError, AdapterError, apply_adapters, save_adapters
from mmft.analysis.spectrum import full_update_spectra
from mmft.analysis.updates import full_weight_updates, magnitude_direction_change, pretrained_weights
from mmft.callbacks import UpdateSpectra, WeightUpdates
from mmft.metrics import VQAAccuracy
from mmft.models import VisionLanguageModule

LAYER_1 = r"model\.layers\.1"
LM_LINEARS = r".*language_model.*\.(q_proj|v_proj|o_proj|down_proj)"


def full(**fields) -> AdapterConfig:
    return AdapterConfig(**{"method": "full", **fields})


def test_full_fine_tuning_trains_exactly_the_chosen_modules():
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = apply_adapters(model, full(target_modules=LAYER_1))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if n.startswith("model.layers.1.")}
    assert report.modules_to_save == ["model.layers.1"] and str(report).startswith("mmft: full fine-tuning of 1")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(input_ids=torch.randint(0, 64, (2, 8)), labels=torch.randint(0, 64, (2, 8))).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) != (name in trainable), name  # every chosen tensor moved, no other


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"target_modules": None}, r"AdapterConfig.target_modules is required"),
        ({"target_modules": LAYER_1, "dropout": 0.1}, r"dropout=0.1 with method 'full'"),
        ({"target_modules": LAYER_1, "rank_pattern": {"q_proj": 4}}, r"rank_pattern=.* with method 'full'"),
        ({"target_modules": LAYER_1, "target_parameters": ["weight"]}, r"target_parameters with method 'full'"),
    ],
)
def test_full_fine_tuning_settings_that_do_not_apply_are_named(fields, message):
    with pytest.raises(AdapterConfigError, match=message):
        full(**fields)


def test_full_fine_tuning_has_no_peft_folder_and_a_target_matching_nothing_is_named(tmp_path):
    model = tiny_llama()
    apply_adapters(model, full(target_modules=LAYER_1))
    with pytest.raises(AdapterError, match="method 'full' trains the weights themselves and has no PEFT adapter"):
        save_adapters(model, tmp_path)
    with pytest.raises(AdapterError, match=r"target_modules=.*matches no module"):
        apply_adapters(tiny_llama(), full(target_modules=r"model\.layer\.1"))


def test_full_weight_updates_and_spectrum_against_hand_worked_changes():
    """Rows scaled by 2 change the magnitude by the rows' norms and not the direction; a rank-2 change to one layer
    has two non-zero singular values."""
    model = tiny_llama()
    apply_adapters(model, full(target_modules=["q_proj", "v_proj"]))
    pretrained = pretrained_weights(model)
    assert sorted(pretrained) == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    q0, v1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"
    modules = dict(model.named_modules())
    low_rank = torch.randn(32, 2, dtype=torch.float64) @ torch.randn(2, 32, dtype=torch.float64)
    with torch.no_grad():
        modules[q0].weight.mul_(2.0)
        modules[v1].weight.add_(low_rank.float()[: modules[v1].weight.shape[0]])
    updates = {u.module: u for u in full_weight_updates(model, pretrained)}
    w0 = pretrained[q0].double()
    assert updates[q0].delta_magnitude == pytest.approx(float(w0.norm(dim=1).mean()), rel=1e-12)
    assert updates[q0].delta_direction == pytest.approx(0.0, abs=1e-12)
    expected = magnitude_direction_change(pretrained[v1].double(), modules[v1].weight.double())
    assert (updates[v1].delta_magnitude, updates[v1].delta_direction) == pytest.approx(expected, rel=1e-12)
    untouched = "model.layers.0.self_attn.v_proj"
    assert updates[untouched].delta_magnitude == 0.0
    assert updates[untouched].delta_direction == pytest.approx(0.0, abs=1e-15)
    spectra = {s.module: s for s in full_update_spectra(model, pretrained)}
    assert spectra[v1].rank_90 <= 2 and sum(v > 1e-4 for v in spectra[v1].singular_values) == 2
    assert spectra[untouched].frobenius == 0.0


def vqa_batches(module, samples):
    return DataLoader(samples, batch_size=2, shuffle=False, collate_fn=module.collate)


def test_full_fine_tuning_resumes_exactly_checkpoints_only_its_tensors_and_exports_a_whole_model(tmp_path):
    from test_export import export_and_reload
    from test_vlm import fit_trainer, vqa_samples

    data = vqa_samples(4)

    def new_module():
        return VisionLanguageModule(tiny_backbone("qwen2_5_vl"), full(target_modules=LM_LINEARS), max_new_tokens=3,
                                    metrics={"vqav2": VQAAccuracy()},
                                    optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))

    seed_everything(0)
    straight = new_module()
    initial = {n: p.detach().clone() for n, p in straight.named_parameters()}
    every_epoch = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, save_on_train_epoch_end=False)
    updates = WeightUpdates(path=str(tmp_path / "updates.json"))
    spectra = UpdateSpectra(path=str(tmp_path / "spectrum.json"))
    fit_trainer(tmp_path / "a", 4, callbacks=[every_epoch, updates, spectra], limit_val_batches=1).fit(
        straight, vqa_batches(straight, data), vqa_batches(straight, data))
    trained = {n for n, p in straight.named_parameters() if p.requires_grad}
    assert trained and all(".language_model." in n for n in trained)
    for name, param in straight.named_parameters():
        assert torch.equal(param, initial[name]) != (name in trained), name
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=2.ckpt", weights_only=True)
    assert set(saved["state_dict"]) == trained

    seed_everything(0)
    resumed = new_module()
    fit_trainer(tmp_path / "b", 4, limit_val_batches=1).fit(
        resumed, vqa_batches(resumed, data), vqa_batches(resumed, data),
        ckpt_path=tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name

    record = json.loads((tmp_path / "updates.json").read_text())
    assert record["method"] == "full" and record["points"]
    assert all(p["delta_magnitude"] > 0 and p["delta_direction"] > 0 for p in record["points"])
    spectrum = json.loads((tmp_path / "spectrum.json").read_text())
    assert spectrum["method"] == "full" and spectrum["rank"] is None and spectrum["rank_90_max"] >= 1

    merged, _ = export_and_reload(straight.eval(), tmp_path / "merged")
    batch = straight.collate(data[:2])
    with torch.no_grad():
        expected = straight.model(**straight._inputs(batch, prompt=False)).logits
        torch.testing.assert_close(merged(**straight._inputs(batch, prompt=False)).logits, expected,
                                   atol=1e-6, rtol=1e-5)



def test_the_weights_before_training_are_copied_once_for_every_callback():
    """WeightUpdates and UpdateSpectra both ask for W0: one copy serves both, named as in the module they are given
    (a LightningModule's ``model.`` prefix, or none for a bare network)."""
    from mmft.analysis.updates import pretrained_snapshot

    model = tiny_llama()
    apply_adapters(model, full(target_modules=["q_proj", "v_proj"]))
    first, second = pretrained_snapshot(model, ["q_proj"]), pretrained_snapshot(model)
    assert sorted(first) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert all(first[name] is second[name] for name in first) and len(second) == 4
    holder = torch.nn.Module()
    holder.model = model
    assert pretrained_snapshot(holder, ["q_proj"]).keys() == {f"model.{name}" for name in first}
    with pytest.raises(ValueError, match="no fully trained Linear layer matches"):
        pretrained_snapshot(model, ["k_proj"])
