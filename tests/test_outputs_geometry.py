"""SEG geometry equals the source geometry frame by frame (acceptance 3 of the outputs issue):
stacked CT, gantry-tilted CT, enhanced multi-frame MR/CT with per-frame or shared functional
groups, reordered and partial multi-frame input; sources a SEG cannot describe fail clearly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from outputs_support import EVERY_FRAME_NESTED, full_findings, write_synthetic_ct

from models.api import Findings, PluginInput
from models.loading import load_plugin_input
from node.outputs import OutputContext, SegmentationGeometryError, build_outputs
from node.shared_types import OutputKind

CONTEXT = OutputContext(
    job_id="geometry",
    plugin_name="geo",
    plugin_version="1",
    outputs=(OutputKind.SEG,),
)
TOLERANCE_MM = 1e-3


def _group(ds: pydicom.Dataset, frame: int | None, name: str) -> pydicom.Dataset | None:
    """A functional group item of a (1-based) frame: per-frame first, then shared."""
    if frame is not None and name in ds.PerFrameFunctionalGroupsSequence[frame - 1]:
        return ds.PerFrameFunctionalGroupsSequence[frame - 1][name][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    return shared[0][name][0] if shared and name in shared[0] else None


def source_geometry(header: pydicom.Dataset, frame: int | None) -> dict[str, np.ndarray]:
    if "PerFrameFunctionalGroupsSequence" in header:
        return {
            "position": np.array(
                _group(header, frame, "PlanePositionSequence").ImagePositionPatient, float
            ),
            "orientation": np.array(
                _group(header, frame, "PlaneOrientationSequence").ImageOrientationPatient, float
            ),
            "spacing": np.array(_group(header, frame, "PixelMeasuresSequence").PixelSpacing, float),
        }
    return {
        "position": np.array(header.ImagePositionPatient, float),
        "orientation": np.array(header.ImageOrientationPatient, float),
        "spacing": np.array(header.PixelSpacing, float),
    }


def assert_geometry_follows_source(seg: pydicom.Dataset, source: PluginInput) -> int:
    """Every SEG frame's position, orientation and spacing equal those of its source frame."""
    headers = {h.SOPInstanceUID: h for h in source.headers}
    assert seg.FrameOfReferenceUID == source.headers[0].FrameOfReferenceUID
    checked = 0
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, 1):
        cited = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = int(cited.ReferencedFrameNumber) if "ReferencedFrameNumber" in cited else None
        expected = source_geometry(headers[cited.ReferencedSOPInstanceUID], frame)
        actual = {
            "position": np.array(
                _group(seg, number, "PlanePositionSequence").ImagePositionPatient, float
            ),
            "orientation": np.array(
                _group(seg, number, "PlaneOrientationSequence").ImageOrientationPatient, float
            ),
            "spacing": np.array(_group(seg, number, "PixelMeasuresSequence").PixelSpacing, float),
        }
        for name, value in expected.items():
            np.testing.assert_allclose(
                actual[name], value, atol=TOLERANCE_MM, err_msg=f"SEG frame {number} {name}"
            )
        checked += 1
    return checked


def segment_pixels_by_source(seg: pydicom.Dataset, segment: int) -> dict[tuple, np.ndarray]:
    """(source uid, source frame) -> the segment's decoded frame."""
    import highdicom as hd

    decoded = hd.seg.Segmentation.from_dataset(seg, copy=False)
    frames = decoded.pixel_array
    result = {}
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != segment:
            continue
        cited = item.DerivationImageSequence[0].SourceImageSequence[0]
        frame = int(cited.ReferencedFrameNumber) if "ReferencedFrameNumber" in cited else None
        result[(cited.ReferencedSOPInstanceUID, frame)] = frames[index].astype(bool)
    return result


def filled_frames(findings: Findings) -> int:
    """SEG frames when empty frames are left out: each segment's slices with a pixel."""
    return sum(int(segment.binary.any(axis=(1, 2)).sum()) for segment in findings.segments)


def seg_of(
    source: PluginInput, context: OutputContext = CONTEXT
) -> tuple[pydicom.Dataset, Findings]:
    findings = full_findings(source, report=False)
    (result,) = build_outputs(findings, source, context)
    return result.dataset, findings


def test_synthetic_gantry_tilt_follows_source(tmp_path: Path):
    source = load_plugin_input(write_synthetic_ct(tmp_path, slices=8, size=32, tilt=True))
    seg, findings = seg_of(source)
    assert assert_geometry_follows_source(seg, source) == filled_frames(findings)


def test_masks_land_on_their_source_frames(tmp_path: Path):
    source = load_plugin_input(write_synthetic_ct(tmp_path, slices=8, size=32))
    seg, findings = seg_of(source)
    by_source = segment_pixels_by_source(seg, 1)
    mask = findings.segments[0].mask
    for index, frame in enumerate(source.sources):
        if mask[index].any():
            np.testing.assert_array_equal(by_source[(frame.sop_instance_uid, None)], mask[index])
        else:  # empty frames are left out
            assert (frame.sop_instance_uid, None) not in by_source


@pytest.mark.corpus
@pytest.mark.parametrize(
    "relative",
    ["ct-head-ge-gantry-tilt", "ct-chest-lidc"],
)
def test_corpus_stacks_follow_source(corpus: Path, relative: str):
    files = sorted((corpus / relative).rglob("*.dcm"))
    by_series: dict[str, list[Path]] = {}
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
        by_series.setdefault(uid, []).append(path)
    source = load_plugin_input(min(by_series.values(), key=len))
    seg, findings = seg_of(source)
    assert assert_geometry_follows_source(seg, source) == filled_frames(findings)


@pytest.mark.corpus
@pytest.mark.parametrize(
    "relative",
    [
        "mr-enhanced-multiframe/siemens-xa10/6_1.dcm",  # geometry per frame
        "mr-enhanced-multiframe/misc/eCT_Supplemental.dcm",  # enhanced CT
    ],
)
def test_enhanced_multiframe_follows_source(corpus: Path, relative: str):
    source = load_plugin_input([corpus / relative])
    assert all(frame.frame_number is not None for frame in source.sources)
    before = str(source.headers[0])
    seg, findings = seg_of(source)
    assert str(source.headers[0]) == before  # geometry rewritten on a copy only
    assert assert_geometry_follows_source(seg, source) == filled_frames(findings)


@pytest.mark.corpus
def test_partial_and_reordered_multiframe_input(corpus: Path):
    """A plugin that got frames 6..2 (reversed, frame 1 left out) still gets a SEG over
    every source frame, with each mask frame on the source frame it came from."""
    full = load_plugin_input([corpus / "mr-enhanced-multiframe/siemens-xa10/6_1.dcm"])
    order = [5, 4, 3, 2, 1]
    partial = dataclasses.replace(
        full,
        pixels=full.pixels[order],
        sources=tuple(full.sources[i] for i in order),
        volume=None,
    )
    seg, findings = seg_of(partial, dataclasses.replace(CONTEXT, seg=EVERY_FRAME_NESTED))
    assert int(seg.NumberOfFrames) == len(full.sources) * len(findings.segments)
    assert_geometry_follows_source(seg, partial)
    by_source = segment_pixels_by_source(seg, 1)
    mask = findings.segments[0].mask
    uid = full.sources[0].sop_instance_uid
    for position, index in enumerate(order):
        frame_number = full.sources[index].frame_number
        np.testing.assert_array_equal(by_source[(uid, frame_number)], mask[position])
    assert not by_source[(uid, full.sources[0].frame_number)].any()  # not given: empty


@pytest.mark.corpus
@pytest.mark.parametrize(
    "relative",
    ["mr-enhanced-multiframe/misc/MOVEKNEE.dcm", "mr-enhanced-multiframe/philips/IM_0027_fMAP.dcm"],
)
def test_repeated_positions_fail_with_a_clear_message(corpus: Path, relative: str):
    source = load_plugin_input([corpus / relative])
    with pytest.raises(SegmentationGeometryError, match="lie at the same position"):
        seg_of(source)


def test_stack_with_two_orientations_fails_clearly(tmp_path: Path):
    axial = write_synthetic_ct(tmp_path / "a", slices=3, size=32)
    source = load_plugin_input(axial)
    headers = list(source.headers)
    tilted = pydicom.Dataset(headers[1])
    tilted.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    headers[1] = tilted
    odd = dataclasses.replace(source, headers=tuple(headers), volume=None)
    with pytest.raises(SegmentationGeometryError, match="orientation"):
        seg_of(odd)
