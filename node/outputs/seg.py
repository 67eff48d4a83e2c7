"""Findings' segments as a DICOM Segmentation (highdicom) that viewers place correctly.

Every frame of the source is encoded for every segment, empty or not (viewers misplace
sparse SEGs), and every SEG frame references its source image or source frame. Geometry comes
from the source headers through highdicom, so it equals the source frame by frame, including
gantry-tilted stacks and enhanced multi-frame images. Sources whose frames cannot be described
by one SEG raise ``SegmentationGeometryError`` with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from models.api import Findings, PluginInput, Segment
from node.config import OutputKind
from node.outputs.context import OutputContext
from node.outputs.identity import copy_identity, prepared_header, shallow_copy
from node.outputs.uids import ResultUids

# Distinguishable default colours (RGB) for segments that do not name one.
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 160, 255),
    (64, 220, 96),
    (255, 200, 0),
    (200, 96, 255),
    (0, 220, 220),
    (255, 128, 0),
    (255, 96, 192),
)

MANUFACTURER = "ainode"


class SegmentationGeometryError(ValueError):
    """The source frames cannot be described by one Segmentation instance."""


@dataclass(frozen=True)
class SourceLayout:
    """How the input frames map onto the source instances handed to highdicom.

    ``frame_order[i]`` is the input frame that becomes SEG source position i, or -1 where a
    multi-frame source has a frame the plugin did not get (encoded empty).
    """

    images: tuple[Dataset, ...]
    frame_order: tuple[int, ...]


def segment_tracking_ids(findings: Findings) -> dict[str, str]:
    """Tracking id of each segment: the finding that points at it, else the segment key."""
    tracking = {segment.key: segment.key for segment in findings.segments}
    for finding in findings.findings:
        if finding.segment_key is not None:
            tracking[finding.segment_key] = finding.tracking_id
    return tracking


def segment_numbers(findings: Findings) -> dict[str, int]:
    """1-based SEG segment number of each segment key, in Findings order."""
    return {segment.key: number for number, segment in enumerate(findings.segments, 1)}


def source_layout(source: PluginInput) -> SourceLayout:
    """Match input frames to source headers; single-frame stacks or one multi-frame image."""
    headers = {header.SOPInstanceUID: header for header in source.headers}
    missing = sorted({f.sop_instance_uid for f in source.sources} - headers.keys())
    if missing:
        raise SegmentationGeometryError(
            f"{len(missing)} source frames name instances that are not among the headers "
            f"(e.g. {missing[0]}); PluginInput.headers must hold one header per instance"
        )
    multi = [f for f in source.sources if f.frame_number is not None]
    if not multi:
        uids = [f.sop_instance_uid for f in source.sources]
        if len(set(uids)) != len(uids):
            raise SegmentationGeometryError(
                "the same single-frame instance appears twice among the input frames"
            )
        images = tuple(prepared_header(headers[uid]) for uid in uids)
        return SourceLayout(images, tuple(range(len(uids))))
    if len(multi) != len(source.sources):
        raise SegmentationGeometryError(
            "the input mixes single-frame and multi-frame sources; one SEG cannot reference both"
        )
    instances = {f.sop_instance_uid for f in multi}
    if len(instances) != 1:
        raise SegmentationGeometryError(
            f"the input frames come from {len(instances)} multi-frame instances; a SEG is "
            "built over one multi-frame source (split the series per instance)"
        )
    header = headers[multi[0].sop_instance_uid]
    number_of_frames = int(header.get("NumberOfFrames", 1))
    order = [-1] * number_of_frames
    for index, frame in enumerate(multi):
        assert frame.frame_number is not None
        if not 1 <= frame.frame_number <= number_of_frames:
            raise SegmentationGeometryError(
                f"input frame {index} names frame {frame.frame_number} of an instance with "
                f"{number_of_frames} frames"
            )
        if order[frame.frame_number - 1] != -1:
            raise SegmentationGeometryError(f"source frame {frame.frame_number} appears twice")
        order[frame.frame_number - 1] = index
    return SourceLayout((_shared_geometry(shallow_copy(prepared_header(header))),), tuple(order))


def _values(item: Dataset, keyword: str) -> tuple[float, ...]:
    group = item[keyword][0]
    fields = {
        "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
        "PlaneOrientationSequence": ("ImageOrientationPatient",),
    }[keyword]
    values: list[float] = []
    for name in fields:
        value = group.get(name)
        if value is None or value == "":
            values.append(float("nan"))
        else:
            values.extend(float(v) for v in (value if isinstance(value, Sequence) else [value]))
    return tuple(values)


def _shared_geometry(header: Dataset) -> Dataset:
    """A multi-frame header whose geometry is laid out the way highdicom reads it.

    highdicom takes pixel measures and orientation from the shared functional groups and
    positions from the per-frame ones. Vendors put them either way (Siemens XA and Philips
    repeat measures and orientation per frame; some put one position in the shared group).
    Both layouts mean the same; this rewrites a copy so that a per-frame group that is the
    same for every frame is shared and a shared position is repeated per frame. Frames whose
    orientation or pixel spacing really differ cannot share one SEG geometry: that raises.
    """
    if "PerFrameFunctionalGroupsSequence" not in header:
        raise SegmentationGeometryError(
            "the multi-frame source has no Per-frame Functional Groups Sequence, so its frame "
            "geometry is unknown"
        )
    # deep copies: highdicom writes into the functional groups it is given (e.g. adds
    # SpacingBetweenSlices), and the caller's header must stay as it came
    shared = (
        copy.deepcopy(header.SharedFunctionalGroupsSequence[0])
        if header.get("SharedFunctionalGroupsSequence")
        else Dataset()
    )
    frames = [copy.deepcopy(item) for item in header.PerFrameFunctionalGroupsSequence]
    for keyword in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        if keyword in shared:
            continue
        if not all(keyword in frame for frame in frames):
            raise SegmentationGeometryError(
                f"the multi-frame source lacks {keyword} for some frames; its geometry is unknown"
            )
        first = _values(frames[0], keyword)
        for number, frame in enumerate(frames, 1):
            values = _values(frame, keyword)
            if len(values) != len(first) or not np.allclose(
                values, first, atol=1e-4, equal_nan=True
            ):
                what = "pixel spacing" if keyword == "PixelMeasuresSequence" else "orientation"
                raise SegmentationGeometryError(
                    f"frame {number} of the multi-frame source has another {what} than frame 1; "
                    "one SEG shares a single orientation and pixel spacing over its frames"
                )
        shared[keyword] = frames[0][keyword]
        for frame in frames:
            del frame[keyword]
    if "PlanePositionSequence" in shared:
        for frame in frames:
            if "PlanePositionSequence" not in frame:
                frame["PlanePositionSequence"] = shared["PlanePositionSequence"]
        del shared["PlanePositionSequence"]
    # new elements, not new values: the other elements are still the caller's
    header["SharedFunctionalGroupsSequence"] = DataElement(0x52009229, "SQ", [shared])
    header["PerFrameFunctionalGroupsSequence"] = DataElement(0x52009230, "SQ", frames)
    return header


def _frame_positions(layout: SourceLayout) -> list[tuple[float, ...] | None]:
    """Plane position of each source frame, None where the source has none (radiographs)."""
    if len(layout.images) == 1 and "PerFrameFunctionalGroupsSequence" in layout.images[0]:
        return [
            tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
            if "PlanePositionSequence" in item
            else None
            for item in layout.images[0].PerFrameFunctionalGroupsSequence
        ]
    return [
        tuple(float(v) for v in image.ImagePositionPatient)
        if "ImagePositionPatient" in image
        else None
        for image in layout.images
    ]


def check_distinct_positions(layout: SourceLayout) -> None:
    """One SEG frame per position and segment: sources that repeat a position (dynamic,
    multi-echo or diffusion series) need one of their repetitions chosen first."""
    seen: dict[tuple[float, ...], int] = {}
    for number, position in enumerate(_frame_positions(layout), 1):
        if position is None:
            continue
        rounded = tuple(round(v, 3) for v in position)
        if rounded in seen:
            raise SegmentationGeometryError(
                f"source frames {seen[rounded]} and {number} lie at the same position "
                f"{list(rounded)}: the source repeats positions (time points, echoes or "
                "b-values), which one SEG cannot describe; give the plugin one repetition"
            )
        seen[rounded] = number


def _source_order(masks: Sequence[np.ndarray], layout: SourceLayout) -> list[np.ndarray]:
    """The masks with their frames in source order (empty where the plugin had no frame)."""
    order = np.asarray(layout.frame_order)
    if len(order) == masks[0].shape[0] and np.array_equal(order, np.arange(len(order))):
        return list(masks)
    present = np.flatnonzero(order >= 0)
    reordered = []
    for mask in masks:
        full = np.zeros((len(order), *mask.shape[1:]), mask.dtype)
        full[present] = mask[order[present]]
        reordered.append(full)
    return reordered


def segmentation_pixels(
    segments: Sequence[Segment], layout: SourceLayout, fractional: bool
) -> np.ndarray:
    """The array for highdicom's plain path, frames in source order.

    Used for probability maps and for frames whose pixel count is not a multiple of 8 (which
    highdicom packs across frame boundaries); binary masks otherwise go bit-packed per
    segment (``PackedSegments``). Non-overlapping binary masks become one uint8 label map
    (frames, rows, columns), which highdicom checks with a single max() instead of summing a
    4D stack; overlapping masks and probability maps stay a (frames, rows, columns, segments)
    stack.
    """
    if fractional:
        masks = _source_order([np.clip(s.mask, 0.0, 1.0) for s in segments], layout)
        return np.stack(masks, axis=-1).astype(np.float32, copy=False)
    masks = _source_order([s.binary for s in segments], layout)
    if len(masks) < 256:
        labels = np.zeros(masks[0].shape, np.uint8)
        painted = 0
        for number, mask in enumerate(masks, 1):
            np.putmask(labels, mask, number)
            painted += int(np.count_nonzero(mask))
        if painted == int(np.count_nonzero(labels)):
            return labels
    return np.stack(masks, axis=-1)


class _PackedPlane:
    """One source position of ``PackedSegments``: each segment's packed frame there."""

    __slots__ = ("_packed", "_position")

    def __init__(self, packed: PackedSegments, position: int) -> None:
        self._packed = packed
        self._position = position

    def segment(self, number: int) -> np.ndarray:
        return self._packed.frame(number, self._position)


class PackedSegments:
    """Binary masks bit-packed once per segment, standing in for highdicom's 4D stack.

    highdicom 0.28 takes overlapping binary masks only as one (frames, rows, columns,
    segments) bool stack: it sums that over the segments to detect overlap and packs every
    frame with pydicom's checked ``pack_bits``. For a lung CT (2 lungs + 11 nodules over
    300 slices of 512x512) that is a 1 GB stack and most of 10 s. Here each segment is packed
    once (DICOM bit order, little-endian within a byte), its non-empty frames are kept and
    every empty frame is the same zero buffer; overlap is found by ANDing the packed frames of
    segment pairs that share a frame. Indexing by source position gives a ``_PackedPlane``,
    which ``_PrepackedSegmentation`` turns into the frame's bytes.
    """

    ndim = 4

    def __init__(self, masks: Sequence[np.ndarray], frame_order: Sequence[int]) -> None:
        frames, rows, columns = masks[0].shape
        self.shape = (len(frame_order), rows, columns, len(masks))
        self._empty = np.zeros(rows * columns // 8, np.uint8)
        self._frames: list[dict[int, np.ndarray]] = []
        for mask in masks:
            # one pass over the mask: pack every frame, then find the non-empty frames in
            # the packed bytes (an eighth of the size) rather than in the mask itself
            flat = np.ascontiguousarray(mask).reshape(frames, rows * columns)
            packed = np.packbits(flat, axis=1, bitorder="little")
            filled = np.flatnonzero(packed.view(np.uint64).any(axis=1))
            by_input = dict(zip(filled.tolist(), packed[filled], strict=True))
            self._frames.append(
                {
                    position: by_input[frame]
                    for position, frame in enumerate(frame_order)
                    if frame in by_input
                }
            )

    @classmethod
    def packable(cls, shape: tuple[int, ...]) -> bool:
        """Whether frames of this (frames, rows, columns) shape pack to whole bytes."""
        return shape[1] * shape[2] % 64 == 0

    def frame(self, number: int, position: int) -> np.ndarray:
        """Packed bytes of segment ``number`` (1-based) at source position ``position``."""
        return self._frames[number - 1].get(position, self._empty)

    def __getitem__(self, position: int) -> _PackedPlane:
        return _PackedPlane(self, position)

    def overlap(self) -> bool:
        """Whether any pixel belongs to two segments."""
        for index, first in enumerate(self._frames):
            for second in self._frames[index + 1 :]:
                for position in first.keys() & second.keys():
                    if np.bitwise_and(first[position], second[position]).any():
                        return True
        return False


# the highdicom (0.28) hooks _PrepackedSegmentation replaces; without them, highdicom's own path
_PIXEL_HOOKS = ("_check_and_cast_pixel_array", "_get_segment_pixel_array", "_encode_pixels_native")
_PACKED_PATH = all(callable(getattr(hd.seg.Segmentation, name, None)) for name in _PIXEL_HOOKS)
# what highdicom's ``_build_luts`` sets (besides the coordinate system its constructor sets)
_LUT_ATTRIBUTES = frozenset(
    {
        "_db_con",
        "_dim_ind_col_names",
        "_dim_ind_pointers",
        "_file_reader",
        "_is_tiled_full",
        "_missing_reference_instances",
    }
)


class _PrepackedSegmentation(hd.seg.Segmentation):
    """highdicom's BINARY Segmentation over ``PackedSegments``.

    highdicom builds every attribute, the per-frame functional groups and the frame order as
    usual; only its three pixel hooks are replaced when the pixels are ``PackedSegments``:
    the overlap check, the per-frame segment extraction and the bit-packing (the frames are
    already packed, so their bytes are written as they are). Any other pixel array goes
    through highdicom's own hooks.
    """

    @classmethod
    def _check_and_cast_pixel_array(  # type: ignore[override]
        cls,
        pixel_array: Any,
        segment_numbers: np.ndarray,
        segmentation_type: hd.seg.SegmentationTypeValues,
        dtype: type,
    ) -> tuple[Any, hd.seg.SegmentsOverlapValues]:
        if not isinstance(pixel_array, PackedSegments):
            return super()._check_and_cast_pixel_array(
                pixel_array, segment_numbers, segmentation_type, dtype
            )
        if segmentation_type != hd.seg.SegmentationTypeValues.BINARY:
            raise ValueError("packed segments are encoded as a BINARY segmentation only")
        if pixel_array.shape[-1] != len(segment_numbers):
            raise ValueError(
                f"{pixel_array.shape[-1]} packed segments for {len(segment_numbers)} "
                "segment descriptions"
            )
        overlap = pixel_array.overlap()
        return pixel_array, (
            hd.seg.SegmentsOverlapValues.YES if overlap else hd.seg.SegmentsOverlapValues.NO
        )

    @staticmethod
    def _get_segment_pixel_array(  # type: ignore[override]
        pixel_array: Any, segment_number: int, **kwargs: Any
    ) -> np.ndarray:
        if isinstance(pixel_array, _PackedPlane):
            return pixel_array.segment(segment_number)
        return hd.seg.Segmentation._get_segment_pixel_array(
            pixel_array, segment_number=segment_number, **kwargs
        )

    def _encode_pixels_native(self, planes: np.ndarray) -> bytes:
        if isinstance(getattr(self, "_pixels_in", None), PackedSegments):
            return planes.tobytes()
        return super()._encode_pixels_native(planes)

    def __init__(self, *, pixel_array: Any, **kwargs: Any) -> None:
        # read by _encode_pixels_native while the constructor runs, then dropped (plain
        # object attributes: pydicom's Dataset.__setattr__ is for DICOM keywords)
        object.__setattr__(self, "_pixels_in", pixel_array)
        try:
            super().__init__(pixel_array=pixel_array, **kwargs)
        finally:
            object.__delattr__(self, "_pixels_in")

    def _build_luts(self) -> None:
        """Defer highdicom's query tables (an in-memory SQLite of every frame, 0.2 s for
        3,900 frames) to their first use: the node writes the SEG it builds and never reads
        it back, but a caller that queries it still gets them."""
        object.__setattr__(self, "_luts_pending", True)

    def _ensure_luts(self) -> None:
        if self.__dict__.get("_luts_pending"):
            object.__setattr__(self, "_luts_pending", False)
            super()._build_luts()

    def __getattr__(self, name: str) -> Any:
        if name in _LUT_ATTRIBUTES and self.__dict__.get("_luts_pending"):
            self._ensure_luts()
            return object.__getattribute__(self, name)
        return super().__getattr__(name)

    def __getstate__(self) -> dict[str, Any]:
        self._ensure_luts()  # highdicom's pickling (and so deepcopy) serialises the tables
        return super().__getstate__()


def _projection_geometry(seg: hd.seg.Segmentation, source: Dataset) -> None:
    """Geometry of a SEG over a projection image (no patient frame of reference).

    Patient Orientation is Type 2C there: the source's, or empty. Pixel measures are optional
    without a frame of reference, and highdicom copies a radiograph's PixelSpacing without a
    slice thickness, which readers (highdicom's own segread) reject; the SEG then goes without.
    """
    if "PatientOrientation" not in seg:
        seg.PatientOrientation = source.get("PatientOrientation") or None
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures and "SliceThickness" not in measures[0]:
        del shared.PixelMeasuresSequence


def build_segmentation(
    findings: Findings, source: PluginInput, context: OutputContext
) -> hd.seg.Segmentation:
    """The SEG of all of ``findings.segments`` over the input frames (at least one segment)."""
    if not findings.segments:
        raise ValueError("build_segmentation needs at least one segment")
    shape = findings.segments[0].mask.shape
    if shape != source.shape:
        raise ValueError(
            f"segment masks have shape {shape} but the input is {source.shape}; masks must "
            "cover the input frame for frame"
        )
    layout = source_layout(source)
    check_distinct_positions(layout)
    fractional = context.fractional_segmentation and all(
        np.issubdtype(s.mask.dtype, np.floating) for s in findings.segments
    )
    uids = ResultUids(context.job_id, context.study_version)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=findings.algorithm.name,
        version=findings.algorithm.version,
        family=codes.cid7162.ArtificialIntelligence,
    )
    tracking = segment_tracking_ids(findings)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.label[:64],
            segmented_property_category=segment.category,
            segmented_property_type=segment.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=uids.tracking(tracking[segment.key]),
            tracking_id=tracking[segment.key][:64],
            anatomic_regions=[segment.anatomic_site] if segment.anatomic_site else None,
            display_color=hd.color.CIELabColor.from_rgb(
                *(segment.color_rgb or DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)])
            ),
        )
        for number, segment in enumerate(findings.segments, 1)
    ]
    pixels: np.ndarray | PackedSegments
    if _PACKED_PATH and not fractional and PackedSegments.packable(shape):
        pixels = PackedSegments([s.binary for s in findings.segments], layout.frame_order)
    else:
        pixels = segmentation_pixels(findings.segments, layout, fractional)
    description = (
        "NOT FOR DIAGNOSTIC USE. " if context.not_for_diagnostic_use else ""
    ) + f"Produced by {findings.algorithm.name} {findings.algorithm.version}"
    try:
        seg = _PrepackedSegmentation(
            source_images=list(layout.images),
            pixel_array=pixels,
            segmentation_type=(
                hd.seg.SegmentationTypeValues.FRACTIONAL
                if fractional
                else hd.seg.SegmentationTypeValues.BINARY
            ),
            segment_descriptions=descriptions,
            series_instance_uid=uids.series(OutputKind.SEG),
            series_number=context.series_number_of(OutputKind.SEG),
            sop_instance_uid=uids.instance(OutputKind.SEG),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=context.plugin_name[:64],
            software_versions=context.software_versions,
            device_serial_number=f"ainode-{context.ainode_version}",
            content_label=context.content_label,
            content_description=description[:64],
            series_description=context.series_description(OutputKind.SEG),
            omit_empty_frames=False,
        )
    except (ValueError, AttributeError, KeyError) as exc:
        raise SegmentationGeometryError(
            f"highdicom cannot build a SEG over this source ({type(exc).__name__}: {exc})"
        ) from exc
    copy_identity(seg, layout.images[0])
    if "FrameOfReferenceUID" not in seg:
        _projection_geometry(seg, layout.images[0])
    if context.institution_name:
        seg.InstitutionName = context.institution_name
    return seg
