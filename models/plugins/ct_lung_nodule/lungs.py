"""The lungs in a chest CT: body, airway tree removed, two lungs with their borders closed,
and which side and craniocaudal zone a point lies in."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage

from .morphology import bounding_box, fill_slices, rolling_ball_close

__all__ = ["LungSide", "LungZone", "VolumeFrame", "body_mask", "lung_zone", "segment_lungs"]


class LungSide(StrEnum):
    RIGHT = "right"
    LEFT = "left"


class LungZone(StrEnum):
    UPPER = "upper"
    MIDDLE = "middle"
    LOWER = "lower"


@dataclass(frozen=True)
class VolumeFrame:
    """How array axes lie in the patient: spacing (slice, row, column) in mm and directions.

    ``superior`` is +1 when a higher slice index is further towards the head, -1 otherwise;
    ``patient_left`` is +1 when a higher column index is further towards the patient's left.
    """

    spacing_mm: tuple[float, float, float]
    superior: int = 1
    patient_left: int = 1

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.spacing_mm):
            raise ValueError(f"spacing must be positive, got {self.spacing_mm}")
        if self.superior not in (1, -1) or self.patient_left not in (1, -1):
            raise ValueError("superior and patient_left are +1 or -1")

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> VolumeFrame:
        """From a 4×4 (slice, row, column) → LPS affine, as highdicom's Volume has."""
        vectors = np.asarray(affine, dtype=float)[:3, :3]
        spacing = tuple(float(np.linalg.norm(vectors[:, i])) for i in range(3))
        superior = 1 if vectors[2, 0] >= 0 else -1  # LPS: +z is superior
        left = 1 if vectors[0, 2] >= 0 else -1  # LPS: +x is patient left
        return cls(spacing_mm=spacing, superior=superior, patient_left=left)  # type: ignore[arg-type]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))


def body_mask(smooth: np.ndarray) -> np.ndarray:
    dense = smooth > -500
    labels, count = ndimage.label(dense)
    if count == 0:
        return dense
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return fill_slices(labels == int(sizes.argmax()))


def _airway_tree(smooth: np.ndarray, body: np.ndarray, frame: VolumeFrame) -> np.ndarray:
    """Trachea and the bronchi connected to it, grown from the most superior slices."""
    nslices = smooth.shape[0]
    top = range(nslices - 1, -1, -1) if frame.superior > 0 else range(nslices)
    pixel_area = frame.spacing_mm[1] * frame.spacing_mm[2]
    body_columns = np.nonzero(body.any(axis=(0, 1)))[0]
    if body_columns.size == 0:
        return np.zeros_like(body)
    midline = (body_columns.min() + body_columns.max()) / 2
    half_width = (body_columns.max() - body_columns.min()) / 2
    dark = (smooth < -950) & body
    for checked, k in enumerate(top):
        if checked >= max(3, nslices // 10):
            break
        labels, count = ndimage.label(dark[k])
        for index in range(1, count + 1):
            region = labels == index
            area = region.sum() * pixel_area
            rows, cols = np.nonzero(region)
            if not 30 <= area <= 900 or abs(cols.mean() - midline) > 0.25 * half_width:
                continue
            extent = max(np.ptp(rows) * frame.spacing_mm[1], np.ptp(cols) * frame.spacing_mm[2])
            if extent > 2.2 * math.sqrt(area / math.pi) * 2:
                continue  # not round: not a trachea
            grown, _ = ndimage.label(dark)
            seed_label = grown[k][region].max()
            airway = grown == seed_label
            air_total = ((smooth < -400) & body).sum()
            if airway.sum() > 0.25 * air_total:
                return np.zeros_like(body)  # leaked into the lungs: keep the lungs intact
            return airway
    return np.zeros_like(body)


def segment_lungs(
    smooth: np.ndarray, body: np.ndarray, frame: VolumeFrame, closing_radius_mm: float
) -> dict[LungSide, np.ndarray]:
    air = (smooth < -400) & body
    airways = _airway_tree(smooth, body, frame)
    if airways.any():
        air &= ~ndimage.binary_dilation(airways, iterations=2)
    labels, count = ndimage.label(air)
    if count == 0:
        return {}
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    order = np.argsort(sizes)[::-1]
    min_voxels = max(int(2000 / frame.voxel_volume_mm3), 50)  # 2 mL
    parts = [labels == i for i in order[:2] if sizes[i] >= min_voxels]
    body_columns = np.nonzero(body.any(axis=(0, 1)))[0]
    midline = (body_columns.min() + body_columns.max()) / 2
    if len(parts) == 1 or (len(parts) == 2 and sizes[order[1]] < 0.2 * sizes[order[0]]):
        # one component holds both lungs (they touch, or airways joined them): split at midline
        whole = parts[0]
        columns = np.arange(whole.shape[2])[None, None, :]
        parts = [whole & (columns < midline), whole & (columns >= midline)]
    lungs: dict[LungSide, np.ndarray] = {}
    for part in parts:
        if not part.any():
            continue
        centre_column = np.nonzero(part.any(axis=(0, 1)))[0].mean()
        on_left = (centre_column - midline) * frame.patient_left > 0
        side = LungSide.LEFT if on_left else LungSide.RIGHT
        region = bounding_box(part, (0, 1, 1), part.shape)
        filled = np.zeros_like(part)
        filled[region] = fill_slices(part[region])
        lungs[side] = filled | lungs.get(side, np.zeros_like(part))
    if closing_radius_mm > 0:
        for side, lung in lungs.items():
            others = [other for key, other in lungs.items() if key != side]
            closed = rolling_ball_close(lung, frame.spacing_mm, closing_radius_mm) & body
            for other in others:
                closed &= ~other
            lungs[side] = closed
    return lungs


def lung_zone(lung: np.ndarray, centre_slice: float, frame: VolumeFrame) -> LungZone:
    slices = np.nonzero(lung.any(axis=(1, 2)))[0]
    low, high = slices.min(), slices.max() + 1
    fraction = (centre_slice - low) / max(high - low, 1)
    if frame.superior < 0:
        fraction = 1 - fraction  # fraction measured from the lung base upwards
    if fraction >= 2 / 3:
        return LungZone.UPPER
    return LungZone.MIDDLE if fraction >= 1 / 3 else LungZone.LOWER
