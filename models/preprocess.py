"""Manifest-declared preprocessing: window/level, normalisation, resampling, orientation,
channel layout, and a sliding window for inputs larger than the model's.

Every function is pure numpy (scipy for interpolation) so a plugin may call the same steps
its manifest declares, and the generic plugin chains them. Geometry changes are undone on
the way out (``resize_to``, ``Reorientation.undo``) so masks line up with
``PluginInput.pixels`` frame for frame.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import highdicom
import numpy as np
from scipy import ndimage

from models.manifest import Blend, Layout, Normalisation, NormaliseMode, Tiling, Window

__all__ = [
    "Reorientation",
    "apply_window",
    "normalise",
    "reorient",
    "resize_to",
    "sliding_window",
    "target_shape",
    "to_layout",
]


def apply_window(pixels: np.ndarray, window: Window) -> np.ndarray:
    """Clip to ``center ± width/2`` and scale linearly to [0, 1]."""
    low = window.center - window.width / 2
    return np.clip((pixels.astype(np.float32) - low) / np.float32(window.width), 0.0, 1.0)


def normalise(pixels: np.ndarray, spec: Normalisation) -> np.ndarray:
    pixels = pixels.astype(np.float32, copy=False)
    if spec.mode is NormaliseMode.FIXED:
        return (pixels - np.float32(spec.mean)) / np.float32(spec.std)
    if spec.mode is NormaliseMode.ZSCORE:
        std = float(pixels.std())
        return (pixels - np.float32(pixels.mean())) / np.float32(std if std > 0 else 1.0)
    low, high = float(pixels.min()), float(pixels.max())
    return (pixels - np.float32(low)) / np.float32(high - low if high > low else 1.0)


def target_shape(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[int, ...]:
    """The shape an array of ``shape`` at ``spacing`` has when resampled to ``new_spacing``."""
    if len(shape) != len(spacing) or len(spacing) != len(new_spacing):
        raise ValueError(
            f"resample.spacing has {len(new_spacing)} values but the input has "
            f"{len(shape)} spatial dimensions"
        )
    return tuple(
        max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, new_spacing, strict=True)
    )


def resize_to(array: np.ndarray, shape: Sequence[int], *, order: int = 1) -> np.ndarray:
    """Interpolate the trailing ``len(shape)`` axes of ``array`` to ``shape``."""
    spatial = array.shape[-len(shape) :]
    if tuple(spatial) == tuple(shape):
        return array
    factors = (1.0,) * (array.ndim - len(shape)) + tuple(
        t / s for t, s in zip(shape, spatial, strict=True)
    )
    resized = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    # zoom may round one voxel off; crop or pad to the exact target
    slices = tuple(slice(0, n) for n in resized.shape[: array.ndim - len(shape)]) + tuple(
        slice(0, t) for t in shape
    )
    resized = resized[slices]
    pad = [(0, 0)] * (array.ndim - len(shape)) + [
        (0, t - n) for t, n in zip(shape, resized.shape[-len(shape) :], strict=True)
    ]
    return np.pad(resized, pad, mode="edge") if any(p[1] for p in pad) else resized


@dataclass(frozen=True)
class Reorientation:
    """How a volume was flipped/permuted to the model's orientation, so masks can go back."""

    reoriented: highdicom.Volume
    original_orientation: str

    def undo(self, array: np.ndarray) -> np.ndarray:
        """``array`` (channels first allowed) in the model's orientation → the input's."""
        if array.ndim == 3:
            back = self.reoriented.with_array(array).to_patient_orientation(
                self.original_orientation
            )
            return back.array
        return np.stack([self.undo(channel) for channel in array])


def reorient(volume: highdicom.Volume, orientation: str) -> Reorientation:
    original = "".join(v.value for v in volume.get_closest_patient_orientation())
    return Reorientation(volume.to_patient_orientation(orientation), original)


def to_layout(batch: np.ndarray, layout: Layout, channels: int = 1) -> np.ndarray:
    """(N, *spatial) → the model's layout with ``channels`` copies of the image channel."""
    if batch.ndim - 1 != layout.spatial_dims:
        raise ValueError(
            f"layout {layout.value} expects {layout.spatial_dims} spatial dimensions, "
            f"the input has {batch.ndim - 1}"
        )
    axis = 1 if layout.value[1] == "C" else batch.ndim
    expanded = np.expand_dims(batch, axis)
    if channels > 1:
        expanded = np.repeat(expanded, channels, axis=axis)
    return np.ascontiguousarray(expanded, dtype=np.float32)


def _gaussian_weights(size: Sequence[int]) -> np.ndarray:
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in size]
    weights = axes[0]
    for axis in axes[1:]:
        weights = np.multiply.outer(weights, axis)
    weights = weights / weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def sliding_window(
    image: np.ndarray,
    tiling: Tiling,
    predict: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Run ``predict`` over overlapping tiles of ``image`` (spatial only) and blend the results.

    ``predict`` takes one tile with the tiling's shape and returns (channels, *tile shape);
    the result is (channels, *image.shape). Images smaller than a tile are padded.
    """
    size = tiling.size
    if image.ndim != len(size):
        raise ValueError(
            f"tiling.size has {len(size)} values but the model input has {image.ndim} "
            "spatial dimensions"
        )
    padded_shape = tuple(max(n, t) for n, t in zip(image.shape, size, strict=True))
    padded = np.pad(
        image, [(0, p - n) for p, n in zip(padded_shape, image.shape, strict=True)], mode="edge"
    )
    steps = [max(1, int(t * (1 - tiling.overlap))) for t in size]
    weights = (
        _gaussian_weights(size) if tiling.blend is Blend.GAUSSIAN else np.ones(size, np.float32)
    )
    total: np.ndarray | None = None
    weight_sum = np.zeros(padded_shape, np.float32)
    for corner in itertools.product(
        *(_starts(n, t, s) for n, t, s in zip(padded_shape, size, steps, strict=True))
    ):
        region = tuple(slice(c, c + t) for c, t in zip(corner, size, strict=True))
        prediction = predict(padded[region])
        if total is None:
            total = np.zeros((prediction.shape[0], *padded_shape), np.float32)
        total[(slice(None), *region)] += prediction * weights
        weight_sum[region] += weights
    assert total is not None
    blended = total / weight_sum
    return blended[(slice(None), *(slice(0, n) for n in image.shape))]
