"""Lung segmentation and lung-nodule detection and measurement on chest CT, as numpy functions.

The pipeline, each step chosen so a vessel or an airway cannot pass for a nodule:

1. Body: everything denser than -500 HU connected to the largest such region, holes filled.
2. Airways: the trachea is found as a round air column near the midline in the most superior
   slices and grown through air darker than lung parenchyma; trachea and main bronchi are
   removed so the two lungs come apart.
3. Lungs: air inside the body without the airways; the two largest components, each with its
   holes filled slice by slice so that vessels and nodules inside the lung belong to it, then
   closed with a rolling ball so that nodules touching the pleura belong to it too.
4. Candidates: lung voxels denser than -700 HU (ground glass and solid), opened by a ball of
   ``opening_radius_mm`` (round in mm): thin vessels and airway walls vanish, a
   nodule touching a thin vessel comes apart from it, and convex nodules keep their shape.
5. Rejection: what survives the opening and is elongated (principal-axis ratio) or much larger
   than its largest inscribed sphere is a vessel, unless a second, larger opening frees a
   compact core (a nodule on a pleural strip or a thick vessel); a blob that is a small part
   of the dense tissue around it is a vessel junction; what encloses air is an airway.
6. Measurement per nodule: half-maximum threshold between the local lung background and the
   nodule's own level (its solid level, or its ground-glass level if part-solid), with the
   stub of a touching vessel cut off; a partial-volume-weighted volume, long and short axis
   on the axial slice of largest area from sub-pixel contours, mean HU, side and
   craniocaudal zone of the lung.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage
from skimage import measure

__all__ = [
    "DetectionSettings",
    "LungAnalysis",
    "LungSide",
    "LungZone",
    "MeasuredNodule",
    "NoduleKind",
    "VolumeFrame",
    "analyse_chest_ct",
]


class LungSide(StrEnum):
    RIGHT = "right"
    LEFT = "left"


class LungZone(StrEnum):
    UPPER = "upper"
    MIDDLE = "middle"
    LOWER = "lower"


class NoduleKind(StrEnum):
    SOLID = "solid"
    PART_SOLID = "part-solid"


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


@dataclass(frozen=True)
class DetectionSettings:
    """The pipeline's thresholds; the defaults are the ones measured on the phantoms."""

    candidate_hu: float = -700.0  # between lung (-860) and ground glass (-550)
    opening_radius_mm: float = 1.6  # removes vessels and airway walls thinner than 3.2 mm
    min_diameter_mm: float = 3.5  # smaller candidates are not reported
    max_diameter_mm: float = 35.0  # larger ones are masses or vessels, not nodules
    max_elongation: float = 1.8  # principal-axis ratio above which a candidate is tubular
    max_compactness: float = 2.6  # volume / largest inscribed sphere above which likewise
    airway_air_fraction: float = 0.05  # enclosed air above which a candidate is an airway
    ground_glass_fraction: float = 0.25  # interior share of ground glass for part-solid
    min_isolation: float = 0.5  # share of its connected neighbourhood a nodule must be
    pleural_closing_mm: float = 10.0  # rolling-ball radius of the lung border (0: none)

    def __post_init__(self) -> None:
        if not -1000 < self.candidate_hu < 0:
            raise ValueError(
                f"candidate_hu must lie between air and water, got {self.candidate_hu}"
            )
        if self.opening_radius_mm <= 0 or self.pleural_closing_mm < 0:
            raise ValueError("opening_radius_mm must be > 0 and pleural_closing_mm >= 0")
        if not 0 < self.min_diameter_mm < self.max_diameter_mm:
            raise ValueError("need 0 < min_diameter_mm < max_diameter_mm")
        for name in ("airway_air_fraction", "ground_glass_fraction", "min_isolation"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a fraction in [0, 1]")


Line = tuple[tuple[float, float], tuple[float, float]]  # two (row, column) pixel positions


@dataclass(frozen=True)
class MeasuredNodule:
    """One nodule and its measurements. The axes were measured on ``key_slice``; the lines
    are where (in that slice's pixels), so a viewer can draw what was measured.
    ``at_scan_edge``: the nodule reaches the first or last slice of the series, so it may
    extend beyond the scanned range and its volume is a lower bound."""

    mask: np.ndarray  # bool, full volume
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
class LungAnalysis:
    lungs: dict[LungSide, np.ndarray]  # bool, full volume; absent side = no lung found
    nodules: tuple[MeasuredNodule, ...]
    rejected_vessels: int
    rejected_airways: int


def _ball(radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """A ball of ``radius_mm`` as a structuring element on voxels of ``spacing`` mm."""
    grids = np.ogrid[tuple(slice(-int(radius_mm // s), int(radius_mm // s) + 1) for s in spacing)]
    return sum((g * s) ** 2 for g, s in zip(grids, spacing, strict=True)) <= radius_mm**2


def _ball_open(mask: np.ndarray, radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Morphological opening with a ball in mm (round on anisotropic voxels)."""
    if not mask.any():
        return mask
    ball = _ball(radius_mm, spacing)
    core = ndimage.binary_erosion(mask, ball, border_value=1)
    return ndimage.binary_dilation(core, ball) & mask


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    filled = np.empty_like(mask)
    for k in range(mask.shape[0]):
        filled[k] = ndimage.binary_fill_holes(mask[k])
    return filled


def _bbox(mask: np.ndarray, pad: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    coords = np.nonzero(mask)
    return tuple(
        slice(max(int(c.min()) - p, 0), min(int(c.max()) + p + 1, n))
        for c, p, n in zip(coords, pad, shape, strict=True)
    )


def _body_mask(smooth: np.ndarray) -> np.ndarray:
    dense = smooth > -500
    labels, count = ndimage.label(dense)
    if count == 0:
        return dense
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return _fill_slices(labels == int(sizes.argmax()))


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


def _segment_lungs(
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
        region = _bbox(part, (0, 1, 1), part.shape)
        filled = np.zeros_like(part)
        filled[region] = _fill_slices(part[region])
        lungs[side] = filled | lungs.get(side, np.zeros_like(part))
    if closing_radius_mm > 0:
        for side, lung in lungs.items():
            others = [other for key, other in lungs.items() if key != side]
            closed = _close(lung, frame.spacing_mm, closing_radius_mm) & body
            for other in others:
                closed &= ~other
            lungs[side] = closed
    return lungs


def _close(mask: np.ndarray, spacing: tuple[float, ...], radius_mm: float) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm`` (rolling-ball lung border), computed
    on a grid coarsened in-plane to about 2 mm and added to the full-resolution mask: it takes
    in nodules that touch the pleura without changing the rest of the lung border."""
    step = max(1, int(2.0 // spacing[1]))
    region = _bbox(mask, (0, 0, 0), mask.shape)
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


def _principal_elongation(coords_mm: np.ndarray) -> float:
    if len(coords_mm) < 4:
        return 1.0
    eigen = np.linalg.eigvalsh(np.cov(coords_mm.T))
    return float(math.sqrt(max(eigen[-1], 1e-9) / max(eigen[0], 1e-9)))


@dataclass(frozen=True)
class _Shape:
    volume_mm3: float
    equivalent_diameter_mm: float
    inscribed_radius_mm: float
    compactness: float  # volume over the volume of the largest inscribed sphere
    elongation: float  # ratio of the longest to the shortest principal axis

    @classmethod
    def of(cls, component: np.ndarray, spacing: tuple[float, float, float]) -> _Shape:
        volume = float(component.sum() * np.prod(spacing))
        inscribed = float(
            ndimage.distance_transform_edt(np.pad(component, 1), sampling=spacing).max()
        )
        return cls(
            volume_mm3=volume,
            equivalent_diameter_mm=(6 * volume / math.pi) ** (1 / 3),
            inscribed_radius_mm=inscribed,
            compactness=volume / (4 / 3 * math.pi * max(inscribed, 1e-6) ** 3),
            elongation=_principal_elongation(np.argwhere(component) * np.asarray(spacing)),
        )

    def tubular(self, settings: DetectionSettings) -> bool:
        """Vessel-like or too big: elongated, much larger than its inscribed ball, or huge."""
        return (
            self.elongation > settings.max_elongation
            or self.compactness > settings.max_compactness
            or self.equivalent_diameter_mm > settings.max_diameter_mm
        )


def _split(
    found: tuple[slice, ...],
    component: np.ndarray,
    shape: tuple[int, ...],
    measured: _Shape,
    settings: DetectionSettings,
    spacing: tuple[float, float, float],
) -> list[tuple[tuple[slice, ...], np.ndarray, np.ndarray, bool]]:
    """A thick component rejected as tubular may be a nodule joined to a strip of tissue (a
    pleural attachment, a thick vessel): open it again with a ball scaled to its inscribed
    radius and return what survives, each to be judged against the parent component."""
    radius = max(1.25 * settings.opening_radius_mm, 0.75 * measured.inscribed_radius_mm)
    parent = np.zeros(shape, dtype=bool)
    parent[found] = component
    cores = _ball_open(component, radius, spacing)
    labels, _ = ndimage.label(cores)
    pieces = []
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        location = tuple(
            slice(f.start + w.start, f.start + w.stop) for f, w in zip(found, where, strict=True)
        )
        pieces.append((location, labels[where] == index, parent, True))
    return pieces


def _isolation(
    dense: np.ndarray,
    found: tuple[slice, ...],
    component: np.ndarray,
    radius_mm: float,
    spacing: tuple[float, float, float],
) -> float:
    """The share of the dense tissue connected to a candidate, within a ball around it, that
    the candidate itself accounts for: about 1 for a nodule, small for a vessel junction."""
    reach_mm = max(2 * radius_mm, radius_mm + 3.0)
    pad = [math.ceil(reach_mm / s) for s in spacing]
    box = tuple(
        slice(max(f.start - p, 0), min(f.stop + p, n))
        for f, p, n in zip(found, pad, dense.shape, strict=True)
    )
    local = np.zeros([b.stop - b.start for b in box], dtype=bool)
    inner = tuple(
        slice(f.start - b.start, f.stop - b.start) for f, b in zip(found, box, strict=True)
    )
    local[inner] = component
    centre = np.argwhere(local).mean(axis=0)
    grids = np.ogrid[tuple(slice(0, n) for n in local.shape)]
    distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True))
    ball = distance2 <= reach_mm**2
    labels, _ = ndimage.label(dense[box] & ball)
    connected = np.isin(labels, np.unique(labels[local & (labels > 0)]))
    return float(local.sum() / max(int(connected.sum()), 1))


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


def _zone(lung: np.ndarray, centre_slice: float, frame: VolumeFrame) -> LungZone:
    slices = np.nonzero(lung.any(axis=(1, 2)))[0]
    low, high = slices.min(), slices.max() + 1
    fraction = (centre_slice - low) / max(high - low, 1)
    if frame.superior < 0:
        fraction = 1 - fraction  # fraction measured from the lung base upwards
    if fraction >= 2 / 3:
        return LungZone.UPPER
    return LungZone.MIDDLE if fraction >= 1 / 3 else LungZone.LOWER


def _measure(
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
    opened = _ball_open(above, settings.opening_radius_mm, spacing)
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
    if _principal_elongation(np.argwhere(region) * np.asarray(spacing)) > settings.max_elongation:
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
    full = np.zeros(hu.shape, dtype=bool)
    full[box] = region
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
        mask=full,
        centre_voxel=tuple(float(c) for c in centre),  # type: ignore[arg-type]
        long_axis_mm=axes.long_mm,
        short_axis_mm=min(axes.short_mm, axes.long_mm),
        volume_mm3=volume,
        mean_hu=float(local_hu[interior].mean()),
        kind=kind,
        side=side,
        zone=_zone(lungs[side], float(centre[0]), frame),
        key_slice=k + box[0].start,
        long_axis_line=line(axes.long_ends),
        short_axis_line=line(axes.short_ends),
        at_scan_edge=bool(full[0].any() or full[-1].any()),
    )


def analyse_chest_ct(
    hu: np.ndarray, frame: VolumeFrame, settings: DetectionSettings | None = None
) -> LungAnalysis:
    """Segment the lungs and find, classify and measure the nodules in a CT volume (HU)."""
    if hu.ndim != 3:
        raise ValueError(f"expected a (slices, rows, columns) volume, got shape {hu.shape}")
    settings = settings or DetectionSettings()
    spacing = frame.spacing_mm
    hu = hu.astype(np.float32, copy=False)
    sigma = tuple(0.5 * min(spacing) / s for s in spacing)
    smooth = ndimage.gaussian_filter(hu, sigma, output=np.float32)
    body = _body_mask(smooth)
    lungs = _segment_lungs(smooth, body, frame, settings.pleural_closing_mm)
    if not lungs:
        return LungAnalysis(lungs={}, nodules=(), rejected_vessels=0, rejected_airways=0)
    either = np.zeros(hu.shape, dtype=bool)
    for lung in lungs.values():
        either |= lung
    box = _bbox(either, (1, 1, 1), hu.shape)
    inside = ndimage.binary_erosion(either[box], iterations=1)
    dense = (smooth[box] > settings.candidate_hu) & inside
    opened = _ball_open(dense, settings.opening_radius_mm, spacing)
    labels, _ = ndimage.label(opened)
    nodules: list[MeasuredNodule] = []
    vessels = airways = 0
    offsets = np.array([s.start for s in box])
    # (where in the lung box, the component, the mask it must stand out from, refined yet)
    queue = [
        (found, labels[found] == index, dense, False)
        for index, found in enumerate(ndimage.find_objects(labels), start=1)
        if found is not None
    ]
    while queue:
        found, component, context, refined = queue.pop()
        shape = _Shape.of(component, spacing)
        if shape.equivalent_diameter_mm < settings.min_diameter_mm:
            continue
        if shape.tubular(settings):
            if not refined and shape.inscribed_radius_mm >= 1.5 * settings.opening_radius_mm:
                queue += _split(found, component, dense.shape, shape, settings, spacing)
            vessels += 1
            continue
        radius = shape.equivalent_diameter_mm / 2
        if _isolation(context, found, component, radius, spacing) < settings.min_isolation:
            vessels += 1  # a blob left where vessels branch: most of its neighbourhood is vessel
            continue
        enclosed = ndimage.binary_fill_holes(component)
        enclosed_air = (smooth[box][found][enclosed] < -900).mean()
        if enclosed_air > settings.airway_air_fraction:
            airways += 1
            continue
        location = tuple(
            slice(s.start + o, s.stop + o) for s, o in zip(found, offsets, strict=True)
        )
        nodule = _measure(hu, smooth, component, location, lungs, frame, settings)
        if nodule is not None and nodule.long_axis_mm >= settings.min_diameter_mm:
            nodules.append(nodule)
    nodules.sort(key=lambda n: -n.volume_mm3)
    return LungAnalysis(
        lungs=lungs, nodules=tuple(nodules), rejected_vessels=vessels, rejected_airways=airways
    )
