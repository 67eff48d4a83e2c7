"""mr-vessel-wall: carotid lumen and wall on black-blood neck MR, via the TorchScript model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.sr.codedict import codes
from scipy import ndimage

from models.api import (
    AlgorithmIdentification,
    Code,
    Device,
    Finding,
    Findings,
    GraphicKind,
    ImageGraphic,
    Measurement,
    PluginInput,
    QualitativeEvaluation,
    Report,
    Segment,
)
from models.graphics import outline
from models.runners.torchscript import TorchScriptRunner

from .carotids import CarotidSide, LumenDetection, find_lumens

__all__ = ["NORMALISED_WALL_INDEX", "CarotidMeasurements", "MrVesselWallPlugin"]

PATCH_RADIUS_MM = 12.0
PLAQUE_THICKNESS_MM = 1.5  # maximum wall thickness at or above which plaque is reported
MILLIMETRE = codes.UCUM.Millimeter
SQUARE_MILLIMETRE = codes.UCUM.SquareMillimeter
RATIO = codes.UCUM.Ratio
# No SNOMED CT or DCM concept exists for the normalised wall index (wall area over total
# vessel area); it is coded in this project's private scheme.
NORMALISED_WALL_INDEX = Code("NWI", "99AINODE", "Normalized wall index")

_ARTERY = {
    CarotidSide.RIGHT: codes.SCT.RightCommonCarotidArtery,
    CarotidSide.LEFT: codes.SCT.LeftCommonCarotidArtery,
}
_COLOURS = {"lumen": (200, 60, 60), "wall": (240, 200, 80)}


@dataclass(frozen=True)
class CarotidMeasurements:
    """One carotid's results over the slices where it was found."""

    side: CarotidSide
    slices: tuple[int, ...]  # frame indices (0-based) in order
    lumen_area_mm2: tuple[float, ...]  # per slice
    wall_area_mm2: tuple[float, ...]
    max_thickness_mm: tuple[float, ...]
    lumen_mask: np.ndarray  # bool, full input shape
    wall_mask: np.ndarray

    @property
    def mean_lumen_area_mm2(self) -> float:
        return float(np.mean(self.lumen_area_mm2))

    @property
    def mean_wall_area_mm2(self) -> float:
        return float(np.mean(self.wall_area_mm2))

    @property
    def max_wall_thickness_mm(self) -> float:
        return float(np.max(self.max_thickness_mm))

    @property
    def key_slice(self) -> int:
        """The frame where the wall is thickest: where its lines and outlines are drawn."""
        return self.slices[int(np.argmax(self.max_thickness_mm))]

    @property
    def normalised_wall_index(self) -> float:
        wall = float(np.sum(self.wall_area_mm2))
        return wall / (wall + float(np.sum(self.lumen_area_mm2)))


def thickest_wall_line(lumen: np.ndarray, wall: np.ndarray, frame: int) -> ImageGraphic | None:
    """The line across the wall where it is thickest on one slice: from the lumen's edge to
    the wall pixel farthest from the lumen, edge to edge (None without lumen or wall)."""
    if not lumen.any() or not wall.any():
        return None
    distance, nearest = ndimage.distance_transform_edt(~lumen, return_indices=True)
    outer = np.unravel_index(int(np.argmax(np.where(wall, distance, -1.0))), wall.shape)
    inner = np.array([nearest[0][outer], nearest[1][outer]], dtype=float)
    direction = np.asarray(outer, dtype=float) - inner
    length = float(np.linalg.norm(direction))
    if length == 0:
        return None
    shift = 0.5 * direction / length  # pixel centres to the lumen's and the wall's edges
    start, end = inner + shift, np.asarray(outer, dtype=float) + shift
    return ImageGraphic(frame, GraphicKind.LINE, (tuple(start), tuple(end)))


def _patient_left(series: PluginInput) -> int:
    if series.volume is not None:
        return 1 if float(series.volume.affine[0, 2]) >= 0 else -1
    if series.headers and "ImageOrientationPatient" in series.headers[0]:
        return 1 if float(series.headers[0].ImageOrientationPatient[0]) >= 0 else -1
    return 1


def _slice_spacing(series: PluginInput) -> float | None:
    """Distance between neighbouring slices, from the Volume or the slice positions; None
    when the series has neither (then no vessel length is reported)."""
    if series.volume is not None:
        return float(np.linalg.norm(np.asarray(series.volume.affine)[:3, 0]))
    positions = [h.get("ImagePositionPatient") for h in series.headers]
    if len(positions) != series.shape[0] or len(positions) < 2 or None in positions:
        return None
    steps = np.linalg.norm(np.diff(np.asarray(positions, dtype=float), axis=0), axis=1)
    return float(np.median(steps)) if np.all(steps > 0) else None


class MrVesselWallPlugin:
    """Finds each carotid's lumen per slice, then segments lumen and wall with the model."""

    def __init__(self, manifest: object) -> None:
        self.manifest = manifest
        self.name: str = manifest.name  # type: ignore[attr-defined]
        self.version: str = manifest.version  # type: ignore[attr-defined]
        self._runner: TorchScriptRunner | None = None

    def load(self, device: Device) -> None:
        self._runner = TorchScriptRunner(self.manifest.model_path, device)  # type: ignore[attr-defined]

    def measure(self, series: PluginInput) -> list[CarotidMeasurements]:
        """Both carotids' masks and per-slice measurements (sides not found are left out)."""
        if self._runner is None:
            raise RuntimeError("mr-vessel-wall: load(device) must be called before run")
        row_mm, col_mm = series.pixel_spacing
        if abs(row_mm - col_mm) > 0.01 * max(row_mm, col_mm):
            raise ValueError(
                f"mr-vessel-wall needs square pixels, got spacing {row_mm} × {col_mm} mm"
            )
        pixel_mm = (row_mm + col_mm) / 2
        frames = series.pixels
        lumens = find_lumens(frames, pixel_mm, _patient_left(series))
        half = int(np.ceil(PATCH_RADIUS_MM / pixel_mm))
        results = []
        for side in CarotidSide:
            detections = lumens[side]
            if not detections:
                continue
            patches, centres = self._patches(frames, detections, half)
            outputs = self._runner.run(patches, centres, np.asarray(pixel_mm, dtype=np.float32))
            lumen_patch, wall_patch, _inner, _outer, lumen_area, wall_area, thickness = outputs
            lumen_mask = np.zeros(frames.shape, dtype=bool)
            wall_mask = np.zeros(frames.shape, dtype=bool)
            for i, detection in enumerate(detections):
                self._paste(lumen_mask, lumen_patch[i], detection, half)
                self._paste(wall_mask, wall_patch[i], detection, half)
            results.append(
                CarotidMeasurements(
                    side=side,
                    slices=tuple(d.slice_index for d in detections),
                    lumen_area_mm2=tuple(float(v) for v in lumen_area),
                    wall_area_mm2=tuple(float(v) for v in wall_area),
                    max_thickness_mm=tuple(float(v) for v in thickness),
                    lumen_mask=lumen_mask,
                    wall_mask=wall_mask,
                )
            )
        return results

    @staticmethod
    def _patches(
        frames: np.ndarray, detections: list[LumenDetection], half: int
    ) -> tuple[np.ndarray, np.ndarray]:
        size = 2 * half + 1
        padded = np.pad(frames, ((0, 0), (half, half), (half, half)), mode="edge")
        patches = np.empty((len(detections), size, size), dtype=np.float32)
        centres = np.empty((len(detections), 2), dtype=np.float32)
        for i, detection in enumerate(detections):
            row, col = (round(c) for c in detection.centre)
            patches[i] = padded[detection.slice_index, row : row + size, col : col + size]
            centres[i] = (detection.centre[0] - row + half, detection.centre[1] - col + half)
        return patches, centres

    @staticmethod
    def _paste(mask: np.ndarray, patch: np.ndarray, detection: LumenDetection, half: int) -> None:
        rows, cols = mask.shape[1:]
        row, col = (round(c) for c in detection.centre)
        top, left = row - half, col - half
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(top + patch.shape[0], rows), min(left + patch.shape[1], cols)
        mask[detection.slice_index, r0:r1, c0:c1] |= patch[
            r0 - top : r1 - top, c0 - left : c1 - left
        ]

    def run(self, series: PluginInput) -> Findings:
        if series.modality != "MR":
            raise ValueError(f"mr-vessel-wall takes MR series, got {series.modality}")
        carotids = self.measure(series)
        spacing = _slice_spacing(series)
        segments: list[Segment] = []
        findings: list[Finding] = []
        lines = []
        for carotid in carotids:
            side, artery = carotid.side, _ARTERY[carotid.side]
            name = f"{side.capitalize()} carotid"
            segments += [
                Segment(
                    key=f"{side}-lumen",
                    label=f"{name} lumen",
                    category=codes.SCT.AnatomicalStructure,
                    type=codes.SCT.LumenOfArtery,
                    mask=carotid.lumen_mask,
                    anatomic_site=artery,
                    color_rgb=_COLOURS["lumen"],
                ),
                Segment(
                    key=f"{side}-wall",
                    label=f"{name} wall",
                    category=codes.SCT.AnatomicalStructure,
                    type=codes.SCT.Wall,
                    mask=carotid.wall_mask,
                    anatomic_site=artery,
                    color_rgb=_COLOURS["wall"],
                ),
            ]
            plaque = carotid.max_wall_thickness_mm >= PLAQUE_THICKNESS_MM
            key = carotid.key_slice
            lumen_outline = outline(carotid.lumen_mask[key], key)
            thickest = thickest_wall_line(carotid.lumen_mask[key], carotid.wall_mask[key], key)
            wall_measurements = [
                Measurement(
                    codes.SCT.Area, round(carotid.mean_wall_area_mm2, 2), SQUARE_MILLIMETRE
                ),
                Measurement(
                    codes.DCM.WallThickness,
                    round(carotid.max_wall_thickness_mm, 2),
                    MILLIMETRE,
                    thickest,
                ),
                Measurement(NORMALISED_WALL_INDEX, round(carotid.normalised_wall_index, 4), RATIO),
            ]
            if spacing is not None:
                wall_measurements.append(
                    Measurement(
                        codes.SCT.LengthOfVesselSegment,
                        round(len(carotid.slices) * spacing, 2),
                        MILLIMETRE,
                    )
                )
            findings += [
                Finding(
                    tracking_id=f"{name} lumen",
                    finding_type=codes.SCT.LumenOfArtery,
                    finding_site=artery,
                    segment_key=f"{side}-lumen",
                    measurements=(
                        Measurement(
                            codes.SCT.VesselLumenCrossSectionalArea,
                            round(carotid.mean_lumen_area_mm2, 2),
                            SQUARE_MILLIMETRE,
                            lumen_outline,
                        ),
                    ),
                ),
                Finding(
                    tracking_id=f"{name} wall",
                    finding_type=codes.SCT.Wall,
                    finding_site=artery,
                    segment_key=f"{side}-wall",
                    measurements=tuple(wall_measurements),
                    evaluations=(
                        QualitativeEvaluation(
                            codes.SCT.Plaque, codes.SCT.Present if plaque else codes.SCT.Absent
                        ),
                    ),
                ),
            ]
            first, last = carotid.slices[0] + 1, carotid.slices[-1] + 1
            lines.append(
                f"{name} (slices {first}–{last}): mean lumen area "
                f"{carotid.mean_lumen_area_mm2:.1f} mm², mean wall area "
                f"{carotid.mean_wall_area_mm2:.1f} mm², maximum wall thickness "
                f"{carotid.max_wall_thickness_mm:.2f} mm, normalised wall index "
                f"{carotid.normalised_wall_index:.2f}"
                + (" — wall thickening consistent with plaque." if plaque else ".")
            )
        found = codes.SCT.Present if carotids else codes.SCT.Absent
        if carotids:
            thick = [c for c in carotids if c.max_wall_thickness_mm >= PLAQUE_THICKNESS_MM]
            impression = (
                "Carotid wall thickening (≥ 1.5 mm) on the "
                + " and ".join(c.side for c in thick)
                + " side."
                if thick
                else "No carotid wall thickening ≥ 1.5 mm."
            )
            report = Report(findings="\n".join(lines), impression=impression)
        else:
            report = Report(
                findings="No carotid artery lumen with a vessel wall was found in this series.",
                impression="No carotid vessel-wall finding (no carotid artery in the series).",
            )
        return Findings(
            algorithm=AlgorithmIdentification(name=self.name, version=self.version),
            segments=tuple(segments),
            findings=tuple(findings),
            study_evaluations=(QualitativeEvaluation(codes.SCT.CarotidArtery, found),),
            report=report,
        )
