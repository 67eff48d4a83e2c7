"""Finding each carotid's lumen in black-blood axial MR slices (numpy), before the wall model.

A carotid lumen on a black-blood image is a small, round, dark region whose rim is brighter
than the tissue around it (the vessel wall). Airways and veins are dark too, but an airway is
larger and has no bright rim and a jugular vein is oval with a thin, faint wall. The best
candidate on each side of the neck is kept per slice, then only the longest run of slices in
which it moves little from slice to slice: a vessel is a tube, and isolated dark dots in a
brain or elsewhere are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage
from skimage import filters, measure

__all__ = ["CarotidSide", "LumenDetection", "LumenSettings", "find_lumens"]


class CarotidSide(StrEnum):
    RIGHT = "right"
    LEFT = "left"


@dataclass(frozen=True)
class LumenSettings:
    """What counts as a carotid lumen; common carotids are 2–5 mm in radius."""

    min_radius_mm: float = 1.5
    max_radius_mm: float = 5.5
    max_eccentricity: float = 0.6  # jugular veins are flatter than this
    min_rim_contrast: float = 1.35  # rim intensity / surrounding tissue intensity
    max_step_mm: float = 3.0  # largest centre shift between neighbouring slices
    min_slices: int = 3  # shortest run of slices accepted as a vessel

    def __post_init__(self) -> None:
        if not 0 < self.min_radius_mm < self.max_radius_mm:
            raise ValueError("need 0 < min_radius_mm < max_radius_mm")
        if not 0 <= self.max_eccentricity < 1:
            raise ValueError("max_eccentricity is in [0, 1)")
        if self.min_rim_contrast <= 1 or self.max_step_mm <= 0 or self.min_slices < 1:
            raise ValueError("min_rim_contrast must exceed 1, max_step_mm and min_slices be > 0")


@dataclass(frozen=True)
class LumenDetection:
    side: CarotidSide
    slice_index: int
    centre: tuple[float, float]  # (row, column), sub-pixel
    radius_mm: float
    rim_contrast: float


def _candidates(
    image: np.ndarray, pixel_mm: float, settings: LumenSettings
) -> tuple[list[tuple[tuple[float, float], float, float]], float | None]:
    """Dark round blobs with a bright rim: (centre, equivalent radius mm, rim contrast), and
    the column of the body's midline (None when the slice holds no body)."""
    smooth = ndimage.gaussian_filter(image, 0.5)
    if float(smooth.max()) <= 0:
        return [], None
    body_level = filters.threshold_otsu(smooth)
    body = ndimage.binary_fill_holes(smooth > body_level * 0.5)
    labels, count = ndimage.label(body)
    if count == 0:
        return [], None
    largest = labels == int(np.bincount(labels.ravel())[1:].argmax()) + 1
    tissue = float(np.median(smooth[largest]))
    columns = np.nonzero(largest.any(axis=0))[0]
    midline = float(columns.min() + columns.max()) / 2
    dark = (smooth < 0.5 * tissue) & ndimage.binary_erosion(largest, iterations=3)
    found = []
    for region in measure.regionprops(measure.label(dark)):
        radius = math.sqrt(region.area / math.pi) * pixel_mm
        if not settings.min_radius_mm <= radius <= settings.max_radius_mm:
            continue
        if region.eccentricity > settings.max_eccentricity:
            continue
        # a window reaching past the outer ring around the blob is all the distances need
        margin = math.ceil((2.5 * radius + 3.5) / pixel_mm)
        window = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n))
            for s, n in zip(region.slice, image.shape, strict=True)
        )
        blob = np.zeros(image.shape, dtype=bool)
        blob[region.slice] = region.image
        distance = ndimage.distance_transform_edt(~blob[window]) * pixel_mm
        rim = (distance > 0.2) & (distance <= 1.6)
        around = (distance > 2.5 * radius) & (distance <= 2.5 * radius + 3.0) & largest[window]
        if rim.sum() < 5 or around.sum() < 5:
            continue
        # the rim band also holds the lumen's blurred edge: its upper quartile is the wall
        local = smooth[window]
        rim_level = float(np.percentile(local[rim], 75))
        contrast = rim_level / max(float(np.median(local[around])), 1e-6)
        if contrast < settings.min_rim_contrast:
            continue
        row, col = region.centroid
        found.append(((float(row), float(col)), radius, contrast))
    return found, midline


def _longest_run(
    detections: list[LumenDetection], step_px: float, min_slices: int
) -> list[LumenDetection]:
    best: list[LumenDetection] = []
    run: list[LumenDetection] = []
    for detection in sorted(detections, key=lambda d: d.slice_index):
        if run and (
            detection.slice_index != run[-1].slice_index + 1
            or math.dist(detection.centre, run[-1].centre) > step_px
        ):
            run = []
        run.append(detection)
        if len(run) > len(best):
            best = list(run)
    return best if len(best) >= min_slices else []


def find_lumens(
    frames: np.ndarray,
    pixel_mm: float,
    patient_left: int = 1,
    settings: LumenSettings | None = None,
) -> dict[CarotidSide, list[LumenDetection]]:
    """Per side, the carotid lumen in each slice of its longest continuous run."""
    settings = settings or LumenSettings()
    per_side: dict[CarotidSide, list[LumenDetection]] = {side: [] for side in CarotidSide}
    for index, image in enumerate(frames):
        found, midline = _candidates(image.astype(np.float32), pixel_mm, settings)
        for side in CarotidSide:
            wanted = 1 if side is CarotidSide.LEFT else -1
            on_side = [
                f
                for f in found
                if midline is not None and (f[0][1] - midline) * patient_left * wanted > 0
            ]
            if on_side:
                centre, radius, contrast = max(on_side, key=lambda f: f[2])
                per_side[side].append(LumenDetection(side, index, centre, radius, contrast))
    min_slices = min(settings.min_slices, frames.shape[0])
    step_px = settings.max_step_mm / pixel_mm
    return {side: _longest_run(per_side[side], step_px, min_slices) for side in CarotidSide}
