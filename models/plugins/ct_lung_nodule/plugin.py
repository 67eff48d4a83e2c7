"""ct-lung-nodule: the plugin wrapper that turns ``nodules.analyse_chest_ct`` into Findings.

Every mask is a ``MaskBox``: a nodule's box is a few thousand voxels where a full-volume mask
of a 300-slice CT is 78 MB, and a job holds up to 13 of them (bench/README.md)."""

from __future__ import annotations

import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from models.api import (
    AlgorithmIdentification,
    Device,
    Finding,
    Findings,
    GraphicKind,
    ImageGraphic,
    MaskBox,
    Measurement,
    PluginInput,
    QualitativeEvaluation,
    Report,
    Segment,
)

from .lungs import LungSide, LungZone, VolumeFrame
from .nodule_measurement import Line, MeasuredNodule, NoduleKind
from .nodules import LungAnalysis
from .nodules import analyse_chest_ct as analyse

__all__ = ["CtLungNodulePlugin", "volume_frame"]

MILLIMETRE = codes.UCUM.Millimeter
CUBIC_MILLIMETRE = codes.UCUM.CubicMillimeter
HOUNSFIELD = codes.UCUM.HounsfieldUnit
NO_UNITS = codes.UCUM.NoUnits
MEAN_ATTENUATION = codes.DCM.MeanAttenuationCoefficient
LATERALITY = codes.SCT.Laterality
LONG_AXIS = codes.SCT.LongAxis
SHORT_AXIS = codes.SCT.ShortAxis
GROUND_GLASS = codes.DCM.GroundGlassOpacity
# No standard code says "this finding may continue outside the images": a local code, named
# in the SR's Coding Scheme Identification, rather than a borrowed one.
AT_SCAN_EDGE = Code("SCAN-EDGE", "99AINODE", "Extends to the edge of the scanned range")
EDGE_NOTE = "may extend beyond the scanned range; the volume is a lower bound"

_SIDE_CODES = {LungSide.RIGHT: codes.SCT.Right, LungSide.LEFT: codes.SCT.Left}
_ZONE_CODES = {
    LungZone.UPPER: codes.SCT.UpperZoneOfLung,
    LungZone.MIDDLE: codes.SCT.MiddleZoneOfLung,
    LungZone.LOWER: codes.SCT.LowerZoneOfLung,
}
_LUNG_COLOURS = {LungSide.RIGHT: (128, 174, 128), LungSide.LEFT: (111, 184, 210)}
# warm hues, none near the lungs' green and blue, so a reader tells nodules apart on a slice
_NODULE_COLOURS = (
    (230, 80, 60),
    (255, 165, 0),
    (220, 60, 200),
    (255, 225, 40),
    (160, 90, 255),
    (255, 120, 160),
)


def volume_frame(series: PluginInput) -> VolumeFrame:
    """Spacing and patient directions of the input, from its Volume or its slice headers."""
    if series.volume is not None:
        return VolumeFrame.from_affine(series.volume.affine)
    headers = series.headers
    if len(headers) != series.shape[0] or not all(
        "ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers
    ):
        raise ValueError(
            "ct-lung-nodule needs the slice geometry: a Volume, or one header with "
            "ImagePositionPatient/ImageOrientationPatient per frame"
        )
    orientation = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    along = positions @ normal
    steps = np.diff(along)
    if steps.size == 0 or np.any(steps == 0) or np.any(np.sign(steps) != np.sign(steps[0])):
        raise ValueError("ct-lung-nodule needs slices in position order with distinct positions")
    slice_direction = normal * np.sign(steps[0])
    return VolumeFrame(
        spacing_mm=(float(np.median(np.abs(steps))), *series.pixel_spacing),
        superior=1 if slice_direction[2] >= 0 else -1,
        patient_left=1 if orientation[0] >= 0 else -1,
    )


def _describe(number: int, nodule: MeasuredNodule) -> str:
    kind = "part-solid" if nodule.kind is NoduleKind.PART_SOLID else "solid"
    volume = f"{'at least ' if nodule.at_scan_edge else ''}{nodule.volume_mm3:.0f} mm³"
    edge = f" It reaches the edge of the scanned range: it {EDGE_NOTE}." * nodule.at_scan_edge
    return (
        f"Nodule {number}: {kind}, {nodule.side} lung, {nodule.zone} zone, "
        f"{nodule.long_axis_mm:.1f} × {nodule.short_axis_mm:.1f} mm, "
        f"volume {volume}, mean {nodule.mean_hu:.0f} HU.{edge}"
    )


def _axis(nodule: MeasuredNodule, concept: Code, value: float, line: Line) -> Measurement:
    """A diameter with the line it was measured along, on the nodule's key slice."""
    graphic = ImageGraphic(nodule.key_slice, GraphicKind.LINE, line)
    return Measurement(concept, round(value, 2), MILLIMETRE, graphic=graphic)


def _evaluations(nodule: MeasuredNodule) -> tuple[QualitativeEvaluation, ...]:
    ground_glass = codes.SCT.Present if nodule.kind is NoduleKind.PART_SOLID else codes.SCT.Absent
    evaluations = (
        QualitativeEvaluation(LATERALITY, _SIDE_CODES[nodule.side]),
        QualitativeEvaluation(GROUND_GLASS, ground_glass),
    )
    if nodule.at_scan_edge:
        evaluations += (QualitativeEvaluation(AT_SCAN_EDGE, codes.SCT.Present),)
    return evaluations


def _report(analysis: LungAnalysis) -> Report:
    if not analysis.lungs:
        return Report(
            findings="No aerated lung was found in this series.",
            impression="No lung nodule assessment possible: no lungs in the series.",
        )
    if not analysis.nodules:
        return Report(
            findings="Both lungs segmented. No lung nodule detected.",
            impression="No lung nodule detected.",
        )
    lines = [_describe(i, n) for i, n in enumerate(analysis.nodules, start=1)]
    largest = max(analysis.nodules, key=lambda n: n.mean_diameter_mm)
    count = len(analysis.nodules)
    impression = (
        f"{count} lung nodule{'s' if count > 1 else ''} detected; the largest is "
        f"{largest.mean_diameter_mm:.1f} mm mean diameter ({largest.kind}, "
        f"{largest.side} {largest.zone} zone)."
    )
    return Report(findings="\n".join(lines), impression=impression)


class CtLungNodulePlugin:
    """Threshold-and-morphology lung nodule detector; no model file, runs on the CPU."""

    def __init__(self, manifest: object) -> None:
        self.manifest = manifest
        self.name: str = manifest.name  # type: ignore[attr-defined]
        self.version: str = manifest.version  # type: ignore[attr-defined]

    def load(self, device: Device) -> None:
        """Nothing to load: the algorithm is numpy/scipy code and always runs on the CPU."""

    def run(self, series: PluginInput) -> Findings:
        if series.modality != "CT":
            raise ValueError(f"ct-lung-nodule takes CT series, got {series.modality}")
        analysis = analyse(series.pixels, volume_frame(series))
        segments: list[Segment] = []
        for side in (LungSide.RIGHT, LungSide.LEFT):
            if side in analysis.lungs:
                segments.append(
                    Segment(
                        key=f"{side}-lung",
                        label=f"{side.capitalize()} lung",
                        category=codes.SCT.AnatomicalStructure,
                        type=codes.SCT.Lung,
                        mask=MaskBox.around(analysis.lungs[side]),
                        color_rgb=_LUNG_COLOURS[side],
                    )
                )
        findings: list[Finding] = []
        for number, nodule in enumerate(analysis.nodules, start=1):
            key = f"nodule-{number}"
            segments.append(
                Segment(
                    key=key,
                    label=f"Nodule {number}",
                    category=codes.SCT.MorphologicallyAbnormalStructure,
                    type=codes.SCT.Nodule,
                    mask=nodule.mask,
                    anatomic_site=codes.SCT.Lung,
                    color_rgb=_NODULE_COLOURS[(number - 1) % len(_NODULE_COLOURS)],
                )
            )
            findings.append(
                Finding(
                    tracking_id=f"Nodule {number}",
                    finding_type=codes.SCT.Nodule,
                    finding_site=_ZONE_CODES[nodule.zone],
                    segment_key=key,
                    measurements=(
                        _axis(nodule, LONG_AXIS, nodule.long_axis_mm, nodule.long_axis_line),
                        _axis(nodule, SHORT_AXIS, nodule.short_axis_mm, nodule.short_axis_line),
                        Measurement(
                            codes.SCT.Volume, round(nodule.volume_mm3, 1), CUBIC_MILLIMETRE
                        ),
                        Measurement(MEAN_ATTENUATION, round(nodule.mean_hu, 1), HOUNSFIELD),
                    ),
                    evaluations=_evaluations(nodule),
                )
            )
        present = codes.SCT.Present if analysis.nodules else codes.SCT.Absent
        return Findings(
            algorithm=AlgorithmIdentification(name=self.name, version=self.version),
            segments=tuple(segments),
            findings=tuple(findings),
            study_measurements=(
                Measurement(codes.SCT.NumberOfLesions, float(len(analysis.nodules)), NO_UNITS),
            ),
            study_evaluations=(QualitativeEvaluation(codes.SCT.Nodule, present),),
            report=_report(analysis),
        )
