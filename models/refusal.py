"""Whether a plugin's manifest accepts a series (its ``input`` section), in words."""

from __future__ import annotations

from models.api import PluginInput
from models.manifest import PluginManifest
from models.spacing import spacing_in_words

__all__ = ["input_refusal"]


def input_refusal(manifest: PluginManifest, series: PluginInput) -> str | None:
    """Why the manifest's ``input`` section refuses ``series``, or None if it accepts it."""
    accepted = manifest.input
    if accepted.modalities and series.modality not in accepted.modalities:
        return f"it accepts modalities {list(accepted.modalities)}, the series is {series.modality}"
    if series.shape[0] < accepted.min_frames:
        return f"it needs at least {accepted.min_frames} frames, the series has {series.shape[0]}"
    if accepted.needs_spacing and not series.has_spacing:
        return (
            "it needs a calibrated pixel spacing (input.needs_spacing), and the series has "
            f"{spacing_in_words(series)}"
        )
    coarsest = max(series.pixel_spacing)
    if (
        accepted.max_pixel_spacing_mm is not None
        and series.has_spacing
        and coarsest > accepted.max_pixel_spacing_mm
    ):
        return (
            f"its pixel spacing must be at most {accepted.max_pixel_spacing_mm:g} mm, "
            f"the series has {coarsest:g} mm"
        )
    return None
