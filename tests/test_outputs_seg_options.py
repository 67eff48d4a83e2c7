"""SEG options (node.yaml ``outputs``): exclusive or nested segments, empty frames left out,
the transfer syntax and the storage class. Every variant reads back with highdicom onto the
right source images, equals highdicom's own encoding of the same masks, and the BINARY ones
pass the validator."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from outputs_support import sphere_mask, write_synthetic_ct
from pydantic import ValidationError
from pydicom.sr.codedict import codes

from models.api import AlgorithmIdentification, Findings, PluginInput, Segment
from models.loading import load_plugin_input
from node.output_settings import OutputsConfig, OverlappingSegments, SegTransferSyntax, SegType
from node.outputs import OutputContext, ResultInstance, build_outputs
from node.outputs.context import SegOptions
from node.outputs.encoding import decompress, preencode_frame_groups
from node.outputs.seg import build_segmentation, source_layout
from node.outputs.seg_overlap import exclusive_masks
from node.shared_types import OutputKind

DEFAULT = SegOptions()
NESTED = SegOptions(overlapping=OverlappingSegments.NESTED)
NATIVE = SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN
J2K = SegTransferSyntax.JPEG2000_LOSSLESS
DEFLATED = SegTransferSyntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
BINARY_VARIANTS = [
    SegOptions(transfer_syntax=syntax, omit_empty_frames=omit)
    for syntax in (DEFLATED, NATIVE, J2K)
    for omit in (True, False)
]


def context(options: SegOptions = DEFAULT) -> OutputContext:
    return OutputContext(
        job_id="job-seg-options",
        plugin_name="test-plugin",
        plugin_version="1.0.0",
        outputs=(OutputKind.SEG,),
        seg=options,
    )


def lungs_and_nodules(source: PluginInput) -> Findings:
    """Two lungs, a nodule inside each, one nodule on its own; lungs first, as plugins
    list them."""
    frames, rows, columns = source.shape
    middle, half = frames / 2, rows / 2

    def segment(key: str, kind, center, radius) -> Segment:
        return Segment(
            key, key, codes.SCT.AnatomicalStructure, kind, sphere_mask(source.shape, center, radius)
        )

    return Findings(
        algorithm=AlgorithmIdentification("p", "1"),
        segments=(
            segment("right lung", codes.SCT.Lung, (middle, half, columns / 4), columns / 4.5),
            segment("left lung", codes.SCT.Lung, (middle, half, 3 * columns / 4), columns / 4.5),
            segment("nodule 1", codes.SCT.Nodule, (middle - 1, half, columns / 4), 2),
            segment("nodule 2", codes.SCT.Nodule, (middle + 1, half + 2, 3 * columns / 4), 1.5),
            segment("nodule 3", codes.SCT.Nodule, (1, 2, 2), 1),
        ),
    )


@pytest.fixture(scope="module", params=[48, 36], ids=["packed", "highdicom-path"])
def source(request, tmp_path_factory) -> PluginInput:
    """48x48 goes through the bit-packed path; 36x36 (not a multiple of 64 pixels) through
    highdicom's own."""
    folder = tmp_path_factory.mktemp(f"ct{request.param}")
    return load_plugin_input(write_synthetic_ct(folder, slices=8, size=request.param))


def read_back(seg: pydicom.Dataset) -> hd.seg.Segmentation:
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return hd.seg.segread(buffer)


def masks_by_source(seg: hd.seg.Segmentation, source: PluginInput) -> np.ndarray:
    """(frames, rows, columns, segments) as highdicom reads them per source image."""
    uids = [frame.sop_instance_uid for frame in source.sources]
    return seg.get_pixels_by_source_instance(uids, combine_segments=False).astype(bool)


def test_exclusive_by_default_the_smaller_segment_keeps_shared_voxels(source):
    findings = lungs_and_nodules(source)
    seg = build_segmentation(findings, source, context())
    assert seg.SegmentsOverlap == "NO"
    read = masks_by_source(read_back(seg), source)
    assert read.sum(axis=-1).max() == 1  # no voxel in two segments
    masks = [segment.mask for segment in findings.segments]
    for index in (2, 3, 4):  # nodules keep every voxel
        np.testing.assert_array_equal(read[..., index], masks[index])
    np.testing.assert_array_equal(read[..., 0], masks[0] & ~masks[2])  # lung minus nodule
    np.testing.assert_array_equal(read[..., 1], masks[1] & ~masks[3])
    assert (read[..., 0] | read[..., 2]).sum() == masks[0].sum()  # nothing lost


def test_nested_keeps_every_mask_whole(source):
    findings = lungs_and_nodules(source)
    seg = build_segmentation(findings, source, context(NESTED))
    assert seg.SegmentsOverlap == "YES"
    read = masks_by_source(read_back(seg), source)
    for index, segment in enumerate(findings.segments):
        np.testing.assert_array_equal(read[..., index], segment.mask)
    assert (read[..., 0] & read[..., 2]).any()  # the nodule is in the lung too


def test_equal_sizes_go_to_the_earlier_segment():
    first = np.zeros((2, 8, 8), bool)
    first[0, :4] = True
    second = np.roll(first, 2, axis=1)  # same size, half shared
    kept = exclusive_masks([first, second])
    np.testing.assert_array_equal(kept[0], first)
    np.testing.assert_array_equal(kept[1], second & ~first)


@pytest.mark.parametrize(
    "options", BINARY_VARIANTS, ids=lambda o: f"{o.transfer_syntax}-omit{o.omit_empty_frames}"
)
def test_frames_reference_their_sources_and_read_back(source, options):
    findings = lungs_and_nodules(source)
    seg = build_segmentation(findings, source, context(options))
    small_j2k = options.transfer_syntax is J2K and source.shape[1] < 32
    assert seg.file_meta.TransferSyntaxUID == (
        NATIVE.uid if small_j2k else options.transfer_syntax.uid
    )
    expected = exclusive_masks([segment.mask for segment in findings.segments])
    uids = [frame.sop_instance_uid for frame in source.sources]
    positions = {h.SOPInstanceUID: list(map(float, h.ImagePositionPatient)) for h in source.headers}
    cited = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = list(map(float, item.PlanePositionSequence[0].ImagePositionPatient))
        assert position == pytest.approx(positions[uid])
        cited.append((number, uids.index(uid)))
    if options.omit_empty_frames:  # one frame per segment and slice it has pixels on
        filled = [
            (n, i)
            for n, mask in enumerate(expected, 1)
            for i in np.flatnonzero(mask.any(axis=(1, 2)))
        ]
        assert sorted(cited) == sorted(filled)
    else:
        assert len(cited) == len(uids) * len(expected)
    read = masks_by_source(read_back(seg), source)
    for index, mask in enumerate(expected):
        np.testing.assert_array_equal(read[..., index], mask)


@pytest.mark.parametrize(
    "options", BINARY_VARIANTS, ids=lambda o: f"{o.transfer_syntax}-omit{o.omit_empty_frames}"
)
def test_pixels_equal_highdicoms_own_encoding(source, options):
    """What ainode writes (the packed path for 48x48) equals highdicom's plain call with the
    exclusive masks as a 4D stack and the same options."""
    findings = lungs_and_nodules(source)
    seg = build_segmentation(findings, source, context(options))
    reference = hd.seg.Segmentation(
        source_images=list(source_layout(source).images),
        pixel_array=np.stack(exclusive_masks([s.mask for s in findings.segments]), axis=-1),
        segmentation_type="BINARY",
        segment_descriptions=[
            hd.seg.SegmentDescription.from_dataset(i) for i in seg.SegmentSequence
        ],
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=1,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
        manufacturer="reference",
        manufacturer_model_name="reference",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=options.omit_empty_frames,
        # deflate is applied to the whole dataset as it is written, not by highdicom
        transfer_syntax_uid=NATIVE.uid
        if options.transfer_syntax is DEFLATED
        else seg.file_meta.TransferSyntaxUID,
    )
    assert seg.NumberOfFrames == reference.NumberOfFrames
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
        assert ours.DerivationImageSequence == theirs.DerivationImageSequence


def test_labelmap_holds_every_segment_in_one_frame_per_slice(source):
    findings = lungs_and_nodules(source)
    options = SegOptions(seg_type=SegType.LABELMAP, transfer_syntax=SegTransferSyntax.RLE_LOSSLESS)
    seg = build_segmentation(findings, source, context(options))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    assert int(seg.NumberOfFrames) <= source.shape[0]
    read = masks_by_source(read_back(seg), source)
    for index, mask in enumerate(exclusive_masks([s.mask for s in findings.segments])):
        np.testing.assert_array_equal(read[..., index], mask)


def test_small_frames_fall_back_to_native_for_jpeg_2000(tmp_path):
    source = load_plugin_input(write_synthetic_ct(tmp_path, slices=4, size=24))
    seg = build_segmentation(
        lungs_and_nodules(source), source, context(SegOptions(transfer_syntax=J2K))
    )
    assert seg.file_meta.TransferSyntaxUID == NATIVE.uid


def test_invalid_combinations_say_what_to_change():
    with pytest.raises(ValidationError, match="jpeg2000_lossless, or seg_type: labelmap"):
        OutputsConfig(seg_transfer_syntax="rle_lossless")
    with pytest.raises(ValueError, match="set overlapping_segments: exclusive"):
        SegOptions(seg_type=SegType.LABELMAP, overlapping=OverlappingSegments.NESTED)
    config = OutputsConfig(
        overlapping_segments="nested",
        seg_omit_empty_frames=False,
        seg_transfer_syntax="explicit_vr_little_endian",
    )
    built = OutputContext.from_config(config, job_id="j", plugin_name="p", plugin_version="1")
    assert built.seg == SegOptions(OverlappingSegments.NESTED, SegType.BINARY, NATIVE, False)
    assert (
        OutputContext.from_config(
            OutputsConfig(), job_id="j", plugin_name="p", plugin_version="1"
        ).seg
        == SegOptions()
    )


@pytest.mark.dicom3tools
def test_every_binary_variant_validates(
    tmp_path: Path, validate_dicom: Callable[..., subprocess.CompletedProcess[str]]
):
    """One validator run over all BINARY variants, nested and exclusive, with the sources."""
    files = write_synthetic_ct(tmp_path / "ct", slices=8, size=48)
    source = load_plugin_input(files)
    findings = lungs_and_nodules(source)
    variants = [*BINARY_VARIANTS, dataclasses.replace(NESTED, transfer_syntax=NATIVE)]
    out = tmp_path / "out"
    out.mkdir()
    written = 0
    for number, options in enumerate(variants):
        if options.transfer_syntax is DEFLATED:
            continue  # dicom3tools 2022 cannot read deflate: see the next test
        results = build_outputs(
            findings, source, dataclasses.replace(context(options), job_id=f"v{number}")
        )
        results[0].write(out)
        written += 1
    assert len(list(out.iterdir())) == written == len(variants) - 2
    run = validate_dicom(tmp_path / "out", sources=(tmp_path / "ct",))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "-> PASS" in run.stdout


def test_decompressing_a_jpeg_2000_seg_gives_the_native_seg(source, tmp_path):
    """The sender's fallback for a peer that refuses JPEG 2000: decompressed, the SEG equals
    the one written uncompressed (pydicom alone leaves one byte per pixel at 1 bit)."""
    findings = lungs_and_nodules(source)
    native = build_segmentation(findings, source, context(SegOptions(transfer_syntax=NATIVE)))
    (compressed,) = build_outputs(findings, source, context(SegOptions(transfer_syntax=J2K)))
    dataset = pydicom.dcmread(compressed.write(tmp_path))
    decompress(dataset)
    assert dataset.file_meta.TransferSyntaxUID == NATIVE.uid
    assert dataset.PixelData == native.PixelData


@pytest.mark.parametrize("syntax", [J2K, DEFLATED])
def test_compressed_seg_frame_groups_are_pre_encoded_as_pydicom_writes_them(source, syntax):
    seg = build_segmentation(
        lungs_and_nodules(source), source, context(SegOptions(transfer_syntax=syntax))
    )
    plain = io.BytesIO()
    seg.save_as(plain, enforce_file_format=True)
    assert preencode_frame_groups(seg)
    assert seg.get_item(0x52009230).is_raw
    ours = io.BytesIO()
    seg.save_as(ours, enforce_file_format=True)
    assert ours.getvalue() == plain.getvalue()


def test_dicom3tools_cannot_read_a_deflated_seg_and_dcmtk_can(source, tmp_path, validate_dicom):
    """Why deflate is not the default: the validator's dicom3tools (2022) misreads the
    deflated stream, while DCMTK (Orthanc's toolkit) reads it, and inflated it validates."""
    (deflated,) = build_outputs(
        lungs_and_nodules(source), source, context(SegOptions(transfer_syntax=DEFLATED))
    )
    path = deflated.write(tmp_path / "deflated.dcm")
    dcmdump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True)
    assert dcmdump.returncode == 0 and "SegmentSequence" in dcmdump.stdout
    dciodvfy = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    assert "Dicom dataset read failed" in dciodvfy.stdout + dciodvfy.stderr
    inflated = tmp_path / "inflated"
    inflated.mkdir()
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = NATIVE.uid
    dataset.save_as(inflated / "seg.dcm", enforce_file_format=True)
    assert validate_dicom(inflated).returncode == 0


def test_a_deflated_seg_sent_uncompressed_is_the_native_seg(source, tmp_path):
    """The sender's fallback for a peer that refuses deflate reads the file and lets
    pynetdicom encode it uncompressed: the same dataset as the SEG written natively."""
    findings = lungs_and_nodules(source)
    native = build_segmentation(findings, source, context(SegOptions(transfer_syntax=NATIVE)))
    (deflated,) = build_outputs(findings, source, context(SegOptions(transfer_syntax=DEFLATED)))
    path = deflated.write(tmp_path / "deflated.dcm")
    native_path = ResultInstance.of(OutputKind.SEG, native).write(tmp_path / "native.dcm")
    assert path.stat().st_size < native_path.stat().st_size
    dataset, plain = pydicom.dcmread(path), pydicom.dcmread(native_path)
    assert dataset.file_meta.TransferSyntaxUID == DEFLATED.uid
    assert dataset.PixelData == plain.PixelData

    def frames(seg: pydicom.Dataset) -> list[tuple[str, list[float]]]:
        return [
            (
                item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID,
                list(item.PlanePositionSequence[0].ImagePositionPatient),
            )
            for item in seg.PerFrameFunctionalGroupsSequence
        ]

    assert frames(dataset) == frames(plain)
