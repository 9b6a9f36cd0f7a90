"""Magnitude / direction analysis of weight updates (DoRA paper section 3) on hand-worked examples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mmft.adapters import AdapterConfig, apply_adapters
from mmft.analysis import direction_magnitude_trend, magnitude_direction_change, weight_updates


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
