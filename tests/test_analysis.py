"""Magnitude / direction analysis of weight updates (DoRA paper section 3) on hand-worked examples."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mmft.adapters import AdapterConfig, apply_adapters
from mmft.analysis import (
    direction_magnitude_trend,
    effective_weight,
    magnitude_direction_change,
    rank_at_energy,
    update_spectra,
    update_spectrum,
    weight_updates,
)


class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(2, 2, bias=False)
        self.v_proj = nn.Linear(2, 2, bias=False)


def test_full_weight_by_hand():
    """Rows [3, 4] -> [6, 8] (norm 5 -> 10, same direction) and [1, 0] -> [0, 2] (norm 1 -> 2, turned 90 degrees):
    delta_M = (5 + 1) / 2 = 3, delta_D = (0 + 1) / 2 = 0.5."""
    pretrained = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    tuned = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    assert magnitude_direction_change(pretrained, tuned) == pytest.approx((3.0, 0.5))


def test_separate_magnitude_is_used_as_given():
    """A DoRA layer's magnitude is its own vector, whatever the direction's length: [4, 1] against norms [5, 1]."""
    pretrained = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    direction = torch.tensor([[-30.0, -40.0], [1.0, 1.0]])  # opposite (1 - cos = 2), 45 degrees (1 - 1/sqrt 2)
    delta_m, delta_d = magnitude_direction_change(pretrained, direction, torch.tensor([4.0, 1.0]))
    assert delta_m == pytest.approx(0.5)
    assert delta_d == pytest.approx((2.0 + 1.0 - 1.0 / math.sqrt(2.0)) / 2)


def adapted(method: str) -> TwoLinear:
    torch.manual_seed(0)
    model = TwoLinear()
    apply_adapters(model, AdapterConfig(method=method, r=1, alpha=2, target_modules=["q_proj", "v_proj"]))
    return model


def test_dora_layer_uses_its_magnitude_and_the_direction_w_plus_sba():
    model = adapted("dora")
    layer = model.q_proj
    with torch.no_grad():
        layer.base_layer.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        layer.lora_A.weight.copy_(torch.tensor([[0.0, 1.0]]))
        layer.lora_B.weight.copy_(torch.tensor([[0.0], [0.5]]))  # s = 2: W + s B A = [[3, 4], [1, 1]]
        layer.lora_magnitude_vector.copy_(torch.tensor([4.0, 1.0]))
    update = {u.module: u for u in weight_updates(model)}["q_proj"]
    assert update.delta_magnitude == pytest.approx((1.0 + 0.0) / 2)
    assert update.delta_direction == pytest.approx((0.0 + 1.0 - 1.0 / math.sqrt(2.0)) / 2)


def test_lora_layer_takes_both_from_the_merged_weight():
    model = adapted("lora")
    layer = model.v_proj
    with torch.no_grad():
        layer.base_layer.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        layer.lora_A.weight.copy_(torch.tensor([[1.0, 0.0]]))
        layer.lora_B.weight.copy_(torch.tensor([[1.5], [0.0]]))  # s = 2: W + s B A = [[6, 4], [1, 0]]
    update = weight_updates(model, ["v_proj"])[0]
    assert update.module == "v_proj"
    assert update.delta_magnitude == pytest.approx((math.sqrt(52.0) - 5.0) / 2)
    assert update.delta_direction == pytest.approx((1.0 - 34.0 / (5.0 * math.sqrt(52.0))) / 2)


@pytest.mark.parametrize("method", ["lora", "dora", "vera", "dvora"])
def test_nothing_has_moved_at_initialisation(method):
    for update in weight_updates(adapted(method)):
        assert update.delta_magnitude == pytest.approx(0.0, abs=1e-7)
        assert update.delta_direction == pytest.approx(0.0, abs=1e-12)


def test_trend_is_the_least_squares_slope_and_pearson_correlation():
    assert direction_magnitude_trend([(0.0, 1.0), (1.0, -1.0), (2.0, -3.0)]) == pytest.approx((-2.0, -1.0))
    # y = x + noise: slope and correlation by hand
    slope, corr = direction_magnitude_trend([(0.0, 0.0), (1.0, 2.0), (2.0, 2.0)])
    assert slope == pytest.approx(1.0)
    assert corr == pytest.approx(2.0 / math.sqrt(2.0 * (8.0 / 3.0)))
    assert all(math.isnan(v) for v in direction_magnitude_trend([(0.5, 1.0), (0.5, 2.0)]))
    assert all(math.isnan(v) for v in direction_magnitude_trend([(0.5, 1.0)]))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no unmerged mmft adapters"):
        weight_updates(TwoLinear())
    with pytest.raises(ValueError, match="no adapted module matches"):
        weight_updates(adapted("dora"), ["k_proj"])
    with pytest.raises(ValueError, match="same \\[out, in\\] shape"):
        magnitude_direction_change(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="one value per row"):
        magnitude_direction_change(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3))


def test_weight_updates_callback_refuses_unknown_modules_before_training():
    from mmft.callbacks import WeightUpdates

    with pytest.raises(ValueError, match=r"init_args\.modules=\['k_proj'\]: .*no adapted module matches"):
        WeightUpdates(modules=["k_proj"]).setup(trainer=None, pl_module=adapted("dora"), stage="fit")
    WeightUpdates(modules=["q_proj"]).setup(trainer=None, pl_module=adapted("dora"), stage="fit")


# ------------------------------------------------------------------------------------------- spectrum of the update
def test_rank_at_energy_by_hand():
    """Singular values 3, 2, 1 (energy 9, 4, 1 of 14): 64% with one, 93% with two; all of it with three."""
    values = torch.tensor([1.0, 3.0, 2.0])
    assert rank_at_energy(values) == 2
    assert rank_at_energy(values, 0.6) == 1
    assert rank_at_energy(values, 1.0) == 3
    assert rank_at_energy(torch.zeros(4)) == 0
    with pytest.raises(ValueError, match="energy"):
        rank_at_energy(values, 0.0)


def test_a_hand_built_rank_r_update_has_rank_r():
    """W' - W0 = U diag(4, 2, 1) V^T with orthonormal U, V: three singular values, rank 2 at 90% (16 + 4 of 21)."""
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 3, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(10, 3, generator=generator, dtype=torch.float64))
    pretrained = torch.randn(12, 10, generator=generator, dtype=torch.float64)
    trained = pretrained + u @ torch.diag(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)) @ v.T
    values = update_spectrum(pretrained, trained)
    torch.testing.assert_close(values[:3], torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64))
    assert float(values[3:].abs().max()) < 1e-12
    assert rank_at_energy(values) == 2


def big_adapted(method: str, r: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 12, bias=False))
    apply_adapters(model, AdapterConfig(method=method, r=r, alpha=2 * r, target_modules=["0"]))
    with torch.no_grad():
        layer = model[0]
        layer.lora_B.weight.normal_(0, 0.5)
        if method == "dora":
            layer.lora_magnitude_vector.mul_(1 + 0.2 * torch.randn_like(layer.lora_magnitude_vector))
    return model


def test_a_lora_update_has_at_most_its_rank_and_a_dora_update_more():
    """LoRA's W' - W0 = s B A: rank r at full energy. DoRA rescales every row of W0 by its trained magnitude: the
    update spans (almost) every direction, so more than r singular directions carry its energy."""
    (lora,) = update_spectra(big_adapted("lora"))
    assert float(torch.tensor(lora.singular_values[3:]).abs().max()) < 1e-10
    assert rank_at_energy(torch.tensor(lora.singular_values), 1.0 - 1e-9) == 3
    (dora,) = update_spectra(big_adapted("dora"))
    assert dora.rank_90 > 3 and len(dora.singular_values) == 12
    layer = big_adapted("dora")[0]  # the effective weight is what the layer computes
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x).double(), x.double() @ effective_weight(layer).T)


def test_update_spectra_callback_writes_the_run_folders_file(tmp_path):
    from lightning.pytorch import Trainer

    from mmft.callbacks import UpdateSpectra

    model = big_adapted("lora")
    trainer = Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False, accelerator="cpu")
    UpdateSpectra(keep=2).on_fit_end(trainer, model)
    written = json.loads((tmp_path / "update_spectrum.json").read_text())
    assert written["modules"]["0"]["rank_90"] in (1, 2, 3) and len(written["modules"]["0"]["singular_values"]) == 2
    assert written["rank_90_max"] == written["modules"]["0"]["rank_90"]
    with pytest.raises(ValueError, match=r"UpdateSpectra \(trainer.callbacks\) init_args.modules='nothing'"):
        UpdateSpectra(modules="nothing").setup(trainer, model, "fit")
