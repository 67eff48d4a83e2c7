"""Where SEG frames lie: the source frames a SEG is built over, matched to their headers.

Geometry comes from the source headers through highdicom, so the SEG equals the source frame
by frame, including gantry-tilted stacks and enhanced multi-frame images. Sources whose frames
cannot be described by one SEG raise ``SegmentationGeometryError`` with the reason.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from models.api import PluginInput
from node.outputs.errors import OutputBuildError
from node.outputs.identity import prepared_header, shallow_copy


class SegmentationGeometryError(OutputBuildError):
    """The source frames cannot be described by one Segmentation instance."""


@dataclass(frozen=True)
class SourceLayout:
    """How the input frames map onto the source instances handed to highdicom.

    ``frame_order[i]`` is the input frame that becomes SEG source position i, or -1 where a
    multi-frame source has a frame the plugin did not get (encoded empty).
    """

    images: tuple[Dataset, ...]
    frame_order: tuple[int, ...]


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


def source_order(masks: Sequence[np.ndarray], layout: SourceLayout) -> list[np.ndarray]:
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


def projection_geometry(seg: hd.seg.Segmentation, source: Dataset) -> None:
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
