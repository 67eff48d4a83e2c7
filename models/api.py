"""The plugin contract: what a plugin receives, what it returns, and the device it runs on.

Plugins know nothing of networking or DICOM encoding; the output builders know nothing of the
plugin's framework. Everything here is a frozen dataclass validated at construction, so a
plugin that returns a mask of the wrong shape fails inside the plugin's job with a message
that says what is wrong, not later inside a SEG builder.

Codes are ``pydicom.sr.coding.Code`` (what highdicom accepts everywhere); units are UCUM
codes, e.g. ``Code("mm", "UCUM", "millimeter")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
from pydicom.sr.coding import Code

from models.masks import MaskBox, check_mask_array

if TYPE_CHECKING:
    import highdicom
    from pydicom import Dataset

__all__ = [
    "AlgorithmIdentification",
    "Code",
    "Device",
    "DeviceKind",
    "Finding",
    "Findings",
    "GraphicKind",
    "ImageGraphic",
    "MaskBox",
    "Measurement",
    "Plugin",
    "PluginInput",
    "ProductInstance",
    "QualitativeEvaluation",
    "Report",
    "Segment",
    "SourceFrame",
    "SpacingSource",
]


class DeviceKind(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class Device:
    """Where a plugin runs: the CPU, or one CUDA device with an optional memory cap."""

    kind: DeviceKind = DeviceKind.CPU
    index: int = 0
    memory_limit_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"device index must be >= 0, got {self.index}")
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            raise ValueError("memory_limit_bytes must be positive or None")

    @property
    def torch_name(self) -> str:
        return "cpu" if self.kind is DeviceKind.CPU else f"cuda:{self.index}"

    def __str__(self) -> str:
        return self.torch_name


@dataclass(frozen=True)
class SourceFrame:
    """One 2D frame of the input: which instance (and frame of it) ``pixels[i]`` came from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None  # 1-based, for multi-frame instances only


class SpacingSource(StrEnum):
    """Where ``PluginInput.pixel_spacing`` came from, so outputs can say what a length means.

    ``models.spacing`` decides; a plugin that measures lengths reads this (or declares
    ``input.needs_spacing: true``, the default, and never sees ``NONE``).
    """

    PIXEL_SPACING = "PixelSpacing"  # as the header states it (in the patient, for CT/MR)
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"  # at the detector, ÷ magnification if known
    NONE = "none"  # no usable spacing: pixel_spacing is (1, 1) in pixels, not millimetres


@dataclass(frozen=True)
class PluginInput:
    """The selected series, decoded, with its geometry and provenance.

    ``pixels`` has shape (frames, rows, columns) as float32 with the modality LUT applied
    (Hounsfield units for CT) and MONOCHROME1 inverted so that larger is brighter.
    ``sources[i]`` names the instance (and frame) ``pixels[i]`` came from; every mask a
    plugin returns has the same first three dimensions, frame for frame.
    For cross-sectional series ``volume`` is the highdicom Volume of the same frames in the
    same order (its array equals ``pixels``); it is None for projection radiographs and for
    series whose geometry is not a regular volume (e.g. gantry tilt with uneven spacing).
    ``spacing_source`` says which tag gave ``pixel_spacing``; ``magnification`` is what an
    ImagerPixelSpacing was divided by (None: not corrected, lengths at the detector).
    """

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    pixels: np.ndarray
    sources: tuple[SourceFrame, ...]
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) in mm
    headers: tuple[Dataset, ...] = ()  # source headers without pixel data, one per instance
    volume: highdicom.Volume | None = None
    photometric_interpretation: str = "MONOCHROME2"  # as the source stored it
    prior: Mapping[str, Findings] = field(default_factory=lambda: MappingProxyType({}))
    spacing_source: SpacingSource = SpacingSource.PIXEL_SPACING
    magnification: float | None = None
    files: tuple[Path, ...] = ()  # the Part-10 files, one per header: a container gets these

    def __post_init__(self) -> None:
        if self.files and len(self.files) != len(self.headers):
            raise ValueError(
                f"PluginInput has {len(self.headers)} headers but {len(self.files)} files"
            )
        if self.pixels.ndim != 3:
            raise ValueError(
                f"PluginInput.pixels must be (frames, rows, columns); got shape {self.pixels.shape}"
            )
        if len(self.sources) != self.pixels.shape[0]:
            raise ValueError(
                f"PluginInput has {self.pixels.shape[0]} frames but {len(self.sources)} sources"
            )
        if any(s <= 0 for s in self.pixel_spacing):
            raise ValueError(f"pixel spacing must be positive, got {self.pixel_spacing}")
        if self.spacing_source is SpacingSource.NONE and tuple(self.pixel_spacing) != (1.0, 1.0):
            raise ValueError(
                "without a spacing source pixel_spacing must be (1.0, 1.0), one pixel; "
                f"got {self.pixel_spacing} (give the source it came from)"
            )
        if self.magnification is not None and (
            self.spacing_source is not SpacingSource.IMAGER_PIXEL_SPACING
            or not self.magnification > 0
        ):
            raise ValueError(
                "magnification is a positive factor that ImagerPixelSpacing was divided by; "
                f"got {self.magnification} with spacing source {self.spacing_source.value}"
            )

    @property
    def has_spacing(self) -> bool:
        """Whether ``pixel_spacing`` is in millimetres (False: in pixels, lengths unknown)."""
        return self.spacing_source is not SpacingSource.NONE

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class Segment:
    """One segment: a mask over the input frames with its SNOMED category and type.

    ``mask`` is bool (BINARY SEG) or float in [0, 1] (FRACTIONAL SEG where the manifest asks
    for it), either of shape ``PluginInput.shape`` or a ``MaskBox`` (the box around the mask
    in that volume: a nodule's few voxels instead of the whole series; ``cropped`` makes one).
    ``key`` is unique within one Findings and is how a Finding points at its segment.
    """

    key: str
    label: str
    category: Code
    type: Code
    mask: np.ndarray | MaskBox
    anatomic_site: Code | None = None
    color_rgb: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("Segment.key must not be empty")
        if not isinstance(self.mask, MaskBox):
            check_mask_array(self.mask, f"segment {self.key!r}")

    @cached_property
    def box(self) -> MaskBox:
        """The mask as a box (over the whole volume for a full-volume array, not copied)."""
        return MaskBox.of(self.mask)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The volume the mask lies in: ``PluginInput.shape``."""
        return self.box.volume_shape

    @property
    def binary(self) -> np.ndarray:
        """The whole mask as bool (a float mask is on where >= 0.5). A boxed mask is expanded
        on every call: builders read ``box``, ``frame`` and ``frames_present`` instead."""
        return self.box.full(binary=True)

    @property
    def frames_present(self) -> np.ndarray:
        """Indices of the frames the mask is on anywhere, found once: the SEG, the SR and the
        report each ask, and a nodule's mask is empty on almost every frame."""
        return self.box.frames_present

    def frame(self, index: int) -> np.ndarray:
        """Input frame ``index`` of the mask as a full-size bool plane."""
        return self.box.frame(index)

    def cropped(self) -> Segment:
        """This segment with its mask cut to the box around its voxels (a copy)."""
        return replace(self, mask=MaskBox.around(self.box.array, self.box.origin, self.shape))


class GraphicKind(StrEnum):
    """What an ``ImageGraphic`` draws: a point, an open line, or a closed outline."""

    POINT = "point"
    LINE = "line"
    OUTLINE = "outline"


_MINIMUM_POINTS = {GraphicKind.POINT: 1, GraphicKind.LINE: 2, GraphicKind.OUTLINE: 3}


@dataclass(frozen=True)
class ImageGraphic:
    """A point, line or outline on one input frame, where a viewer draws the finding.

    ``frame`` indexes ``PluginInput.pixels``; ``points`` are (row, column) positions in that
    frame's pixels, the way numpy indexes it (pixel centres at whole numbers). The SR writes
    them as image coordinates (SCOORD) on the frame's source image, so a viewer draws the
    line a length was measured along, or the outline of a region, on the right slice.
    """

    frame: int
    kind: GraphicKind
    points: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        kind = GraphicKind(self.kind)
        object.__setattr__(self, "kind", kind)
        if self.frame < 0:
            raise ValueError(f"ImageGraphic.frame must be >= 0, got {self.frame}")
        points = tuple((float(row), float(column)) for row, column in self.points)
        if len(points) < _MINIMUM_POINTS[kind]:
            raise ValueError(
                f"a {kind.value} needs at least {_MINIMUM_POINTS[kind]} points, got {len(points)}"
            )
        if kind is GraphicKind.POINT and len(points) != 1:
            raise ValueError(f"a point has exactly one position, got {len(points)}")
        if not np.isfinite(np.asarray(points)).all():
            raise ValueError(f"ImageGraphic points must be finite, got {points}")
        if kind is not GraphicKind.POINT and len(set(points)) < 2:
            raise ValueError(f"a {kind.value} needs two distinct points, got {points}")
        object.__setattr__(self, "points", points)


@dataclass(frozen=True)
class Measurement:
    """A numeric measurement: concept, value and UCUM unit.

    ``graphic`` is the line (or outline) it was measured along, where there is one: viewers
    draw it and list the value beside it.
    """

    concept: Code
    value: float
    unit: Code
    graphic: ImageGraphic | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.value):
            raise ValueError(f"measurement {self.concept.meaning!r} is not finite: {self.value}")
        if self.unit.scheme_designator != "UCUM":
            raise ValueError(
                f"measurement {self.concept.meaning!r}: unit must be a UCUM code, "
                f"got scheme {self.unit.scheme_designator!r}"
            )


@dataclass(frozen=True)
class QualitativeEvaluation:
    """A coded answer to a coded question (e.g. Cardiomegaly: Present), with confidence."""

    concept: Code
    value: Code
    confidence: float | None = None

    def __post_init__(self) -> None:
        if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")


@dataclass(frozen=True)
class Finding:
    """One measurement group of the TID 1500 report: a tracked finding and what was measured.

    ``segment_key`` names the Segment that delineates it (None for findings without a mask).
    ``region`` is a planar outline of a finding without a segment (e.g. an organ's outline
    on a radiograph), written as the group's image region. Viewers such as OHIF place a
    group only by its image coordinates: a finding should carry a ``region`` or at least one
    measurement with a ``graphic`` (``graphics`` lists them).
    """

    tracking_id: str
    finding_type: Code
    finding_site: Code | None = None
    segment_key: str | None = None
    measurements: tuple[Measurement, ...] = ()
    evaluations: tuple[QualitativeEvaluation, ...] = ()
    region: ImageGraphic | None = None

    def __post_init__(self) -> None:
        if not self.tracking_id:
            raise ValueError("Finding.tracking_id must not be empty")
        if self.region is not None and self.segment_key is not None:
            raise ValueError(
                f"finding {self.tracking_id!r} has both a region and a segment; a measurement "
                "group references one kind of ROI: keep the segment and give the outline to a "
                "measurement's graphic, or make the outline its own finding"
            )
        if self.region is not None and self.region.kind is not GraphicKind.OUTLINE:
            raise ValueError(
                f"finding {self.tracking_id!r}: a region is an outline, got a {self.region.kind}"
            )

    @property
    def graphics(self) -> tuple[ImageGraphic, ...]:
        """Every image graphic of the finding: its region, then its measurements' lines."""
        region = (self.region,) if self.region is not None else ()
        return region + tuple(m.graphic for m in self.measurements if m.graphic is not None)


@dataclass(frozen=True)
class Report:
    """Draft report text for a text SR: Findings and Impression sections."""

    findings: str
    impression: str

    def __post_init__(self) -> None:
        if not self.findings.strip() or not self.impression.strip():
            raise ValueError("a Report needs both findings and impression text")


@dataclass(frozen=True)
class ProductInstance:
    """A DICOM object a product wrote itself (a container's SEG, SR, SC or PDF).

    The node checks it (same patient and study as the source, UIDs of its own) and relays it
    as a result of the job; ``file_name`` is what the product called it, for messages.
    """

    dataset: Dataset
    file_name: str

    def __post_init__(self) -> None:
        missing = [
            keyword
            for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
            if not self.dataset.get(keyword)
        ]
        if missing:
            raise ValueError(f"{self.file_name}: the product's DICOM has no {', '.join(missing)}")


@dataclass(frozen=True)
class AlgorithmIdentification:
    name: str
    version: str

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("algorithm name and version must not be empty")


@dataclass(frozen=True)
class Findings:
    """Everything one plugin run found in one series.

    ``study_measurements`` / ``study_evaluations`` are study-level results (a nodule count,
    "no nodule found"): the TID 1500 SR writes them in the document's Qualitative Evaluations,
    where a report reader looks for them, not as a measurement group without a place.
    """

    algorithm: AlgorithmIdentification
    segments: tuple[Segment, ...] = ()
    findings: tuple[Finding, ...] = ()
    study_measurements: tuple[Measurement, ...] = ()
    study_evaluations: tuple[QualitativeEvaluation, ...] = ()
    report: Report | None = None
    instances: tuple[ProductInstance, ...] = ()

    def __post_init__(self) -> None:
        keys = [s.key for s in self.segments]
        if len(keys) != len(set(keys)):
            raise ValueError(f"segment keys must be unique, got {keys}")
        shapes = {s.shape for s in self.segments}
        if len(shapes) > 1:
            raise ValueError(
                f"all segment masks must lie in one volume (full masks of one shape, boxes of "
                f"one volume_shape), got {sorted(shapes)}"
            )
        tracking = [f.tracking_id for f in self.findings]
        if len(tracking) != len(set(tracking)):
            raise ValueError(f"finding tracking ids must be unique, got {tracking}")
        for finding in self.findings:
            if finding.segment_key is not None and finding.segment_key not in keys:
                raise ValueError(
                    f"finding {finding.tracking_id!r} names segment {finding.segment_key!r}, "
                    f"which is not among the segments {keys}"
                )

    def segment(self, key: str) -> Segment:
        for candidate in self.segments:
            if candidate.key == key:
                return candidate
        raise KeyError(key)


@runtime_checkable
class Plugin(Protocol):
    """What the runtime calls. ``load`` runs once per worker; the model then stays warm."""

    name: str
    version: str

    def load(self, device: Device) -> None: ...

    def run(self, series: PluginInput) -> Findings: ...
