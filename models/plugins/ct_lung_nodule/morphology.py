"""Morphology on CT volumes with anisotropic voxels: balls measured in mm, not in voxels."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = [
    "ball_open",
    "bounding_box",
    "fill_slices",
    "principal_elongation",
    "rolling_ball_close",
]


def _ball(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """A ball of ``radius_mm`` as a structuring element on voxels of ``spacing`` mm."""
    grids = np.ogrid[tuple(slice(-int(radius_mm // s), int(radius_mm // s) + 1) for s in spacing)]
    return sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True)) <= radius_mm**2


def ball_open(mask: np.ndarray, radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Morphological opening with a ball in mm (round on anisotropic voxels)."""
    if not mask.any():
        return mask
    ball = _ball(radius_mm, spacing)
    core = ndimage.binary_erosion(mask, ball, border_value=1)
    return ndimage.binary_dilation(core, ball) & mask


def fill_slices(mask: np.ndarray) -> np.ndarray:
    filled = np.empty_like(mask)
    for k in range(mask.shape[0]):
        filled[k] = ndimage.binary_fill_holes(mask[k])
    return filled


def bounding_box(
    mask: np.ndarray, pad: tuple[int, int, int], shape: tuple[int, ...]
) -> tuple[slice, ...]:
    coords = np.nonzero(mask)
    return tuple(
        slice(max(int(c.min()) - p, 0), min(int(c.max()) + p + 1, n))
        for c, p, n in zip(coords, pad, shape, strict=True)
    )


def rolling_ball_close(
    mask: np.ndarray, spacing: tuple[float, ...], radius_mm: float
) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm`` (rolling-ball lung border), computed
    on a grid coarsened in-plane to about 2 mm and added to the full-resolution mask: it takes
    in nodules that touch the pleura without changing the rest of the lung border."""
    step = max(1, int(2.0 // spacing[1]))
    region = bounding_box(mask, (0, 0, 0), mask.shape)
    coarse = mask[region][:, ::step, ::step]
    sampling = (spacing[0], spacing[1] * step, spacing[2] * step)
    pad = [math.ceil(radius_mm / s) + 1 for s in sampling]
    coarse = np.pad(coarse, [(p, p) for p in pad])
    dilated = ndimage.distance_transform_edt(~coarse, sampling=sampling) <= radius_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=sampling) > radius_mm
    closed = closed[tuple(slice(p, -p) for p in pad)]
    full = np.repeat(np.repeat(closed, step, axis=1), step, axis=2)
    shape = [r.stop - r.start for r in region]
    result = mask.copy()
    result[region] |= full[: shape[0], : shape[1], : shape[2]]
    return result


def principal_elongation(coords_mm: np.ndarray) -> float:
    if len(coords_mm) < 4:
        return 1.0
    eigen = np.linalg.eigvalsh(np.cov(coords_mm.T))
    return float(math.sqrt(max(eigen[-1], 1e-9) / max(eigen[0], 1e-9)))
