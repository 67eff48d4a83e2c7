"""A chest CT phantom with lungs, airways, vessels and lung nodules at known positions.

The phantom is drawn in patient space (LPS, mm) with partial-volume edges, blurred by a
scanner-like point spread function and given Gaussian noise, so a nodule's half-maximum
surface is where the ground truth says it is. Vessels are branching tubes and the airway tree
is air-filled tubes with soft-tissue walls: the structures a nodule detector must not report.
Nodules are ellipsoids (axes ``a >= b`` in the axial plane, ``c`` along z), solid or
part-solid (ground-glass halo around a solid core), placed inside the lungs clear of vessels,
airways, pleura and each other, except juxtavascular ones, which are drawn against a small
vessel (0.7–1.6 mm radius) that they overlap by 0.4 mm.

``ChestCTSpec.large()`` is a screening-like 512×512 series of a few hundred 1 mm slices;
``ChestCTSpec.small()`` is a scaled-down chest for fast tests with the same physics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from scipy import ndimage

from models.phantoms.dicom_series import (
    CTAcquisition,
    Modality,
    SeriesIdentity,
    SliceGeometry,
    StudyIdentity,
    write_ct_series,
)

__all__ = [
    "AIR_HU",
    "ChestCT",
    "ChestCTSpec",
    "LungSide",
    "LungZone",
    "NoduleKind",
    "NoduleSpec",
    "NoduleTruth",
    "make_chest_ct",
    "write_chest_ct",
]

AIR_HU = -1000.0
LUNG_HU = -860.0
SOFT_TISSUE_HU = 40.0
FAT_HU = -100.0
BLOOD_HU = 40.0
BONE_HU = 700.0
SOLID_NODULE_HU = 30.0
GROUND_GLASS_HU = -550.0


class NoduleKind(StrEnum):
    SOLID = "solid"
    PART_SOLID = "part-solid"


class LungSide(StrEnum):
    RIGHT = "right"
    LEFT = "left"


class LungZone(StrEnum):
    """Craniocaudal thirds of one lung's extent."""

    UPPER = "upper"
    MIDDLE = "middle"
    LOWER = "lower"


@dataclass(frozen=True)
class NoduleSpec:
    """A nodule to draw: semi-axes in mm (``a >= b`` axial, ``c`` craniocaudal)."""

    a_mm: float
    b_mm: float
    c_mm: float
    kind: NoduleKind = NoduleKind.SOLID
    side: LungSide = LungSide.RIGHT
    zone: LungZone = LungZone.MIDDLE
    core_fraction: float = 0.5  # part-solid: solid core semi-axes as a fraction of the whole
    touching_vessel: bool = False  # juxtavascular: placed against a small vessel

    def __post_init__(self) -> None:
        if not self.a_mm >= self.b_mm > 0 or self.c_mm <= 0:
            raise ValueError(f"nodule semi-axes need a >= b > 0 and c > 0, got {self}")
        if not 0 < self.core_fraction < 1:
            raise ValueError("core_fraction must be in (0, 1)")
        if self.touching_vessel and not self.a_mm == self.b_mm == self.c_mm:
            raise ValueError("a nodule touching a vessel must be a sphere (a == b == c)")

    @classmethod
    def sphere(cls, diameter_mm: float, **kwargs: object) -> NoduleSpec:
        r = diameter_mm / 2
        return cls(r, r, r, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class NoduleTruth:
    """Where a nodule was drawn and its exact size."""

    spec: NoduleSpec
    centre_mm: tuple[float, float, float]  # LPS
    centre_voxel: tuple[float, float, float]  # (slice, row, column), fractional
    axial_angle_rad: float  # rotation of the long axis in the axial plane

    @property
    def long_axis_mm(self) -> float:
        return 2 * self.spec.a_mm

    @property
    def short_axis_mm(self) -> float:
        return 2 * self.spec.b_mm

    @property
    def volume_mm3(self) -> float:
        return 4 / 3 * math.pi * self.spec.a_mm * self.spec.b_mm * self.spec.c_mm

    @property
    def mean_diameter_mm(self) -> float:
        return self.spec.a_mm + self.spec.b_mm


@dataclass(frozen=True)
class ChestCTSpec:
    shape: tuple[int, int, int]  # (slices, rows, columns)
    pixel_spacing_mm: float
    slice_spacing_mm: float
    nodules: tuple[NoduleSpec, ...]
    noise_hu: float = 18.0
    seed: int = 0
    vessel_generations: int = 4

    def __post_init__(self) -> None:
        if min(self.shape) < 16:
            raise ValueError(f"phantom shape {self.shape} is too small")
        if not 0.3 <= self.pixel_spacing_mm <= 2 or not 0.5 <= self.slice_spacing_mm <= 3:
            raise ValueError("pixel spacing must be 0.3–2 mm and slice spacing 0.5–3 mm")

    @property
    def field_of_view_mm(self) -> float:
        return self.shape[2] * self.pixel_spacing_mm

    @classmethod
    def large(cls, seed: int = 0) -> ChestCTSpec:
        """512×512, 0.7 mm pixels, 300 slices of 1 mm: a screening CT's size."""
        right, left = LungSide.RIGHT, LungSide.LEFT
        upper, middle, lower = LungZone.UPPER, LungZone.MIDDLE, LungZone.LOWER
        return cls(
            shape=(300, 512, 512),
            pixel_spacing_mm=0.7,
            slice_spacing_mm=1.0,
            seed=seed,
            vessel_generations=5,
            nodules=(
                NoduleSpec.sphere(4, side=right, zone=upper),
                NoduleSpec.sphere(5, side=left, zone=upper),
                NoduleSpec.sphere(6, side=right, zone=lower),
                NoduleSpec(4.5, 3.5, 4.0, side=left, zone=middle),
                NoduleSpec.sphere(10, side=right, zone=middle),
                NoduleSpec(7.5, 6.0, 6.5, side=left, zone=lower),
                NoduleSpec.sphere(12, kind=NoduleKind.PART_SOLID, side=right, zone=upper),
                NoduleSpec.sphere(20, side=left, zone=middle),
                NoduleSpec(12.5, 11.0, 12.0, side=right, zone=lower),
                NoduleSpec.sphere(16, kind=NoduleKind.PART_SOLID, side=left, zone=upper),
                NoduleSpec.sphere(8, side=right, zone=middle, touching_vessel=True),
            ),
        )

    @classmethod
    def small(cls, seed: int = 0) -> ChestCTSpec:
        """A scaled-down chest (200×200, 0.8 mm, 72 slices of 1.25 mm) for fast tests."""
        return cls(
            shape=(72, 200, 200),
            pixel_spacing_mm=0.8,
            slice_spacing_mm=1.25,
            seed=seed,
            vessel_generations=3,
            nodules=(
                NoduleSpec.sphere(4, side=LungSide.LEFT, zone=LungZone.LOWER),
                NoduleSpec.sphere(5, side=LungSide.RIGHT, zone=LungZone.UPPER),
                NoduleSpec(4.5, 3.5, 4.0, side=LungSide.LEFT, zone=LungZone.UPPER),
                NoduleSpec.sphere(
                    11, kind=NoduleKind.PART_SOLID, side=LungSide.RIGHT, zone=LungZone.LOWER
                ),
                NoduleSpec.sphere(
                    6, side=LungSide.LEFT, zone=LungZone.MIDDLE, touching_vessel=True
                ),
            ),
        )


@dataclass(frozen=True)
class ChestCT:
    """The phantom's voxels (HU, slice 0 most inferior), geometry and ground truth."""

    hounsfield: np.ndarray  # float32 (slices, rows, columns)
    geometry: SliceGeometry
    nodules: tuple[NoduleTruth, ...]
    right_lung: np.ndarray  # bool, the drawn lung including what lies inside it
    left_lung: np.ndarray
    vessels: np.ndarray  # bool, intrapulmonary vessels
    airways: np.ndarray  # bool, airway lumen and wall
    spec: ChestCTSpec = field(repr=False)

    @property
    def voxel_volume_mm3(self) -> float:
        return (
            self.geometry.pixel_spacing[0]
            * self.geometry.pixel_spacing[1]
            * abs(self.geometry.slice_spacing)
        )


@dataclass(frozen=True)
class _Tube:
    start: np.ndarray  # mm, LPS
    end: np.ndarray
    radius: float


class _Grid:
    """Voxel-centre coordinates in mm of one phantom and helpers to draw into sub-boxes."""

    def __init__(self, spec: ChestCTSpec, geometry: SliceGeometry) -> None:
        self.shape = spec.shape
        self.origin = np.asarray(geometry.origin, dtype=float)
        self.spacing = np.array(
            [geometry.slice_spacing, geometry.pixel_spacing[0], geometry.pixel_spacing[1]]
        )  # (z, y, x) per (slice, row, column)
        self.voxel = float(min(self.spacing))

    def index_of(self, point_xyz: np.ndarray) -> np.ndarray:
        """Fractional (slice, row, column) of an LPS point."""
        x, y, z = point_xyz - self.origin
        return np.array([z / self.spacing[0], y / self.spacing[1], x / self.spacing[2]])

    def box(
        self, low_xyz: np.ndarray, high_xyz: np.ndarray
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
        """The voxel box covering an LPS bounding box and its z, y, x coordinate grids."""
        lo = np.floor(self.index_of(np.minimum(low_xyz, high_xyz))).astype(int) - 1
        hi = np.ceil(self.index_of(np.maximum(low_xyz, high_xyz))).astype(int) + 2
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        region = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        z = self.origin[2] + np.arange(lo[0], hi[0]) * self.spacing[0]
        y = self.origin[1] + np.arange(lo[1], hi[1]) * self.spacing[1]
        x = self.origin[0] + np.arange(lo[2], hi[2]) * self.spacing[2]
        return region, z[:, None, None], y[None, :, None], x[None, None, :]  # type: ignore[return-value]

    def coverage(self, signed_distance_mm: np.ndarray) -> np.ndarray:
        """Partial-volume fraction of a voxel from the signed distance of its centre."""
        return np.clip(0.5 - signed_distance_mm / self.voxel, 0.0, 1.0)


def _paint(volume: np.ndarray, region: tuple[slice, ...], fraction: np.ndarray, hu: float) -> None:
    sub = volume[region]
    sub += fraction.astype(np.float32) * (np.float32(hu) - sub)


def _tube_distance(tube: _Tube, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Distance from each voxel centre to the tube's axis segment."""
    axis = tube.end - tube.start
    length2 = float(axis @ axis)
    px, py, pz = x - tube.start[0], y - tube.start[1], z - tube.start[2]
    t = np.clip((px * axis[0] + py * axis[1] + pz * axis[2]) / length2, 0.0, 1.0)
    return np.sqrt((px - t * axis[0]) ** 2 + (py - t * axis[1]) ** 2 + (pz - t * axis[2]) ** 2)


def _segment_point_distance(tube: _Tube, point: np.ndarray) -> float:
    axis = tube.end - tube.start
    t = float(np.clip((point - tube.start) @ axis / (axis @ axis), 0.0, 1.0))
    return float(np.linalg.norm(point - (tube.start + t * axis)))


@dataclass(frozen=True)
class _Anatomy:
    """Body, lung and airway dimensions (mm) scaled to the field of view."""

    body_a: float
    body_b: float
    lung_centres: dict[LungSide, tuple[float, float]]
    lung_axes: tuple[float, float, float]  # x, y, z semi-axes of each lung ellipsoid
    lung_z: float  # centre of the lungs in z
    trachea_xy: tuple[float, float]
    carina_z: float
    trachea_radius: float
    wall_mm: float

    @classmethod
    def for_spec(cls, spec: ChestCTSpec, z_min: float, z_max: float) -> _Anatomy:
        scale = spec.field_of_view_mm / 358.0
        body_a, body_b = 165 * scale, 115 * scale
        height = z_max - z_min
        lung_z = z_min + 0.48 * height
        lung_half_height = 0.46 * height
        lx, ly = 50 * scale, 80 * scale
        centres = {
            LungSide.RIGHT: (-0.48 * body_a, 5 * scale),  # patient right is -x in LPS
            LungSide.LEFT: (0.48 * body_a, 5 * scale),
        }
        return cls(
            body_a=body_a,
            body_b=body_b,
            lung_centres=centres,
            lung_axes=(lx, ly, lung_half_height),
            lung_z=lung_z,
            trachea_xy=(0.0, -25 * scale),
            carina_z=lung_z + 0.3 * lung_half_height,
            trachea_radius=max(8 * scale, 4.0),
            wall_mm=max(1.6 * scale, 1.2),
        )

    def lung_signed_distance(
        self, side: LungSide, z: np.ndarray, y: np.ndarray, x: np.ndarray
    ) -> np.ndarray:
        """Approximate signed distance (mm) to one lung's ellipsoid surface."""
        cx, cy = self.lung_centres[side]
        ax, ay, az = self.lung_axes
        q = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - self.lung_z) / az) ** 2)
        return (q - 1.0) * min(ax, ay)

    def hilum(self, side: LungSide) -> np.ndarray:
        cx, cy = self.lung_centres[side]
        medial = -np.sign(cx) * 0.55 * self.lung_axes[0]
        return np.array(
            [cx + medial, cy - 0.1 * self.lung_axes[1], self.lung_z + 0.1 * self.lung_axes[2]]
        )

    def zone_range(self, zone: LungZone) -> tuple[float, float]:
        bottom = self.lung_z - self.lung_axes[2]
        third = 2 * self.lung_axes[2] / 3
        index = {LungZone.LOWER: 0, LungZone.MIDDLE: 1, LungZone.UPPER: 2}[zone]
        return bottom + index * third, bottom + (index + 1) * third


def _airway_tree(anatomy: _Anatomy, z_top: float) -> list[_Tube]:
    tx, ty = anatomy.trachea_xy
    carina = np.array([tx, ty, anatomy.carina_z])
    tubes = [_Tube(np.array([tx, ty, z_top + 5]), carina, anatomy.trachea_radius)]
    for side in (LungSide.RIGHT, LungSide.LEFT):
        hilum = anatomy.hilum(side) + np.array([0, 6, 0]) * anatomy.lung_axes[1] / 88
        tubes.append(_Tube(carina, hilum, anatomy.trachea_radius * 0.7))
        ax, ay, az = anatomy.lung_axes
        lateral = np.sign(hilum[0] - tx)
        branches = (
            (0.25 * lateral, 0.05, 0.9),
            (0.9 * lateral, 0.2, -0.1),
            (0.2 * lateral, 0.3, -0.9),
        )
        for direction in branches:
            d = np.asarray(direction) / np.linalg.norm(direction)
            reach = 0.45 * np.array([ax, ay, az])
            tubes.append(_Tube(hilum, hilum + d * reach, anatomy.trachea_radius * 0.4))
    return tubes


def _vessel_tree(anatomy: _Anatomy, rng: np.random.Generator, generations: int) -> list[_Tube]:
    tubes: list[_Tube] = []
    scale = anatomy.lung_axes[0] / 50
    for side in (LungSide.RIGHT, LungSide.LEFT):
        cx = anatomy.lung_centres[side][0]
        for root_offset in (np.array([0, -8, 4]), np.array([0, 10, -6])):
            start = anatomy.hilum(side) + root_offset * scale
            frontier = [(start, np.array([np.sign(cx) * 0.8, 0.0, 0.0]), 4.2 * scale, 0)]
            while frontier:
                origin, heading, radius, generation = frontier.pop()
                length = (34 - 5 * generation) * scale * rng.uniform(0.8, 1.2)
                # vessels stay inside the lung: try a few directions, then shorter segments
                for attempt in range(12):
                    direction = heading + rng.normal(0, 0.45, 3)
                    direction /= np.linalg.norm(direction)
                    end = origin + direction * length * (0.5 if attempt >= 6 else 1.0)
                    if _inside_lung_clearance(anatomy, side, end) >= radius + 2.0:
                        break
                else:
                    continue  # no room left: this branch ends here
                tubes.append(_Tube(origin, end, max(radius, 0.6)))
                if generation + 1 < generations:
                    for _ in range(2):
                        frontier.append((end, direction, radius * 0.72, generation + 1))
    return tubes


def _inside_lung_clearance(anatomy: _Anatomy, side: LungSide, point: np.ndarray) -> float:
    value = anatomy.lung_signed_distance(
        side, np.array(point[2]), np.array(point[1]), np.array(point[0])
    )
    return -float(value)


_TOUCH_OVERLAP_MM = 0.4  # a juxtavascular nodule overlaps its vessel by this much


def _random_point(
    nodule: NoduleSpec, anatomy: _Anatomy, vessels: list[_Tube], rng: np.random.Generator
) -> tuple[np.ndarray, _Tube | None]:
    """A candidate centre: anywhere in the nodule's lung zone, or against a small vessel."""
    cx, cy = anatomy.lung_centres[nodule.side]
    ax, ay, _ = anatomy.lung_axes
    z_lo, z_hi = anatomy.zone_range(nodule.zone)
    z_lo, z_hi = z_lo + 4.0, z_hi - 4.0  # clear of the zone boundaries
    if not nodule.touching_vessel:
        point = np.array([cx + rng.uniform(-ax, ax), cy + rng.uniform(-ay, ay), 0.0])
        point[2] = rng.uniform(z_lo, z_hi)
        return point, None
    small = [
        t
        for t in vessels
        if 0.7 <= t.radius <= 1.6 and z_lo - 10 <= (t.start[2] + t.end[2]) / 2 <= z_hi + 10
    ]
    if not small:
        raise ValueError(
            f"no vessel of 0.7–1.6 mm radius in the {nodule.zone} zone to place a "
            "juxtavascular nodule on"
        )
    tube = small[int(rng.integers(len(small)))]
    axis = tube.end - tube.start
    along = tube.start + rng.uniform(0.25, 0.75) * axis
    normal = np.cross(axis, rng.normal(size=3))
    normal /= np.linalg.norm(normal)
    point = along + normal * (nodule.a_mm + tube.radius - _TOUCH_OVERLAP_MM)
    if not z_lo <= point[2] <= z_hi:
        point[0] = np.nan  # outside the requested zone: rejected by the caller
    return point, tube


def _place_nodules(
    spec: ChestCTSpec,
    anatomy: _Anatomy,
    vessels: list[_Tube],
    airways: list[_Tube],
    rng: np.random.Generator,
) -> list[tuple[NoduleSpec, np.ndarray, float]]:
    placed: list[tuple[NoduleSpec, np.ndarray, float]] = []
    for nodule in spec.nodules:
        reach = nodule.a_mm if nodule.a_mm > nodule.c_mm else nodule.c_mm
        for _attempt in range(20000):
            point, touched = _random_point(nodule, anatomy, vessels, rng)
            if np.isnan(point).any():
                continue
            pleura = 4.0 if touched is None else 1.0  # small vessels run out to the pleura
            if _inside_lung_clearance(anatomy, nodule.side, point) < reach + pleura:
                continue
            margin = 3.5 if touched is None else 1.0  # a touched vessel's neighbours are near
            if any(
                _segment_point_distance(t, point) < reach + t.radius + margin
                for t in vessels + airways
                if t is not touched
            ):
                continue
            if any(
                np.linalg.norm(point - other) < reach + max(o.a_mm, o.c_mm) + 6
                for o, other, _ in placed
            ):
                continue
            placed.append((nodule, point, float(rng.uniform(0, math.pi))))
            break
        else:
            raise ValueError(
                f"cannot place a {2 * nodule.a_mm:.0f} mm nodule in the {nodule.side} "
                f"{nodule.zone} zone clear of other structures; use fewer or smaller nodules"
            )
    return placed


def _ellipsoid_signed_distance(
    a: float, b: float, c: float, angle: float, centre: np.ndarray, z, y, x
) -> np.ndarray:
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    q = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (dz / c) ** 2)
    # first-order distance: (q - 1) / |grad q| at the surface
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (dz / c**2) ** 2) / np.maximum(q, 1e-6)
    return (q - 1.0) / np.maximum(grad, 1e-6)


def make_chest_ct(spec: ChestCTSpec) -> ChestCT:
    """Draw the phantom in memory (no files)."""
    rng = np.random.default_rng(spec.seed)
    geometry = SliceGeometry.centred_axial(
        spec.shape, (spec.pixel_spacing_mm, spec.pixel_spacing_mm), spec.slice_spacing_mm
    )
    grid = _Grid(spec, geometry)
    z_min = geometry.origin[2]
    z_max = z_min + (spec.shape[0] - 1) * spec.slice_spacing_mm
    anatomy = _Anatomy.for_spec(spec, z_min, z_max)
    volume = np.full(spec.shape, AIR_HU, dtype=np.float32)
    lungs = {side: np.zeros(spec.shape, dtype=bool) for side in LungSide}
    vessels = np.zeros(spec.shape, dtype=bool)
    airways = np.zeros(spec.shape, dtype=bool)

    # Body, subcutaneous fat, spine and ribs: constant along z, drawn once per slice plane.
    y = grid.origin[1] + np.arange(spec.shape[1])[:, None] * grid.spacing[1]
    x = grid.origin[0] + np.arange(spec.shape[2])[None, :] * grid.spacing[2]
    ellipse = np.sqrt((x / anatomy.body_a) ** 2 + (y / anatomy.body_b) ** 2)
    body = grid.coverage((ellipse - 1) * anatomy.body_b)
    muscle = grid.coverage((ellipse - 0.93) * anatomy.body_b)
    plane = AIR_HU + body * (FAT_HU - AIR_HU)
    plane += muscle * (SOFT_TISSUE_HU - plane)
    spine_r = 0.16 * anatomy.body_b
    spine = grid.coverage(np.hypot(x, y - 0.72 * anatomy.body_b) - spine_r)
    plane += spine * (BONE_HU * 0.6 - plane)
    rib_ring = grid.coverage(np.abs(ellipse - 0.885) * anatomy.body_b - 0.025 * anatomy.body_b)
    rib_ring *= (y > -0.7 * anatomy.body_b).astype(np.float32)
    rib_period = 22 * anatomy.body_b / 115
    angle = np.arctan2(y, x)
    z_centres = grid.origin[2] + np.arange(spec.shape[0]) * grid.spacing[0]
    for k, z in enumerate(z_centres):
        volume[k] = plane
        if (z % rib_period) < 0.4 * rib_period:
            # ribs run obliquely, so a slice cuts them as separate arcs that shift with z
            arcs = np.cos(9 * angle + math.pi * z / rib_period) > -0.2
            volume[k] += rib_ring * arcs * (BONE_HU - volume[k])

    # Lungs: parenchyma with a gentle gradient (dependent lung is denser).
    for side in LungSide:
        cx, cy = anatomy.lung_centres[side]
        ax, ay, az = anatomy.lung_axes
        boxed = grid.box(
            np.array([cx - ax, cy - ay, anatomy.lung_z - az]),
            np.array([cx + ax, cy + ay, anatomy.lung_z + az]),
        )
        assert boxed is not None
        region, zz, yy, xx = boxed
        distance = anatomy.lung_signed_distance(side, zz, yy, xx)
        fraction = grid.coverage(distance)
        parenchyma = LUNG_HU + 25 * (yy - cy) / ay
        sub = volume[region]
        sub += fraction.astype(np.float32) * (parenchyma - sub).astype(np.float32)
        lungs[side][region] = distance <= 0

    def draw_tubes(tubes: list[_Tube], hu: float, wall: float | None, mask: np.ndarray) -> None:
        outer_extra = wall or 0.0
        for tube in tubes:
            reach = tube.radius + outer_extra + 2 * grid.voxel
            boxed = grid.box(
                np.minimum(tube.start, tube.end) - reach, np.maximum(tube.start, tube.end) + reach
            )
            if boxed is None:
                continue
            region, zz, yy, xx = boxed
            distance = _tube_distance(tube, zz, yy, xx)
            if wall is not None:
                _paint(volume, region, grid.coverage(distance - tube.radius - wall), SOFT_TISSUE_HU)
            _paint(volume, region, grid.coverage(distance - tube.radius), hu)
            mask[region] |= distance <= tube.radius + outer_extra

    airway_tubes = _airway_tree(anatomy, z_max)
    vessel_tubes = _vessel_tree(anatomy, rng, spec.vessel_generations)
    draw_tubes(vessel_tubes, BLOOD_HU, None, vessels)
    draw_tubes(airway_tubes, AIR_HU, anatomy.wall_mm, airways)
    vessels &= lungs[LungSide.RIGHT] | lungs[LungSide.LEFT]

    truths = []
    for nodule, centre, angle in _place_nodules(spec, anatomy, vessel_tubes, airway_tubes, rng):
        reach = max(nodule.a_mm, nodule.c_mm) + 2 * grid.voxel
        boxed = grid.box(centre - reach, centre + reach)
        assert boxed is not None
        region, zz, yy, xx = boxed
        outer = _ellipsoid_signed_distance(
            nodule.a_mm, nodule.b_mm, nodule.c_mm, angle, centre, zz, yy, xx
        )
        if nodule.kind is NoduleKind.SOLID:
            _paint(volume, region, grid.coverage(outer), SOLID_NODULE_HU)
        else:
            _paint(volume, region, grid.coverage(outer), GROUND_GLASS_HU)
            f = nodule.core_fraction
            core = _ellipsoid_signed_distance(
                f * nodule.a_mm, f * nodule.b_mm, f * nodule.c_mm, angle, centre, zz, yy, xx
            )
            _paint(volume, region, grid.coverage(core), SOLID_NODULE_HU)
        truths.append(
            NoduleTruth(
                spec=nodule,
                centre_mm=tuple(float(v) for v in centre),
                centre_voxel=tuple(float(v) for v in grid.index_of(centre)),
                axial_angle_rad=angle,
            )
        )

    # Scanner point spread function, then quantum noise.
    sigma_voxels = tuple(0.45 * grid.voxel / s for s in grid.spacing)
    volume = ndimage.gaussian_filter(volume, sigma_voxels, output=np.float32)
    volume += rng.normal(0.0, spec.noise_hu, size=spec.shape).astype(np.float32)
    return ChestCT(
        hounsfield=volume,
        geometry=geometry,
        nodules=tuple(truths),
        right_lung=lungs[LungSide.RIGHT],
        left_lung=lungs[LungSide.LEFT],
        vessels=vessels,
        airways=airways,
        spec=spec,
    )


def write_chest_ct(
    directory: Path, spec: ChestCTSpec, uid_seed: str | None = None
) -> tuple[ChestCT, list[Path]]:
    """Draw the phantom and write it as a CT series (body part CHEST); returns both."""
    phantom = make_chest_ct(spec)
    seed = uid_seed or f"ainode-chest-ct-{spec.shape}-{spec.seed}"
    study = StudyIdentity.from_seed(
        seed,
        patient_id=f"PHANTOM-CT-{spec.seed:04d}",
        patient_name="Phantom^Chest CT",
        study_description="CT CHEST LOW DOSE SCREENING",
        accession_number=f"PHCT{spec.seed:04d}",
    )
    series = SeriesIdentity.from_seed(
        seed,
        Modality.CT,
        body_part_examined="CHEST",
        series_description="Lung 1.0 mm",
        protocol_name="Chest screening",
    )
    paths = write_ct_series(
        directory,
        phantom.hounsfield,
        phantom.geometry,
        study,
        series,
        CTAcquisition(kvp=120, exposure_mas=40, convolution_kernel="LUNG"),
    )
    return phantom, paths
