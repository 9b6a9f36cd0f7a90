"""Analysis of trained adapters: magnitude and direction of weight updates (DoRA paper, section 3) and the spectrum
of the updates (rank at 90% of their energy)."""

from .spectrum import UpdateSpectrum, effective_weight, layer_spectrum, rank_at_energy, update_spectra, update_spectrum
from .updates import (
    WeightUpdate,
    direction_magnitude_trend,
    layer_update,
    magnitude_direction_change,
    select_adapted,
    weight_updates,
)

__all__ = ["UpdateSpectrum", "WeightUpdate", "direction_magnitude_trend", "effective_weight", "layer_spectrum",
           "layer_update", "magnitude_direction_change", "rank_at_energy", "select_adapted", "update_spectra",
           "update_spectrum", "weight_updates"]
