"""Image graphics a plugin derives from its masks: outlines and extent lines on one frame.

Plugins report where a finding lies (``models.api.ImageGraphic``) so viewers draw it; these
helpers turn a 2D mask into the outline of its largest region, or into the horizontal line
that spans its extent, with the few points a viewer needs (outlines are simplified to within
half a pixel of the contour).
"""

from __future__ import annotations

import numpy as np
from skimage import measure

from models.api import GraphicKind, ImageGraphic

OUTLINE_TOLERANCE_PX = 0.5


def outline(mask: np.ndarray, frame: int) -> ImageGraphic | None:
    """The outline of the largest region of a 2D ``mask`` (None when it is empty)."""
    if mask.ndim != 2:
        raise ValueError(f"outline takes one frame's (rows, columns) mask, got {mask.shape}")
    if not mask.any():
        return None
    padded = np.pad(mask.astype(np.float32), 1)
    contours = measure.find_contours(padded, 0.5)
    contour = max(contours, key=len) - 1.0
    simplified = measure.approximate_polygon(contour, tolerance=OUTLINE_TOLERANCE_PX)
    if len(simplified) > 1 and np.array_equal(simplified[0], simplified[-1]):
        simplified = simplified[:-1]  # the writer closes outlines itself
    if len(simplified) < 3:
        return None
    points = tuple((float(row), float(column)) for row, column in simplified)
    return ImageGraphic(frame, GraphicKind.OUTLINE, points)


def horizontal_extent(mask: np.ndarray, frame: int, row: int | None = None) -> ImageGraphic:
    """A line across the whole column extent of ``mask``, from the left edge of its first
    column to the right edge of its last, so the drawn length equals (last - first + 1)
    pixels. It lies on ``row``, by default the row where the mask is widest."""
    columns = np.flatnonzero(mask.any(axis=0))
    if columns.size == 0:
        raise ValueError("horizontal_extent of an empty mask")
    if row is None:
        filled = np.flatnonzero(mask.any(axis=1))
        spans = [np.ptp(np.flatnonzero(mask[r])) for r in filled]
        row = int(filled[int(np.argmax(spans))])
    ends = ((float(row), columns[0] - 0.5), (float(row), columns[-1] + 0.5))
    return ImageGraphic(frame, GraphicKind.LINE, ends)
