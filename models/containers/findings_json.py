"""``findings.json``: what a product writes when it leaves the DICOM to ainode.

The document is ``models.api.Findings`` as JSON (contract ``ainode-findings/1``); masks are
files beside it, NIfTI (``.nii``/``.nii.gz``) or NumPy (``.npy``):

* ``.npy``: shape (frames, rows, columns) of the input, frames in the order ``task.json``
  lists them (``ainode.frames``).
* NIfTI: where the input is a volume and the file has an affine (sform or qform code > 0),
  its grid is matched to the input through both affines (axes may be permuted or flipped, as
  dcm2niix and MONAI write them; a grid that needs resampling is refused). Otherwise the
  voxel axes are (column, row, frame), the order nibabel reads a DICOM-derived image in.
* ``{"file": F, "label": N}`` takes the voxels equal to N of a label map; without a label a
  mask is on where non-zero (a float mask in [0, 1] stays fractional).

Graphics name their frame by index (``"frame": i``) or by instance (``"sop_instance_uid"``,
optional ``"frame_number"``); points are (row, column) in that frame's pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.api import (
    AlgorithmIdentification,
    Code,
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

__all__ = ["CONTRACT", "FINDINGS_FILE", "FindingsFileError", "read_findings", "write_findings"]

CONTRACT = "ainode-findings/1"
FINDINGS_FILE = "findings.json"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_TO_INPUT = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)


class FindingsFileError(ValueError):
    """findings.json or one of its masks cannot be used; the message says which and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Code(_Model):
    value: str
    scheme: str
    meaning: str

    @field_validator("value", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    @property
    def code(self) -> Code:
        return Code(self.value, self.scheme, self.meaning)


class _Graphic(_Model):
    kind: GraphicKind
    points: tuple[tuple[float, float], ...]
    frame: int | None = Field(None, ge=0)
    sop_instance_uid: str | None = None
    frame_number: int | None = Field(None, ge=1)


class _Measurement(_Model):
    concept: _Code
    value: float
    unit: _Code
    graphic: _Graphic | None = None


class _Evaluation(_Model):
    concept: _Code
    value: _Code
    confidence: float | None = None


class _Mask(_Model):
    file: str
    label: int | None = Field(None, ge=1)


class _Segment(_Model):
    key: str
    label: str
    category: _Code
    type: _Code
    mask: _Mask
    anatomic_site: _Code | None = None
    color_rgb: tuple[int, int, int] | None = None


class _Finding(_Model):
    tracking_id: str
    finding_type: _Code
    finding_site: _Code | None = None
    segment_key: str | None = None
    region: _Graphic | None = None
    measurements: tuple[_Measurement, ...] = ()
    evaluations: tuple[_Evaluation, ...] = ()


class _Algorithm(_Model):
    name: str
    version: str


class _Report(_Model):
    findings: str
    impression: str


class _Document(_Model):
    contract: Literal["ainode-findings/1"]
    algorithm: _Algorithm
    segments: tuple[_Segment, ...] = ()
    findings: tuple[_Finding, ...] = ()
    study_measurements: tuple[_Measurement, ...] = ()
    study_evaluations: tuple[_Evaluation, ...] = ()
    report: _Report | None = None


# -- reading -----------------------------------------------------------------------------------


def read_findings(folder: Path, series: PluginInput) -> Findings:
    """The Findings in ``folder/findings.json``, masks on the grid of ``series``."""
    path = folder / FINDINGS_FILE
    try:
        document = _Document.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FindingsFileError(f"{FINDINGS_FILE} is not readable JSON: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise FindingsFileError(f"{FINDINGS_FILE} does not follow {CONTRACT}: {problems}") from exc
    try:
        return Findings(
            algorithm=AlgorithmIdentification(document.algorithm.name, document.algorithm.version),
            segments=tuple(_segment(folder, s, series) for s in document.segments),
            findings=tuple(_finding(f, series) for f in document.findings),
            study_measurements=tuple(_measurement(m, series) for m in document.study_measurements),
            study_evaluations=tuple(_evaluation(e) for e in document.study_evaluations),
            report=None
            if document.report is None
            else Report(document.report.findings, document.report.impression),
        )
    except ValueError as exc:
        raise FindingsFileError(f"{FINDINGS_FILE}: {exc}") from exc


def _frame_index(graphic: _Graphic, series: PluginInput) -> int:
    if graphic.frame is not None:
        if graphic.frame >= series.shape[0]:
            raise ValueError(f"graphic frame {graphic.frame} beyond the {series.shape[0]} frames")
        return graphic.frame
    for index, source in enumerate(series.sources):
        if source.sop_instance_uid == graphic.sop_instance_uid and (
            graphic.frame_number is None or source.frame_number in (None, graphic.frame_number)
        ):
            return index
    raise ValueError(f"graphic names instance {graphic.sop_instance_uid}, not in the input")


def _graphic(graphic: _Graphic | None, series: PluginInput) -> ImageGraphic | None:
    if graphic is None:
        return None
    return ImageGraphic(_frame_index(graphic, series), graphic.kind, graphic.points)


def _measurement(m: _Measurement, series: PluginInput) -> Measurement:
    return Measurement(m.concept.code, m.value, m.unit.code, _graphic(m.graphic, series))


def _evaluation(e: _Evaluation) -> QualitativeEvaluation:
    return QualitativeEvaluation(e.concept.code, e.value.code, e.confidence)


def _finding(f: _Finding, series: PluginInput) -> Finding:
    return Finding(
        tracking_id=f.tracking_id,
        finding_type=f.finding_type.code,
        finding_site=None if f.finding_site is None else f.finding_site.code,
        segment_key=f.segment_key,
        measurements=tuple(_measurement(m, series) for m in f.measurements),
        evaluations=tuple(_evaluation(e) for e in f.evaluations),
        region=_graphic(f.region, series),
    )


def _segment(folder: Path, s: _Segment, series: PluginInput) -> Segment:
    data = _mask_data(folder, s.mask.file, series)
    if s.mask.label is not None:
        mask = data == s.mask.label
    elif np.issubdtype(data.dtype, np.floating) and not np.isin(data, (0.0, 1.0)).all():
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"mask {s.mask.file}: a float mask must lie in [0, 1]")
        mask = data.astype(np.float32)
    else:
        mask = data != 0
    return Segment(
        key=s.key,
        label=s.label,
        category=s.category.code,
        type=s.type.code,
        mask=np.ascontiguousarray(mask),
        anatomic_site=None if s.anatomic_site is None else s.anatomic_site.code,
        color_rgb=s.color_rgb,
    )


def _mask_data(folder: Path, name: str, series: PluginInput) -> np.ndarray:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise ValueError(f"mask {name} is not a file in the output folder")
    if name.endswith(".npy"):
        data = np.load(path, allow_pickle=False)
        if data.shape != series.shape:
            raise ValueError(
                f"mask {name} has shape {data.shape}; the input is {series.shape} "
                "(frames, rows, columns)"
            )
        return data
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_on_input(path, series)
    raise ValueError(f"mask {name}: masks are .nii, .nii.gz or .npy files")


def _nifti_on_input(path: Path, series: PluginInput) -> np.ndarray:
    import nibabel

    image = nibabel.load(path)
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise ValueError(f"mask {path.name} has {data.ndim} dimensions, expected 3")
    has_affine = int(image.header["sform_code"]) > 0 or int(image.header["qform_code"]) > 0
    if series.volume is not None and has_affine:
        return _resliced(data, np.asarray(image.affine, float), series, path.name)
    frames, rows, columns = series.shape
    if data.shape != (columns, rows, frames):
        raise ValueError(
            f"mask {path.name} has shape {data.shape}; on this input a NIfTI mask without "
            f"patient geometry is (columns, rows, frames) = {(columns, rows, frames)}"
        )
    return data.transpose(2, 1, 0)


def _resliced(data: np.ndarray, affine: np.ndarray, series: PluginInput, name: str) -> np.ndarray:
    """The NIfTI data on the input's (frame, row, column) grid; the grids must coincide up to
    permuted and flipped axes."""
    assert series.volume is not None
    to_nifti = np.linalg.inv(affine) @ _LPS_TO_RAS @ np.asarray(series.volume.affine, float)
    linear, offset = to_nifti[:3, :3], to_nifti[:3, 3]
    rounded = np.round(linear)
    if (
        not np.allclose(linear, rounded, atol=1e-3)
        or not np.allclose(offset, np.round(offset), atol=1e-2)
        or sorted(np.abs(rounded).sum(axis=0)) != [1, 1, 1]
        or sorted(np.abs(rounded).sum(axis=1)) != [1, 1, 1]
    ):
        raise ValueError(
            f"mask {name} is not on the input's voxel grid (its affine differs by more than an "
            "axis order or flip); resample it onto the input series first"
        )
    axes = [int(np.flatnonzero(rounded[:, a])[0]) for a in range(3)]  # NIfTI axis of input a
    indices = []
    for a, size in enumerate(series.shape):
        j = axes[a]
        index = rounded[j, a] * np.arange(size) + round(offset[j])
        if index.min() < 0 or index.max() >= data.shape[j]:
            raise ValueError(f"mask {name} does not cover the input (axis {j} of the NIfTI)")
        indices.append(index.astype(np.intp))
    return np.transpose(data, axes)[np.ix_(*indices)]


# -- writing (the SDK inside an image) ---------------------------------------------------------


def _code_json(code: Code | None) -> dict[str, str] | None:
    if code is None:
        return None
    return {"value": code.value, "scheme": code.scheme_designator, "meaning": code.meaning}


def _graphic_json(graphic: ImageGraphic | None) -> dict[str, object] | None:
    if graphic is None:
        return None
    return {"kind": graphic.kind.value, "frame": graphic.frame, "points": graphic.points}


def _measurement_json(m: Measurement) -> dict[str, object]:
    return {
        "concept": _code_json(m.concept),
        "value": m.value,
        "unit": _code_json(m.unit),
        "graphic": _graphic_json(m.graphic),
    }


def _evaluation_json(e: QualitativeEvaluation) -> dict[str, object]:
    return {
        "concept": _code_json(e.concept),
        "value": _code_json(e.value),
        "confidence": e.confidence,
    }


def write_findings(findings: Findings, series: PluginInput, folder: Path) -> Path:
    """Write ``findings.json`` and one NIfTI mask per segment into ``folder``."""
    import nibabel

    folder.mkdir(parents=True, exist_ok=True)
    if series.volume is not None:
        affine, code = _LPS_TO_RAS @ np.asarray(series.volume.affine) @ _NIFTI_TO_INPUT, 1
    else:
        row, column = series.pixel_spacing
        affine, code = np.diag([column, row, 1.0, 1.0]), 0
    segments = []
    for index, segment in enumerate(findings.segments):
        name = f"mask-{index + 1}.nii.gz"
        data = segment.mask.astype(np.uint8 if segment.mask.dtype == np.bool_ else np.float32)
        image = nibabel.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
        image.set_sform(affine, code=code)
        image.set_qform(affine, code=code)
        nibabel.save(image, folder / name)
        segments.append(
            {
                "key": segment.key,
                "label": segment.label,
                "category": _code_json(segment.category),
                "type": _code_json(segment.type),
                "anatomic_site": _code_json(segment.anatomic_site),
                "color_rgb": segment.color_rgb,
                "mask": {"file": name},
            }
        )
    document = {
        "contract": CONTRACT,
        "algorithm": {"name": findings.algorithm.name, "version": findings.algorithm.version},
        "segments": segments,
        "findings": [
            {
                "tracking_id": f.tracking_id,
                "finding_type": _code_json(f.finding_type),
                "finding_site": _code_json(f.finding_site),
                "segment_key": f.segment_key,
                "region": _graphic_json(f.region),
                "measurements": [_measurement_json(m) for m in f.measurements],
                "evaluations": [_evaluation_json(e) for e in f.evaluations],
            }
            for f in findings.findings
        ],
        "study_measurements": [_measurement_json(m) for m in findings.study_measurements],
        "study_evaluations": [_evaluation_json(e) for e in findings.study_evaluations],
        "report": None
        if findings.report is None
        else {"findings": findings.report.findings, "impression": findings.report.impression},
    }
    path = folder / FINDINGS_FILE
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path
