"""The SEG fast paths give what highdicom and pydicom give on their own: pixel data packed
once per segment equals highdicom's own encoding of the 4D stack, and pre-encoded per-frame
functional groups are written byte for byte as pydicom writes them."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from outputs_support import EVERY_FRAME_NESTED, sphere_mask, write_synthetic_ct
from pydicom.sr.codedict import codes

from models.api import AlgorithmIdentification, Findings, PluginInput, Segment
from models.loading import load_plugin_input
from node.outputs import OutputContext, build_outputs
from node.outputs.encoding import preencode_frame_groups
from node.outputs.seg import build_segmentation, source_layout
from node.shared_types import OutputKind

CONTEXT = OutputContext(
    job_id="job-enc",
    plugin_name="test-plugin",
    plugin_version="1.0.0",
    outputs=(OutputKind.SEG, OutputKind.SR),
    seg=EVERY_FRAME_NESTED,
)


def series(folder: Path, size: int) -> PluginInput:
    return load_plugin_input(write_synthetic_ct(folder, slices=8, size=size))


def lungs_and_nodules(source: PluginInput) -> Findings:
    """Two large segments and three small ones, two of the small inside a large one."""
    centre = source.shape[1] / 2
    spheres = [
        ((4, centre, centre / 2), centre / 2.5),
        ((4, centre, 1.5 * centre), centre / 2.5),
        ((3, centre, centre / 2), 2),  # inside the first
        ((5, centre, 1.5 * centre), 1.5),  # inside the second
        ((1, 2, 2), 1),  # on its own, in a corner
    ]
    segments = tuple(
        Segment(
            f"s{number}",
            f"Segment {number}",
            codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Nodule,
            sphere_mask(source.shape, center, radius),
        )
        for number, (center, radius) in enumerate(spheres, 1)
    )
    return Findings(algorithm=AlgorithmIdentification("p", "1"), segments=segments)


def highdicom_reference(built: pydicom.Dataset, findings: Findings, source: PluginInput):
    """highdicom's own SEG of the same masks, given as the plain 4D bool stack."""
    return hd.seg.Segmentation(
        source_images=list(source_layout(source).images),
        pixel_array=np.stack([s.mask for s in findings.segments], axis=-1),
        segmentation_type="BINARY",
        segment_descriptions=[
            hd.seg.SegmentDescription.from_dataset(item) for item in built.SegmentSequence
        ],
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=1,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
        manufacturer="reference",
        manufacturer_model_name="reference",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=False,
    )


def to_bytes(dataset: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [48, 30])  # 48x48 is packed per segment; 30x30 is not
def test_seg_pixels_equal_highdicoms_encoding_of_the_stack(tmp_path, size):
    source = series(tmp_path, size)
    findings = lungs_and_nodules(source)
    seg = build_segmentation(findings, source, CONTEXT)
    reference = highdicom_reference(seg, findings, source)
    assert seg.SegmentsOverlap == reference.SegmentsOverlap == "YES"
    assert seg.NumberOfFrames == reference.NumberOfFrames == 8 * len(findings.segments)
    assert seg.PixelData == reference.PixelData
    for ours, theirs in zip(
        seg.PerFrameFunctionalGroupsSequence,
        reference.PerFrameFunctionalGroupsSequence,
        strict=True,
    ):
        assert (
            ours.FrameContentSequence[0].DimensionIndexValues
            == theirs.FrameContentSequence[0].DimensionIndexValues
        )
        assert (
            ours.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            == theirs.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        )


def test_separate_segments_are_marked_as_not_overlapping(tmp_path):
    source = series(tmp_path, 48)
    findings = lungs_and_nodules(source)
    apart = dataclasses.replace(findings, segments=findings.segments[:2] + findings.segments[4:])
    seg = build_segmentation(apart, source, CONTEXT)
    assert seg.SegmentsOverlap == highdicom_reference(seg, apart, source).SegmentsOverlap == "NO"
    read = hd.seg.segread(io.BytesIO(to_bytes(seg)))
    values = read.get_pixels_by_source_instance(
        [s.sop_instance_uid for s in source.sources], combine_segments=False
    )
    for index, segment in enumerate(apart.segments):
        np.testing.assert_array_equal(values[..., index].astype(bool), segment.mask)


def test_preencoded_frame_groups_are_written_as_pydicom_writes_them(tmp_path):
    source = series(tmp_path, 48)
    seg = build_segmentation(lungs_and_nodules(source), source, CONTEXT)
    plain = to_bytes(seg)
    items = [pydicom.Dataset(item) for item in seg.PerFrameFunctionalGroupsSequence]
    assert preencode_frame_groups(seg)
    assert seg.get_item(0x52009230).is_raw
    assert to_bytes(seg) == plain
    assert not preencode_frame_groups(seg)  # already encoded: left as it is
    read_back = seg.PerFrameFunctionalGroupsSequence  # decodes the raw element
    assert len(read_back) == len(items)
    for ours, theirs in zip(read_back, items, strict=True):
        assert ours.FrameContentSequence == theirs.FrameContentSequence
        assert ours.DerivationImageSequence == theirs.DerivationImageSequence
        position = ours.PlanePositionSequence[0].ImagePositionPatient
        assert list(position) == list(theirs.PlanePositionSequence[0].ImagePositionPatient)
    assert to_bytes(seg) == plain


def test_build_outputs_hands_out_a_pre_encoded_seg_that_reads_back(tmp_path):
    source = series(tmp_path, 48)
    findings = lungs_and_nodules(source)
    (result,) = build_outputs(
        findings, source, dataclasses.replace(CONTEXT, outputs=(OutputKind.SEG,))
    )
    assert result.dataset.get_item(0x52009230).is_raw
    read = hd.seg.segread(result.write(tmp_path))
    values = read.get_pixels_by_source_instance(
        [s.sop_instance_uid for s in source.sources], combine_segments=False
    )
    for index, segment in enumerate(findings.segments):
        np.testing.assert_array_equal(values[..., index].astype(bool), segment.mask)
