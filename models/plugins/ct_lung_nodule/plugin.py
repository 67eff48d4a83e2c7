"""ct-lung-nodule: the plugin wrapper that turns ``nodules.analyse_chest_ct`` into Findings."""

from __future__ import annotations

import numpy as np
from pydicom.sr.codedict import codes

from models.api import (
    AlgorithmIdentification,
    Device,
    Finding,
    Findings,
    Measurement,
    PluginInput,
    QualitativeEvaluation,
    Report,
    Segment,
)

from .nodules import LungAnalysis, LungSide, LungZone, MeasuredNodule, NoduleKind, VolumeFrame
from .nodules import analyse_chest_ct as analyse

__all__ = ["CtLungNodulePlugin", "volume_frame"]

MILLIMETRE = codes.UCUM.Millimeter
CUBIC_MILLIMETRE = codes.UCUM.CubicMillimeter
HOUNSFIELD = codes.UCUM.HounsfieldUnit
NO_UNITS = codes.UCUM.NoUnits
MEAN_ATTENUATION = codes.DCM.MeanAttenuationCoefficient
LATERALITY = codes.SCT.Laterality
GROUND_GLASS = codes.DCM.GroundGlassOpacity

_SIDE_CODES = {LungSide.RIGHT: codes.SCT.Right, LungSide.LEFT: codes.SCT.Left}
_ZONE_CODES = {
    LungZone.UPPER: codes.SCT.UpperZoneOfLung,
    LungZone.MIDDLE: codes.SCT.MiddleZoneOfLung,
    LungZone.LOWER: codes.SCT.LowerZoneOfLung,
}
_LUNG_COLOURS = {LungSide.RIGHT: (128, 174, 128), LungSide.LEFT: (111, 184, 210)}


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
    return (
        f"Nodule {number}: {kind}, {nodule.side} lung, {nodule.zone} zone, "
        f"{nodule.long_axis_mm:.1f} × {nodule.short_axis_mm:.1f} mm, "
        f"volume {nodule.volume_mm3:.0f} mm³, mean {nodule.mean_hu:.0f} HU."
    )


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
                        mask=analysis.lungs[side],
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
                    color_rgb=(230, 80, 60),
                )
            )
            findings.append(
                Finding(
                    tracking_id=f"Nodule {number}",
                    finding_type=codes.SCT.Nodule,
                    finding_site=_ZONE_CODES[nodule.zone],
                    segment_key=key,
                    measurements=(
                        Measurement(codes.SCT.LongAxis, round(nodule.long_axis_mm, 2), MILLIMETRE),
                        Measurement(
                            codes.SCT.ShortAxis, round(nodule.short_axis_mm, 2), MILLIMETRE
                        ),
                        Measurement(
                            codes.SCT.Volume, round(nodule.volume_mm3, 1), CUBIC_MILLIMETRE
                        ),
                        Measurement(MEAN_ATTENUATION, round(nodule.mean_hu, 1), HOUNSFIELD),
                    ),
                    evaluations=(
                        QualitativeEvaluation(LATERALITY, _SIDE_CODES[nodule.side]),
                        QualitativeEvaluation(
                            GROUND_GLASS,
                            codes.SCT.Present
                            if nodule.kind is NoduleKind.PART_SOLID
                            else codes.SCT.Absent,
                        ),
                    ),
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
