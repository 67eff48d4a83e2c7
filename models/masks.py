"""A segment's mask kept as its bounding box, so memory grows with the finding, not the volume.

A nodule covers a few thousand voxels of a 300-slice CT, yet as a full-volume bool array each
of its masks is 78 MB. A ``MaskBox`` holds only the box around the mask (``array``), where
that box starts in the volume (``origin``, the index (frame, row, column) of ``array[0, 0,
0]``) and the shape of the volume it belongs to (``volume_shape``, ``PluginInput.shape``).
Outside the box the mask is off. ``models.api.Segment`` takes either a full-volume array or
a MaskBox; the output builders read the box frame by frame and never expand it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = ["MaskBox", "check_mask_array"]

_AXES = ("frames", "rows", "columns")


def check_mask_array(array: np.ndarray, what: str) -> None:
    """A mask is 3D, bool or float in [0, 1]; ``what`` names it in the message."""
    if array.ndim != 3:
        raise ValueError(f"{what}: mask must be (frames, rows, columns), got shape {array.shape}")
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{what}: mask must be bool or float in [0, 1], got {array.dtype}")


def _three_ints(value: object, name: str) -> tuple[int, int, int]:
    try:
        numbers = tuple(operator.index(v) for v in value)  # type: ignore[attr-defined]
    except TypeError:
        raise ValueError(f"MaskBox.{name} must be three integers, got {value!r}") from None
    if len(numbers) != 3:
        raise ValueError(f"MaskBox.{name} must be (frame, row, column), got {value!r}")
    return numbers  # type: ignore[return-value]


@dataclass(frozen=True)
class MaskBox:
    """A mask as the box around it: ``array`` placed at ``origin`` in a ``volume_shape``."""

    array: np.ndarray
    origin: tuple[int, int, int]
    volume_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        check_mask_array(self.array, "MaskBox.array")
        origin = _three_ints(self.origin, "origin")
        volume = _three_ints(self.volume_shape, "volume_shape")
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "volume_shape", volume)
        if min(volume) <= 0:
            raise ValueError(f"MaskBox.volume_shape must be positive, got {volume}")
        for axis, start, size, total in zip(_AXES, origin, self.array.shape, volume, strict=True):
            if start < 0 or start + size > total:
                raise ValueError(
                    f"MaskBox: {size} {axis} from {axis} index {start} do not fit in the "
                    f"volume's {total}; origin is where array[0, 0, 0] lies in the volume"
                )

    @classmethod
    def around(
        cls,
        mask: np.ndarray,
        origin: tuple[int, int, int] = (0, 0, 0),
        volume_shape: tuple[int, int, int] | None = None,
    ) -> MaskBox:
        """The smallest box holding every non-zero voxel of ``mask``: a full-volume mask, or
        one already placed at ``origin`` in ``volume_shape``. The array is a copy, so the
        larger one can be freed; an empty mask is a box of size 0."""
        check_mask_array(mask, "MaskBox.around")
        volume = tuple(mask.shape) if volume_shape is None else volume_shape
        plane = mask.any(axis=0)  # two passes over the mask: its frames, then one plane
        nonzero = [
            np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)),
            np.flatnonzero(plane.any(axis=1)),
            np.flatnonzero(plane.any(axis=0)),
        ]
        if any(len(found) == 0 for found in nonzero):
            return cls(np.zeros((0, 0, 0), mask.dtype), (0, 0, 0), volume)  # type: ignore[arg-type]
        inner = tuple(slice(int(f[0]), int(f[-1]) + 1) for f in nonzero)
        start = tuple(o + s.start for o, s in zip(origin, inner, strict=True))
        return cls(mask[inner].copy(), start, volume)  # type: ignore[arg-type]

    @classmethod
    def whole(cls, mask: np.ndarray) -> MaskBox:
        """A full-volume mask as a box over the whole volume (no copy)."""
        return cls(mask, (0, 0, 0), tuple(mask.shape))  # type: ignore[arg-type]

    @classmethod
    def of(cls, mask: np.ndarray | MaskBox) -> MaskBox:
        """``mask`` as a box: itself, or a full-volume array wrapped by ``whole``."""
        return mask if isinstance(mask, MaskBox) else cls.whole(mask)

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Where the box lies in the volume."""
        return tuple(  # type: ignore[return-value]
            slice(o, o + n) for o, n in zip(self.origin, self.array.shape, strict=True)
        )

    @property
    def is_whole(self) -> bool:
        return tuple(self.array.shape) == self.volume_shape

    @cached_property
    def binary(self) -> np.ndarray:
        """The box's array as bool (a float mask is on where >= 0.5)."""
        return self.array if self.array.dtype == np.bool_ else self.array >= 0.5

    @cached_property
    def frames_present(self) -> np.ndarray:
        """Volume indices of the frames the mask is on anywhere."""
        if self.array.size == 0:
            return np.empty(0, np.intp)
        flat = np.ascontiguousarray(self.binary).reshape(self.array.shape[0], -1)
        if flat.shape[1] % 8 == 0:
            flat = flat.view(np.uint64)  # 8 pixels per test: all-zero bytes mean an empty frame
        return np.flatnonzero(flat.any(axis=1)) + self.origin[0]

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` of the volume as a full-size bool plane (a view where it can be)."""
        z, y, x = self.slices
        if self.is_whole:
            return self.binary[index]
        plane = np.zeros(self.volume_shape[1:], np.bool_)
        if z.start <= index < z.stop:
            plane[y, x] = self.binary[index - z.start]
        return plane

    def full(self, *, binary: bool = False) -> np.ndarray:
        """The mask over the whole volume (the array itself for a whole-volume box). It
        allocates the volume: the output builders read ``frame`` and the box instead."""
        data = self.binary if binary else self.array
        if self.is_whole:
            return data
        volume = np.zeros(self.volume_shape, data.dtype)
        volume[self.slices] = data
        return volume
