"""Findings' segments as a DICOM Segmentation (highdicom) that viewers place correctly.

Every SEG frame references its source image or source frame and carries its position
(``seg_geometry``). Frames where a segment has no pixel are left out unless
``SegOptions.omit_empty_frames`` is off; viewers place the frames kept by those references.
Segments that nest (a nodule in its lung) are made exclusive by default (``seg_overlap``).
Binary masks go through the bit-packed path (``seg_packed``), the rest through highdicom's.
A boxed mask (``MaskBox``) is packed from its box's frames; only highdicom's own path (label
maps, frames that do not pack to whole bytes, probability maps) expands it to the volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

from models.api import Findings, PluginInput
from node.output_settings import OverlappingSegments, SegTransferSyntax, SegType
from node.outputs.context import OutputContext
from node.outputs.errors import OutputBuildError, check_source_classes, refused_by_highdicom
from node.outputs.identity import copy_identity
from node.outputs.seg_geometry import (
    SegmentationGeometryError,
    SourceLayout,
    check_distinct_positions,
    projection_geometry,
    source_layout,
    source_order,
)
from node.outputs.seg_overlap import exclusive_masks
from node.outputs.seg_packed import PACKED_PATH, PackedSegments, PrepackedSegmentation
from node.outputs.uids import ResultUids
from node.shared_types import OutputKind

__all__ = [
    "DEFAULT_COLORS",
    "MANUFACTURER",
    "PackedSegments",
    "SourceLayout",
    "build_segmentation",
    "check_distinct_positions",
    "segment_numbers",
    "segment_tracking_ids",
    "segmentation_pixels",
    "source_layout",
]

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


# highdicom's JPEG 2000 codec (openjpeg) refuses frames under 32 pixels along either side
_J2K_MIN_SIDE = 32


def segmentation_pixels(
    masks: Sequence[np.ndarray], layout: SourceLayout, fractional: bool, labelmap: bool = False
) -> np.ndarray:
    """The array for highdicom's plain path, frames in source order.

    Used for probability maps, LABELMAP SEGs and frames whose pixel count is not a multiple
    of 8 (which highdicom packs across frame boundaries); binary masks otherwise go
    bit-packed per segment (``PackedSegments``). Non-overlapping binary masks become one
    uint8/uint16 label map (frames, rows, columns), which highdicom checks with a single max()
    instead of summing a 4D stack; overlapping masks and probability maps stay a (frames,
    rows, columns, segments) stack.
    """
    if fractional:
        ordered = source_order([np.clip(mask, 0.0, 1.0) for mask in masks], layout)
        return np.stack(ordered, axis=-1).astype(np.float32, copy=False)
    ordered = source_order(masks, layout)
    labels = np.zeros(ordered[0].shape, np.uint8 if len(ordered) < 256 else np.uint16)
    painted = 0
    for number, mask in enumerate(ordered, 1):
        np.putmask(labels, mask, number)
        painted += int(np.count_nonzero(mask))
    if labelmap or painted == int(np.count_nonzero(labels)):
        return labels
    return np.stack(ordered, axis=-1)


def _transfer_syntax(options: SegTransferSyntax, shape: tuple[int, ...]) -> str:
    """The syntax highdicom encodes in: the configured one, or explicit VR little endian
    where its codec cannot take frames of this size (JPEG 2000 under 32 pixels a side) and
    for deflate (applied to the encoded dataset as it is written)."""
    if options is SegTransferSyntax.JPEG2000_LOSSLESS and min(shape[1:]) < _J2K_MIN_SIDE:
        return SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN.uid
    if options is SegTransferSyntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN.uid
    return options.uid


def build_segmentation(
    findings: Findings, source: PluginInput, context: OutputContext
) -> hd.seg.Segmentation:
    """The SEG of all of ``findings.segments`` over the input frames (at least one segment)."""
    if not findings.segments:
        raise OutputBuildError("build_segmentation needs at least one segment")
    shape = findings.segments[0].shape
    if shape != source.shape:
        raise OutputBuildError(
            f"segment masks have shape {shape} but the input is {source.shape}; masks must "
            "cover the input frame for frame"
        )
    check_source_classes(source, "a SEG")
    layout = source_layout(source)
    check_distinct_positions(layout)
    fractional = context.fractional_segmentation and all(
        np.issubdtype(s.box.array.dtype, np.floating) for s in findings.segments
    )
    uids = ResultUids(context.job_id)
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
    options = context.seg
    exclusive = options.overlapping is OverlappingSegments.EXCLUSIVE
    labelmap = options.seg_type is SegType.LABELMAP and not fractional
    transfer_syntax = _transfer_syntax(options.transfer_syntax, shape)
    pixels: np.ndarray | PackedSegments
    if fractional:
        pixels = segmentation_pixels([s.box.full() for s in findings.segments], layout, True)
    elif PACKED_PATH and not labelmap and PackedSegments.packable(shape):
        pixels = PackedSegments(
            [s.box for s in findings.segments],
            layout.frame_order,
            unpack_frames=transfer_syntax == JPEG2000Lossless,
        )
        if exclusive:
            pixels.make_exclusive()
    else:
        masks = [s.binary for s in findings.segments]
        pixels = segmentation_pixels(
            exclusive_masks(masks) if exclusive else masks, layout, False, labelmap
        )
    if fractional:
        segmentation_type = hd.seg.SegmentationTypeValues.FRACTIONAL
    elif labelmap:
        segmentation_type = hd.seg.SegmentationTypeValues.LABELMAP
    else:
        segmentation_type = hd.seg.SegmentationTypeValues.BINARY
    description = (
        "NOT FOR DIAGNOSTIC USE. " if context.not_for_diagnostic_use else ""
    ) + f"Produced by {findings.algorithm.name} {findings.algorithm.version}"
    with refused_by_highdicom("a SEG over this source", SegmentationGeometryError):
        seg = PrepackedSegmentation(
            source_images=list(layout.images),
            pixel_array=pixels,
            segmentation_type=segmentation_type,
            transfer_syntax_uid=transfer_syntax,
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
            omit_empty_frames=options.omit_empty_frames,
        )
    if options.transfer_syntax is SegTransferSyntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        seg.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    copy_identity(seg, layout.images[0])
    if "FrameOfReferenceUID" not in seg:
        projection_geometry(seg, layout.images[0])
    if context.institution_name:
        seg.InstitutionName = context.institution_name
    return seg
