"""Helpers for the outputs tests: a synthetic CT series on disk and Findings that use every
output kind. PluginInputs come from ``models.loading.load_plugin_input``, as in production."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from models.api import (
    AlgorithmIdentification,
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
from models.loading import load_plugin_input
from node.output_settings import OverlappingSegments, SegTransferSyntax
from node.outputs import OutputContext, ResultInstance, build_outputs
from node.outputs.context import SegOptions
from node.shared_types import OutputKind

# the SEG as it was before sparse, compressed, exclusive SEGs became the default: every
# frame, uncompressed, nested segments kept; what highdicom's plain call gives
EVERY_FRAME_NESTED = SegOptions(
    overlapping=OverlappingSegments.NESTED,
    transfer_syntax=SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN,
    omit_empty_frames=False,
)
MM = Code("mm", "UCUM", "millimeter")
MM3 = Code("mm3", "UCUM", "cubic millimeter")
MM2 = Code("mm2", "UCUM", "square millimeter")
LESIONS = Code("{lesions}", "UCUM", "lesions")


def write_synthetic_ct(
    folder: Path, slices: int = 12, size: int = 64, tilt: bool = False, **overrides: object
) -> list[Path]:
    """A small CT series on disk; ``overrides`` set or (with None) delete header attributes."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    paths = []
    for index in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID = "Synthetic^Patient", "SYN0001"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.StudyID = study, "1"
        ds.StudyDate, ds.StudyTime = "20240101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC0001", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series, 1
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "CHEST"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.Manufacturer = "Synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber, ds.AcquisitionNumber, ds.KVP = index + 1, 1, "120"
        ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
        if tilt:  # 20 degree gantry tilt: orientation row 2 tilted, positions shift in y
            angle = np.deg2rad(20)
            ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(angle)), float(np.sin(angle))]
            ds.GantryDetectorTilt = 20
            ds.ImagePositionPatient = [-25.6, -25.6 + index * 2.5 * np.tan(angle), index * 2.5]
        else:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [-25.6, -25.6, index * 2.5]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = rng.integers(900, 1100, (size, size), dtype=np.int16).tobytes()
        for keyword, value in overrides.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        path = folder / f"ct{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def sphere_mask(
    shape: tuple[int, int, int], center: tuple[float, float, float], radius: float
) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cz, cy, cx = center
    return (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius**2


def full_findings(source: PluginInput, report: bool = True) -> Findings:
    """Findings that exercise every output kind: two segments (one empty), measurements (one
    along a line), a finding outlined on a slice, qualitative evaluations, study-level results
    and report text."""
    frames, rows, columns = source.shape
    centre = frames // 2
    diameter_line = ImageGraphic(
        centre, GraphicKind.LINE, ((rows / 2, columns / 2 - 3), (rows / 2, columns / 2 + 3))
    )
    outline = ImageGraphic(
        centre, GraphicKind.OUTLINE, ((1.0, 1.0), (1.0, columns / 4), (rows / 4, columns / 4))
    )
    nodule = sphere_mask(source.shape, (frames / 2, rows / 2, columns / 2), max(1.5, rows / 8))
    empty = np.zeros(source.shape, np.bool_)
    volume = float(nodule.sum() * source.pixel_spacing[0] * source.pixel_spacing[1] * 2.5)
    return Findings(
        algorithm=AlgorithmIdentification("test-plugin", "1.2.0"),
        segments=(
            Segment(
                key="nodule-1",
                label="Nodule 1",
                category=codes.SCT.MorphologicallyAbnormalStructure,
                type=codes.SCT.Nodule,
                mask=nodule,
                anatomic_site=codes.SCT.Lung,
                color_rgb=(255, 0, 0),
            ),
            Segment(
                key="nodule-2",
                label="Nodule 2 (empty)",
                category=codes.SCT.MorphologicallyAbnormalStructure,
                type=codes.SCT.Nodule,
                mask=empty,
            ),
        ),
        findings=(
            Finding(
                tracking_id="Nodule 1",
                finding_type=codes.SCT.Nodule,
                finding_site=codes.SCT.Lung,
                segment_key="nodule-1",
                measurements=(
                    Measurement(codes.SCT.Volume, volume, MM3),
                    Measurement(codes.SCT.Diameter, 12.5, MM, graphic=diameter_line),
                ),
                evaluations=(
                    QualitativeEvaluation(
                        codes.DCM.LevelOfSignificance, codes.SCT.Moderate, confidence=0.8
                    ),
                ),
            ),
            Finding(
                tracking_id="Nodule 2",
                finding_type=codes.SCT.Nodule,
                segment_key="nodule-2",
                measurements=(Measurement(codes.SCT.Diameter, 0.0, MM),),
            ),
            Finding(
                tracking_id="Emphysema",
                finding_type=Code("87433001", "SCT", "Pulmonary emphysema"),
                finding_site=codes.SCT.Lung,
                measurements=(Measurement(codes.SCT.Area, 3.5, MM2),),
                region=outline,
            ),
        ),
        study_measurements=(Measurement(codes.SCT.NumberOfLesions, 1.0, LESIONS),),
        study_evaluations=(QualitativeEvaluation(codes.SCT.Nodule, codes.SCT.Present),),
        report=Report(
            findings="One solid nodule of 12.5 mm in the lung.",
            impression="Pulmonary nodule; follow-up recommended.",
        )
        if report
        else None,
    )


ALL_KINDS = tuple(OutputKind)


def key(code: object) -> tuple[str, str]:
    """(value, scheme) of a pydicom Code, a highdicom CodedConcept or a code item."""
    if isinstance(code, pydicom.Dataset) and "CodeValue" in code:
        return (str(code.CodeValue), str(code.CodingSchemeDesignator))
    return (str(code.value), str(code.scheme_designator))  # type: ignore[attr-defined]


def context(**changes: object) -> OutputContext:
    base = OutputContext(
        job_id="job-42",
        plugin_name="test-plugin",
        plugin_version="1.2.0",
        series_number=7000,
        outputs=ALL_KINDS,
    )
    return dataclasses.replace(base, **changes)


def synthetic_ct(folder: Path) -> tuple[list[Path], PluginInput]:
    """The small CT the outputs tests build on (10 slices of 48x48), and its input."""
    files = write_synthetic_ct(folder, slices=10, size=48)
    return files, load_plugin_input(files)


def built_by_kind(source: PluginInput) -> tuple[Findings, dict[OutputKind, list[ResultInstance]]]:
    """``full_findings`` of ``source`` built into every kind, grouped by kind."""
    findings = full_findings(source)
    by_kind: dict[OutputKind, list[ResultInstance]] = {}
    for result in build_outputs(findings, source, context()):
        by_kind.setdefault(result.kind, []).append(result)
    return findings, by_kind
