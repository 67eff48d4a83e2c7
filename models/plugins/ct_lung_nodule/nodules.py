"""Lung-nodule detection on chest CT, as numpy functions: ``analyse_chest_ct`` runs the
pipeline below; steps 4 and 5 are here, 1 to 3 in ``lungs``, 6 in ``nodule_measurement``.

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

import numpy as np
from scipy import ndimage

from .lungs import LungSide, VolumeFrame, body_mask, segment_lungs
from .morphology import ball_open, bounding_box, principal_elongation
from .nodule_measurement import MeasuredNodule, measure_nodule
from .settings import DetectionSettings

__all__ = ["LungAnalysis", "analyse_chest_ct"]


@dataclass(frozen=True)
class LungAnalysis:
    lungs: dict[LungSide, np.ndarray]  # bool, full volume; absent side = no lung found
    nodules: tuple[MeasuredNodule, ...]
    rejected_vessels: int
    rejected_airways: int


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
            elongation=principal_elongation(np.argwhere(component) * np.asarray(spacing)),
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
    cores = ball_open(component, radius, spacing)
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
    body = body_mask(smooth)
    lungs = segment_lungs(smooth, body, frame, settings.pleural_closing_mm)
    if not lungs:
        return LungAnalysis(lungs={}, nodules=(), rejected_vessels=0, rejected_airways=0)
    either = np.zeros(hu.shape, dtype=bool)
    for lung in lungs.values():
        either |= lung
    box = bounding_box(either, (1, 1, 1), hu.shape)
    inside = ndimage.binary_erosion(either[box], iterations=1)
    dense = (smooth[box] > settings.candidate_hu) & inside
    opened = ball_open(dense, settings.opening_radius_mm, spacing)
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
        nodule = measure_nodule(hu, smooth, component, location, lungs, frame, settings)
        if nodule is not None and nodule.long_axis_mm >= settings.min_diameter_mm:
            nodules.append(nodule)
    nodules.sort(key=lambda n: -n.volume_mm3)
    return LungAnalysis(
        lungs=lungs, nodules=tuple(nodules), rejected_vessels=vessels, rejected_airways=airways
    )
