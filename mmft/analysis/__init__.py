"""Analysis of trained adapters: magnitude and direction of weight updates (DoRA paper, section 3)."""

from .updates import (
    WeightUpdate,
    direction_magnitude_trend,
    layer_update,
    magnitude_direction_change,
    select_adapted,
    weight_updates,
)

__all__ = ["WeightUpdate", "direction_magnitude_trend", "layer_update", "magnitude_direction_change", "select_adapted",
           "weight_updates"]
