"""One accepted nodule candidate refined at its own half-maximum level and measured: volume
with partial volume, long and short axis where they were drawn, mean HU, kind, side, zone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage
from skimage import measure

from models.api import MaskBox

from .lungs import LungSide, LungZone, VolumeFrame, lung_zone
from .morphology import ball_open, principal_elongation
from .settings import DetectionSettings

__all__ = ["Line", "MeasuredNodule", "NoduleKind", "measure_nodule"]


class NoduleKind(StrEnum):
    SOLID = "solid"
    PART_SOLID = "part-solid"


Line = tuple[tuple[float, float], tuple[float, float]]  # two (row, column) pixel positions


@dataclass(frozen=True)
class MeasuredNodule:
    """One nodule and its measurements. The axes were measured on ``key_slice``; the lines
    are where (in that slice's pixels), so a viewer can draw what was measured.
    ``at_scan_edge``: the nodule reaches the first or last slice of the series, so it may
    extend beyond the scanned range and its volume is a lower bound."""

    mask: MaskBox  # bool, the box around the nodule in the volume (not 78 MB of a CT's)
    centre_voxel: tuple[float, float, float]
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    mean_hu: float
    kind: NoduleKind
    side: LungSide
    zone: LungZone
    key_slice: int
    long_axis_line: Line
    short_axis_line: Line
    at_scan_edge: bool

    @property
    def mean_diameter_mm(self) -> float:
        return (self.long_axis_mm + self.short_axis_mm) / 2


@dataclass(frozen=True)
class _Axes:
    """Feret axes of a contour in mm, with their end points (row, column in mm)."""

    long_mm: float
    short_mm: float
    long_ends: np.ndarray  # (2, 2)
    short_ends: np.ndarray  # (2, 2)


def _feret_axes(points_mm: np.ndarray) -> _Axes:
    """Longest diameter, and the extent perpendicular to it, of a closed contour.

    The short axis is drawn across the middle of the long one, as long as the extent it
    reports, so the drawn line measures what the report says.
    """
    differences = points_mm[:, None, :] - points_mm[None, :, :]
    distances = np.sqrt((differences**2).sum(-1))
    i, j = np.unravel_index(int(distances.argmax()), distances.shape)
    long_axis = float(distances[i, j])
    long_ends = points_mm[[i, j]]
    if long_axis == 0:
        return _Axes(0.0, 0.0, long_ends, long_ends.copy())
    direction = (points_mm[j] - points_mm[i]) / long_axis
    normal = np.array([-direction[1], direction[0]])
    projection = points_mm @ normal
    middle = long_ends.mean(axis=0)
    offsets = np.array([projection.min(), projection.max()]) - middle @ normal
    short_ends = middle + offsets[:, None] * normal
    return _Axes(long_axis, float(projection.max() - projection.min()), long_ends, short_ends)


def measure_nodule(
    hu: np.ndarray,
    smooth: np.ndarray,
    component: np.ndarray,
    location: tuple[slice, ...],
    lungs: dict[LungSide, np.ndarray],
    frame: VolumeFrame,
    settings: DetectionSettings,
) -> MeasuredNodule | None:
    """Refine one accepted candidate (``component`` at ``location`` in the volume) at its own
    half-maximum level and measure it."""
    spacing = frame.spacing_mm
    pad = [math.ceil(6.0 / s) + 1 for s in spacing]
    box = tuple(
        slice(max(where.start - p, 0), min(where.stop + p, n))
        for where, p, n in zip(location, pad, hu.shape, strict=True)
    )
    core = np.zeros([b.stop - b.start for b in box], dtype=bool)
    core[
        tuple(
            slice(w.start - b.start, w.stop - b.start) for w, b in zip(location, box, strict=True)
        )
    ] = component
    local, local_hu = smooth[box], hu[box]
    distance_out = ndimage.distance_transform_edt(~core, sampling=spacing)
    shell = (distance_out > 2.5) & (distance_out < 6.0) & (local < settings.candidate_hu)
    if shell.sum() < 10:
        return None
    background = float(np.median(local[shell]))
    inner = ndimage.binary_erosion(core) if core.sum() > 30 else core
    inner_values = local[inner] if inner.any() else local[core]
    ground_glass = (inner_values > settings.candidate_hu) & (inner_values < -300)
    kind = (
        NoduleKind.PART_SOLID
        if ground_glass.mean() >= settings.ground_glass_fraction
        else NoduleKind.SOLID
    )
    if kind is NoduleKind.PART_SOLID:
        level = float(np.median(inner_values[ground_glass]))
    else:
        level = float(np.percentile(inner_values, 90))
    threshold = (background + level) / 2
    in_lung = np.zeros(core.shape, dtype=bool)
    for lung in lungs.values():
        in_lung |= lung[box]
    near = (distance_out <= 1.5 * max(spacing)) & in_lung
    labels, _ = ndimage.label((local > threshold) & near)
    overlap = np.bincount(labels[core].ravel(), minlength=labels.max() + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        return None
    above = labels == int(overlap.argmax())
    # at its own half-maximum a touching vessel is thinner than at the candidate threshold:
    # one more opening cuts its stub off a convex nodule without changing the nodule
    opened = ball_open(above, settings.opening_radius_mm, spacing)
    if not opened.any():
        region = above
    else:
        pieces, _ = ndimage.label(opened)
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        kept = pieces == int(sizes.argmax())
        # what the opening removed is either surface the digital ball nibbled (within one
        # voxel of what it kept) or a stub reaching further out: remove only the stubs,
        # traced back from their far parts to where they join the nodule
        removed = above & ~kept
        beyond = ndimage.distance_transform_edt(~kept, sampling=spacing) > 1.05 * max(spacing)
        far = removed & beyond
        stubs = ndimage.binary_dilation(far, iterations=3, mask=removed)
        region = above & ~stubs
    if principal_elongation(np.argwhere(region) * np.asarray(spacing)) > settings.max_elongation:
        return None  # at its own half-maximum the candidate is a piece of vessel after all
    # partial-volume weighted volume: each voxel of the region and of its rim counts by how
    # far its value lies between the background and the nodule's level; rim voxels above the
    # half-maximum belong to what the opening cut off (a vessel), not to the nodule
    rim = ndimage.binary_dilation(region) & near & (region | ~above)
    weights = np.clip((local_hu[rim] - background) / (level - background), 0.0, 1.0)
    volume = float(weights.sum() * frame.voxel_volume_mm3)
    areas = region.sum(axis=(1, 2))
    k = int(areas.argmax())
    # contour only this nodule: anything beyond a pixel of its region is set to background
    # (and not what the opening cut off: a touching vessel's stub)
    around = ndimage.binary_dilation(region[k], iterations=2) & (region[k] | ~above[k])
    isolated = np.where(around, local[k], np.float32(background))
    contours = measure.find_contours(np.pad(isolated, 1, constant_values=background), threshold)
    if not contours:
        return None
    contour = max(contours, key=len) - 1.0
    in_plane = np.array([spacing[1], spacing[2]])
    axes = _feret_axes(contour * in_plane)
    origin = np.array([box[1].start, box[2].start], dtype=float)

    def line(ends_mm: np.ndarray) -> Line:
        first, second = (tuple(float(v) for v in end / in_plane + origin) for end in ends_mm)
        return (first, second)  # type: ignore[return-value]

    coords = np.argwhere(region)
    centre = coords.mean(axis=0) + np.array([s.start for s in box])
    mask = MaskBox.around(region, tuple(b.start for b in box), hu.shape)  # type: ignore[arg-type]
    # mean attenuation of the interior: the rim's partial-volume voxels would dilute it
    interior = ndimage.binary_erosion(region)
    if interior.sum() < 8:
        interior = region
    centre_index = tuple(round(c) for c in centre)
    side = None
    for lung_side, lung in lungs.items():
        if lung[centre_index]:
            side = lung_side
    if side is None:
        return None
    return MeasuredNodule(
        mask=mask,
        centre_voxel=tuple(float(c) for c in centre),  # type: ignore[arg-type]
        long_axis_mm=axes.long_mm,
        short_axis_mm=min(axes.short_mm, axes.long_mm),
        volume_mm3=volume,
        mean_hu=float(local_hu[interior].mean()),
        kind=kind,
        side=side,
        zone=lung_zone(lungs[side], float(centre[0]), frame),
        key_slice=k + box[0].start,
        long_axis_line=line(axes.long_ends),
        short_axis_line=line(axes.short_ends),
        at_scan_edge=bool({0, hu.shape[0] - 1} & set(mask.frames_present.tolist())),
    )
