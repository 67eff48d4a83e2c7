"""``models.api.Findings`` as JSON: one document shape for every way findings travel.

A container product writes it as ``findings.json`` (``models.containers.findings_json``, masks
as files); an isolated interpreter sends it back on its pipe (``models.isolation``, masks as
raw arrays beside the JSON). The document is validated on the way in (a product's JSON is
untrusted input): every field is checked, with the path of what is wrong in the message.
Masks are references the caller resolves: ``{"file": F, "label": N}`` or ``{"array": i}``;
a boxed mask (``models.api.MaskBox``) adds ``"origin"`` (frame, row, column) and
``"volume_shape"``, and its file or array holds the box only. A reference without them is a
full-volume mask, as every document before boxes had.
Graphics name their frame by index (``"frame": i``) or by instance (``"sop_instance_uid"``,
optional ``"frame_number"``); points are (row, column) in that frame's pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from models.api import (
    AlgorithmIdentification,
    Code,
    Finding,
    Findings,
    GraphicKind,
    ImageGraphic,
    MaskBox,
    Measurement,
    QualitativeEvaluation,
    Report,
    Segment,
    SourceFrame,
)

__all__ = [
    "CONTRACT",
    "FindingsDocumentError",
    "MaskReference",
    "box_json",
    "decode",
    "encode",
]

CONTRACT = "ainode-findings/1"


class FindingsDocumentError(ValueError):
    """The document cannot be read as Findings; the message says where and why."""


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


class MaskReference(_Model):
    """Where a segment's mask is: a file beside the document, or an array sent with it;
    with ``origin`` and ``volume_shape`` it holds the box around the mask only."""

    file: str | None = None
    array: int | None = Field(None, ge=0)
    label: int | None = Field(None, ge=1)
    origin: tuple[int, int, int] | None = None
    volume_shape: tuple[int, int, int] | None = None

    @model_validator(mode="after")
    def _box_whole(self) -> MaskReference:
        if (self.origin is None) != (self.volume_shape is None):
            raise ValueError("a boxed mask gives both origin and volume_shape")
        return self


class _Segment(_Model):
    key: str
    label: str
    category: _Code
    type: _Code
    mask: MaskReference
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


# -- decoding ----------------------------------------------------------------------------------


def decode(
    data: object,
    sources: Sequence[SourceFrame],
    mask_of: Callable[[MaskReference], np.ndarray],
) -> Findings:
    """Findings of a document; ``sources`` (the input's frames) resolve instance references
    and bound frame indices, ``mask_of`` loads each mask (on the input grid, or the box its
    reference names)."""
    try:
        document = _Document.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise FindingsDocumentError(f"does not follow {CONTRACT}: {problems}") from exc
    try:
        return Findings(
            algorithm=AlgorithmIdentification(document.algorithm.name, document.algorithm.version),
            segments=tuple(_segment(s, mask_of(s.mask)) for s in document.segments),
            findings=tuple(_finding(f, sources) for f in document.findings),
            study_measurements=tuple(_measurement(m, sources) for m in document.study_measurements),
            study_evaluations=tuple(_evaluation(e) for e in document.study_evaluations),
            report=None
            if document.report is None
            else Report(document.report.findings, document.report.impression),
        )
    except ValueError as exc:
        raise FindingsDocumentError(str(exc)) from exc


def _frame_index(graphic: _Graphic, sources: Sequence[SourceFrame]) -> int:
    if graphic.frame is not None:
        if graphic.frame >= len(sources):
            raise ValueError(f"graphic frame {graphic.frame} beyond the {len(sources)} frames")
        return graphic.frame
    for index, source in enumerate(sources):
        if source.sop_instance_uid == graphic.sop_instance_uid and (
            graphic.frame_number is None or source.frame_number in (None, graphic.frame_number)
        ):
            return index
    raise ValueError(f"graphic names instance {graphic.sop_instance_uid}, not in the input")


def _graphic(graphic: _Graphic | None, sources: Sequence[SourceFrame]) -> ImageGraphic | None:
    if graphic is None:
        return None
    return ImageGraphic(_frame_index(graphic, sources), graphic.kind, graphic.points)


def _measurement(m: _Measurement, sources: Sequence[SourceFrame]) -> Measurement:
    return Measurement(m.concept.code, m.value, m.unit.code, _graphic(m.graphic, sources))


def _evaluation(e: _Evaluation) -> QualitativeEvaluation:
    return QualitativeEvaluation(e.concept.code, e.value.code, e.confidence)


def _finding(f: _Finding, sources: Sequence[SourceFrame]) -> Finding:
    return Finding(
        tracking_id=f.tracking_id,
        finding_type=f.finding_type.code,
        finding_site=None if f.finding_site is None else f.finding_site.code,
        segment_key=f.segment_key,
        measurements=tuple(_measurement(m, sources) for m in f.measurements),
        evaluations=tuple(_evaluation(e) for e in f.evaluations),
        region=_graphic(f.region, sources),
    )


def _segment(s: _Segment, data: np.ndarray) -> Segment:
    if s.mask.label is not None:
        mask = data == s.mask.label
    elif np.issubdtype(data.dtype, np.floating) and not np.isin(data, (0.0, 1.0)).all():
        if data.min() < 0 or data.max() > 1:
            raise ValueError(f"mask {s.mask.file or s.mask.array}: a float mask must lie in [0, 1]")
        mask = data.astype(np.float32)
    else:
        mask = data != 0
    mask = np.ascontiguousarray(mask)
    if s.mask.origin is not None and s.mask.volume_shape is not None:
        mask = MaskBox(mask, s.mask.origin, s.mask.volume_shape)
    return Segment(
        key=s.key,
        label=s.label,
        category=s.category.code,
        type=s.type.code,
        mask=mask,
        anatomic_site=None if s.anatomic_site is None else s.anatomic_site.code,
        color_rgb=s.color_rgb,
    )


# -- encoding ----------------------------------------------------------------------------------


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


def box_json(segment: Segment) -> dict[str, list[int]]:
    """What a mask reference adds for a boxed mask (written as ``segment.box.array``); nothing
    for a full-volume one, which travels as it came."""
    if not isinstance(segment.mask, MaskBox):
        return {}
    return {"origin": list(segment.mask.origin), "volume_shape": list(segment.mask.volume_shape)}


def encode(findings: Findings, mask_refs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The document of ``findings``; ``mask_refs[i]`` is where segment ``i``'s mask went (with
    ``box_json`` where it holds the box only)."""
    return {
        "contract": CONTRACT,
        "algorithm": {"name": findings.algorithm.name, "version": findings.algorithm.version},
        "segments": [
            {
                "key": segment.key,
                "label": segment.label,
                "category": _code_json(segment.category),
                "type": _code_json(segment.type),
                "anatomic_site": _code_json(segment.anatomic_site),
                "color_rgb": segment.color_rgb,
                "mask": mask_refs[index],
            }
            for index, segment in enumerate(findings.segments)
        ],
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
