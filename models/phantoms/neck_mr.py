"""A black-blood axial neck MR phantom: both common carotids with lumen, wall and plaque.

Each carotid is drawn slice by slice as a dark (flow-suppressed) circular lumen inside an
outer wall circle whose centre is offset from the lumen's: the wall is thinnest on one side and
thickest on the other, an eccentric plaque that grows and recedes along the vessel. Because
both boundaries are circles the ground truth is analytic per slice: lumen area ``π r_l²``,
wall area ``π (r_o² − r_l²)``, maximum wall thickness ``r_o − r_l + e`` (``e`` the offset)
and normalised wall index ``wall / (wall + lumen)``. Around the carotids lie the things a
detector must not mistake for them: the jugular veins (dark, thin-walled, oval), the airway,
the spine and neck muscle and fat. Partial-volume edges, a small point-spread blur and Rician
noise complete the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from scipy import ndimage

from models.phantoms.dicom_series import (
    Modality,
    MRAcquisition,
    SeriesIdentity,
    SliceGeometry,
    StudyIdentity,
    write_mr_series,
)

__all__ = [
    "CarotidSide",
    "CarotidSliceTruth",
    "CarotidSpec",
    "NeckMR",
    "NeckMRSpec",
    "make_neck_mr",
    "write_neck_mr",
]

LUMEN_SIGNAL = 40.0
WALL_SIGNAL = 520.0
PLAQUE_SIGNAL = 470.0
MUSCLE_SIGNAL = 260.0
FAT_SIGNAL = 120.0  # fat-suppressed
AIR_SIGNAL = 5.0
BONE_SIGNAL = 330.0


class CarotidSide(StrEnum):
    RIGHT = "right"
    LEFT = "left"


@dataclass(frozen=True)
class CarotidSpec:
    """One carotid: lumen radius, minimum wall thickness and an eccentric plaque (mm)."""

    lumen_radius_mm: float = 3.2
    wall_thickness_mm: float = 1.1
    plaque_max_offset_mm: float = 1.2  # e at the plaque's peak; max thickness = wall + 2e
    plaque_angle_rad: float = 0.0  # direction (in the image plane) of the thickest wall
    plaque_centre_fraction: float = 0.5  # where along the slab the plaque peaks
    plaque_length_fraction: float = 0.6

    def __post_init__(self) -> None:
        if self.lumen_radius_mm <= 1 or self.wall_thickness_mm <= 0.3:
            raise ValueError("lumen radius must be > 1 mm and wall thickness > 0.3 mm")
        if self.plaque_max_offset_mm < 0:
            raise ValueError("plaque offset must be >= 0")

    def offset_at(self, fraction: float) -> float:
        """Plaque offset ``e`` at a relative position along the slab (smooth bump)."""
        half = self.plaque_length_fraction / 2
        u = (fraction - self.plaque_centre_fraction) / half
        return self.plaque_max_offset_mm * (math.cos(u * math.pi / 2) ** 2 if abs(u) < 1 else 0.0)


@dataclass(frozen=True)
class CarotidSliceTruth:
    side: CarotidSide
    slice_index: int
    lumen_centre_voxel: tuple[float, float]  # (row, column)
    lumen_radius_mm: float
    outer_radius_mm: float
    offset_mm: float

    @property
    def lumen_area_mm2(self) -> float:
        return math.pi * self.lumen_radius_mm**2

    @property
    def wall_area_mm2(self) -> float:
        return math.pi * (self.outer_radius_mm**2 - self.lumen_radius_mm**2)

    @property
    def max_wall_thickness_mm(self) -> float:
        return self.outer_radius_mm - self.lumen_radius_mm + self.offset_mm

    @property
    def normalised_wall_index(self) -> float:
        return self.wall_area_mm2 / (self.wall_area_mm2 + self.lumen_area_mm2)


@dataclass(frozen=True)
class NeckMRSpec:
    shape: tuple[int, int, int]  # (slices, rows, columns)
    pixel_spacing_mm: float
    slice_spacing_mm: float
    right: CarotidSpec = CarotidSpec(plaque_angle_rad=2.4)
    left: CarotidSpec = CarotidSpec(
        lumen_radius_mm=3.0,
        wall_thickness_mm=1.0,
        plaque_max_offset_mm=0.5,
        plaque_angle_rad=-0.6,
        plaque_centre_fraction=0.4,
    )
    noise_sigma: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.shape[1:]) < 96 or self.shape[0] < 1:
            raise ValueError(f"neck phantom shape {self.shape} is too small")

    @property
    def field_of_view_mm(self) -> float:
        return self.shape[2] * self.pixel_spacing_mm

    @classmethod
    def large(cls, seed: int = 0) -> NeckMRSpec:
        """Vessel-wall protocol size: 40 slices of 2 mm, 384×384 at 0.4 mm (154 mm FOV)."""
        return cls(shape=(40, 384, 384), pixel_spacing_mm=0.4, slice_spacing_mm=2.0, seed=seed)

    @classmethod
    def small(cls, seed: int = 0) -> NeckMRSpec:
        """A fast test case: 10 slices of 2 mm, 256×256 at 0.45 mm (115 mm FOV)."""
        return cls(shape=(10, 256, 256), pixel_spacing_mm=0.45, slice_spacing_mm=2.0, seed=seed)


@dataclass(frozen=True)
class NeckMR:
    intensities: np.ndarray  # float32 (slices, rows, columns), slice 0 most inferior
    geometry: SliceGeometry
    truth: tuple[CarotidSliceTruth, ...]
    lumen: dict[CarotidSide, np.ndarray] = field(repr=False)  # side -> bool mask
    wall: dict[CarotidSide, np.ndarray] = field(repr=False)
    spec: NeckMRSpec = field(repr=False)

    def side_truth(self, side: CarotidSide) -> tuple[CarotidSliceTruth, ...]:
        return tuple(t for t in self.truth if t.side == side)


def _coverage(signed_distance_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    return np.clip(0.5 - signed_distance_mm / voxel_mm, 0.0, 1.0)


def _paint(plane: np.ndarray, fraction: np.ndarray, value: float) -> None:
    plane += fraction * (value - plane)


def make_neck_mr(spec: NeckMRSpec) -> NeckMR:
    """Draw the phantom in memory (no files)."""
    rng = np.random.default_rng(spec.seed)
    frames, rows, cols = spec.shape
    px = spec.pixel_spacing_mm
    geometry = SliceGeometry.centred_axial(spec.shape, (px, px), spec.slice_spacing_mm)
    scale = spec.field_of_view_mm / 154.0
    y = (np.arange(rows)[:, None] - (rows - 1) / 2) * px  # + posterior
    x = (np.arange(cols)[None, :] - (cols - 1) / 2) * px  # + patient left
    neck_a, neck_b = 62 * scale, 52 * scale
    neck = np.sqrt((x / neck_a) ** 2 + (y / neck_b) ** 2)
    base = np.full((rows, cols), AIR_SIGNAL)
    _paint(base, _coverage((neck - 1) * neck_b, px), FAT_SIGNAL)
    _paint(base, _coverage((neck - 0.9) * neck_b, px), MUSCLE_SIGNAL)
    _paint(base, _coverage(np.hypot(x, y + 22 * scale) - 8 * scale, px), AIR_SIGNAL)  # airway
    _paint(base, _coverage(np.hypot(x, y - 18 * scale) - 12 * scale, px), BONE_SIGNAL)  # spine
    specs = {CarotidSide.RIGHT: spec.right, CarotidSide.LEFT: spec.left}
    # Carotids sit anterolateral to the spine; patient right is -x (image left).
    centres = {
        CarotidSide.RIGHT: (-24 * scale, -4 * scale),
        CarotidSide.LEFT: (24 * scale, -4 * scale),
    }
    volume = np.empty(spec.shape, dtype=np.float32)
    lumen_masks = {side: np.zeros(spec.shape, dtype=bool) for side in CarotidSide}
    wall_masks = {side: np.zeros(spec.shape, dtype=bool) for side in CarotidSide}
    truths: list[CarotidSliceTruth] = []
    drift = rng.uniform(-0.04, 0.04, size=(2, 2))  # vessels run slightly obliquely (mm/mm)
    for k in range(frames):
        plane = base.copy()
        fraction = (k + 0.5) / frames
        z = k * spec.slice_spacing_mm
        for index, side in enumerate(CarotidSide):
            carotid = specs[side]
            cx = centres[side][0] + drift[index, 0] * z
            cy = centres[side][1] + drift[index, 1] * z
            # jugular vein: lateral and slightly posterior, dark, oval, thin wall
            jx, jy = cx + np.sign(cx) * 14.5, cy + 2.0
            jugular = np.sqrt(((x - jx) / 5.0) ** 2 + ((y - jy) / 3.5) ** 2)
            _paint(plane, _coverage((jugular - 1) * 3.5 - 0.35, px), MUSCLE_SIGNAL + 80)
            _paint(plane, _coverage((jugular - 1) * 3.5, px), LUMEN_SIGNAL)
            e = carotid.offset_at(fraction)
            r_l = carotid.lumen_radius_mm
            r_o = r_l + carotid.wall_thickness_mm + e
            ox = cx + e * math.cos(carotid.plaque_angle_rad)
            oy = cy + e * math.sin(carotid.plaque_angle_rad)
            outer_distance = np.hypot(x - ox, y - oy) - r_o
            lumen_distance = np.hypot(x - cx, y - cy) - r_l
            # plaque signal where the wall is thicker than its baseline
            thick_side = np.cos(np.arctan2(y - cy, x - cx) - carotid.plaque_angle_rad) > 0.3
            wall_value = np.where(thick_side & (e > 0.2), PLAQUE_SIGNAL, WALL_SIGNAL)
            outer = _coverage(outer_distance, px)
            plane += outer * (wall_value - plane)
            _paint(plane, _coverage(lumen_distance, px), LUMEN_SIGNAL)
            lumen_masks[side][k] = lumen_distance <= 0
            wall_masks[side][k] = (outer_distance <= 0) & (lumen_distance > 0)
            truths.append(
                CarotidSliceTruth(
                    side=side,
                    slice_index=k,
                    lumen_centre_voxel=(cy / px + (rows - 1) / 2, cx / px + (cols - 1) / 2),
                    lumen_radius_mm=r_l,
                    outer_radius_mm=r_o,
                    offset_mm=e,
                )
            )
        blurred = ndimage.gaussian_filter(plane, 0.25 / px)
        # Rician noise: magnitude of a complex signal with Gaussian noise in both channels
        real = blurred + rng.normal(0, spec.noise_sigma, blurred.shape)
        imaginary = rng.normal(0, spec.noise_sigma, blurred.shape)
        volume[k] = np.hypot(real, imaginary)
    return NeckMR(
        intensities=volume,
        geometry=geometry,
        truth=tuple(truths),
        lumen=lumen_masks,
        wall=wall_masks,
        spec=spec,
    )


def write_neck_mr(
    directory: Path, spec: NeckMRSpec, uid_seed: str | None = None
) -> tuple[NeckMR, list[Path]]:
    """Draw the phantom and write it as an MR series (body part NECK); returns both."""
    phantom = make_neck_mr(spec)
    seed = uid_seed or f"ainode-neck-mr-{spec.shape}-{spec.seed}"
    study = StudyIdentity.from_seed(
        seed,
        patient_id=f"PHANTOM-MR-{spec.seed:04d}",
        patient_name="Phantom^Neck MR",
        study_description="MR CAROTID VESSEL WALL",
        accession_number=f"PHMR{spec.seed:04d}",
        patient_sex="M",
    )
    series = SeriesIdentity.from_seed(
        seed,
        Modality.MR,
        body_part_examined="NECK",
        series_description="T1 BB TSE FS axial",
        protocol_name="Carotid vessel wall",
        image_type=("ORIGINAL", "PRIMARY", "OTHER"),
    )
    paths = write_mr_series(
        directory, phantom.intensities, phantom.geometry, study, series, MRAcquisition()
    )
    return phantom, paths
