"""A plugin may give a segment's mask as the box around it (``MaskBox``) instead of a
full-volume array: every output is the same either way. The SEG has the same frames, each
for the same segment on the same source slice at the same position, with the same pixels,
on the bit-packed path and on highdicom's own, for every SEG option."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pydicom
import pytest
from outputs_support import context, full_findings, sphere_mask, synthetic_ct, write_synthetic_ct
from pydicom.sr.codedict import codes

from models.api import AlgorithmIdentification, Findings, MaskBox, PluginInput, Segment
from models.loading import load_plugin_input
from node.output_settings import OverlappingSegments, SegTransferSyntax, SegType
from node.outputs import OutputContext, build_outputs
from node.outputs.context import SegOptions
from node.outputs.seg import build_segmentation
from node.shared_types import OutputKind

OPTIONS = {
    "default": SegOptions(),
    "nested": SegOptions(overlapping=OverlappingSegments.NESTED),
    "every-frame": SegOptions(omit_empty_frames=False),
    "jpeg2000": SegOptions(transfer_syntax=SegTransferSyntax.JPEG2000_LOSSLESS),
    "labelmap": SegOptions(seg_type=SegType.LABELMAP),
}


@pytest.fixture(scope="module", params=[48, 36], ids=["packed", "highdicom-path"])
def source(request, tmp_path_factory) -> PluginInput:
    folder = tmp_path_factory.mktemp(f"ct{request.param}")
    return load_plugin_input(write_synthetic_ct(folder, slices=8, size=request.param))


def lungs_and_nodules(source: PluginInput, fractional: bool = False) -> Findings:
    """Two lungs, nodules inside them and at the volume's corner, and an empty segment."""
    frames, rows, columns = source.shape
    middle, half = frames / 2, rows / 2

    def segment(key: str, center: tuple[float, float, float], radius: float) -> Segment:
        mask = (
            sphere_mask(source.shape, center, radius)
            if radius > 0
            else np.zeros(source.shape, bool)
        )
        if fractional:
            mask = mask * np.float32(0.75)
        return Segment(key, key, codes.SCT.AnatomicalStructure, codes.SCT.Nodule, mask)

    return Findings(
        algorithm=AlgorithmIdentification("p", "1"),
        segments=(
            segment("right lung", (middle, half, columns / 4), columns / 4.5),
            segment("left lung", (middle, half, 3 * columns / 4), columns / 4.5),
            segment("nodule 1", (middle - 1, half, columns / 4), 2),
            segment("nodule 2", (middle + 1, half + 2, 3 * columns / 4), 1.5),
            segment("corner", (0, 0, 0), 1.5),
            segment("empty", (0, 0, 0), 0),
        ),
    )


def boxed(findings: Findings) -> Findings:
    cropped = tuple(segment.cropped() for segment in findings.segments)
    assert all(isinstance(s.mask, MaskBox) for s in cropped)
    return dataclasses.replace(findings, segments=cropped)


def seg_context(options: SegOptions, fractional: bool = False) -> OutputContext:
    return context(outputs=(OutputKind.SEG,), seg=options, fractional_segmentation=fractional)


def frames(seg: pydicom.Dataset) -> list[tuple[object, ...]]:
    """(segment number, source image, source frame, position, pixels) of every frame."""
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    read = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    count = int(read.NumberOfFrames)
    pixels = read.pixel_array.reshape(count, int(read.Rows), int(read.Columns))
    rows = []
    for index, group in enumerate(read.PerFrameFunctionalGroupsSequence):
        identification = group.get("SegmentIdentificationSequence")
        (image,) = group.DerivationImageSequence[0].SourceImageSequence
        rows.append(
            (
                None if identification is None else identification[0].ReferencedSegmentNumber,
                image.ReferencedSOPInstanceUID,
                image.get("ReferencedFrameNumber"),
                tuple(group.PlanePositionSequence[0].ImagePositionPatient),
                pixels[index].tobytes(),
            )
        )
    return rows


@pytest.mark.parametrize("name", list(OPTIONS))
def test_a_boxed_mask_makes_the_same_seg_as_a_full_one(source, name) -> None:
    options = OPTIONS[name]
    findings = lungs_and_nodules(source)
    full = build_segmentation(findings, source, seg_context(options))
    from_boxes = build_segmentation(boxed(findings), source, seg_context(options))
    assert full.NumberOfFrames == from_boxes.NumberOfFrames
    assert full.SegmentsOverlap == from_boxes.SegmentsOverlap
    assert full.PerFrameFunctionalGroupsSequence == from_boxes.PerFrameFunctionalGroupsSequence
    assert full.SegmentSequence == from_boxes.SegmentSequence
    assert full.PixelData == from_boxes.PixelData
    if options.transfer_syntax is SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN:
        expected = frames(full)
        assert len({row[1] for row in expected}) > 1  # frames on several source slices
        assert frames(from_boxes) == expected


def test_a_boxed_probability_map_makes_the_same_fractional_seg(source) -> None:
    findings = lungs_and_nodules(source, fractional=True)
    options = SegOptions()
    full = build_segmentation(findings, source, seg_context(options, fractional=True))
    from_boxes = build_segmentation(boxed(findings), source, seg_context(options, True))
    assert full.SegmentationType == from_boxes.SegmentationType == "FRACTIONAL"
    assert full.PerFrameFunctionalGroupsSequence == from_boxes.PerFrameFunctionalGroupsSequence
    assert full.PixelData == from_boxes.PixelData


def test_every_output_kind_is_the_same_from_boxed_masks(tmp_path) -> None:
    """SR (the slices each segment touches), text SR (its key images) and the burned-in
    captures read boxed masks frame by frame and say the same as from full masks."""
    _, source = synthetic_ct(tmp_path)
    findings = full_findings(source)
    full = build_outputs(findings, source, context())
    from_boxes = build_outputs(boxed(findings), source, context())
    assert [r.kind for r in full] == [r.kind for r in from_boxes]
    for mine, theirs in zip(full, from_boxes, strict=True):
        assert mine.sop_instance_uid == theirs.sop_instance_uid
        if "PixelData" in mine.dataset:
            assert mine.dataset.PixelData == theirs.dataset.PixelData, mine.kind
        if "ContentSequence" in mine.dataset:
            assert mine.dataset.ContentSequence == theirs.dataset.ContentSequence, mine.kind
        if "CurrentRequestedProcedureEvidenceSequence" in mine.dataset:
            assert (
                mine.dataset.CurrentRequestedProcedureEvidenceSequence
                == theirs.dataset.CurrentRequestedProcedureEvidenceSequence
            )
