"""Spool files → PluginInput: decoding, modality LUT, MONOCHROME1, volumes and frame order."""

from __future__ import annotations

import random
from pathlib import Path

import highdicom
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.loading import PixelDecodeError, SeriesLoadError, load_plugin_input

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _ct_slice(folder: Path, series: str, z: float, number: int, stored: np.ndarray) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CT_IMAGE
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.8, 0.7]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_shuffled_series_becomes_a_volume_with_sources_in_volume_order(tmp_path: Path) -> None:
    series = generate_uid()
    rng = np.random.default_rng(0)
    stored = {z: rng.integers(0, 2000, size=(6, 5)) for z in (0.0, 3.0, 6.0, 9.0)}
    # instance numbers deliberately disagree with the slice positions
    paths = {
        z: _ct_slice(tmp_path, series, z, 10 - i, s) for i, (z, s) in enumerate(stored.items())
    }
    shuffled = list(paths.values())
    random.Random(1).shuffle(shuffled)
    loaded = load_plugin_input(shuffled)

    assert loaded.volume is not None
    assert loaded.volume.spacing == pytest.approx((3.0, 0.8, 0.7))
    assert loaded.pixel_spacing == (0.8, 0.7)
    np.testing.assert_array_equal(loaded.volume.array, loaded.pixels)
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: z for z, p in paths.items()}
    for index, source in enumerate(loaded.sources):
        z = by_uid[source.sop_instance_uid]
        np.testing.assert_array_equal(loaded.pixels[index], stored[z] * 2.0 - 1024)  # HU
        position = loaded.volume.map_indices_to_reference(np.array([[index, 0, 0]]))[0]
        assert position[2] == pytest.approx(z)
    assert [h.SOPInstanceUID for h in loaded.headers] and "PixelData" not in loaded.headers[0]


def test_uneven_slices_have_no_volume_but_usable_frames(tmp_path: Path) -> None:
    series = generate_uid()
    zs = (0.0, 1.0, 5.0)  # like the gantry-tilted head CT: spacing is not regular
    paths = [_ct_slice(tmp_path, series, z, i + 1, np.full((4, 4), i)) for i, z in enumerate(zs)]
    loaded = load_plugin_input(paths)
    assert loaded.volume is None
    assert loaded.shape == (3, 4, 4)
    assert [float(p[0, 0]) for p in loaded.pixels] == [-1024.0, -1022.0, -1020.0]


def test_files_of_two_series_are_refused(tmp_path: Path) -> None:
    a = _ct_slice(tmp_path, generate_uid(), 0.0, 1, np.zeros((2, 2)))
    b = _ct_slice(tmp_path, generate_uid(), 1.0, 2, np.zeros((2, 2)))
    with pytest.raises(SeriesLoadError, match="2 series"):
        load_plugin_input([a, b])


@pytest.mark.corpus
def test_lidc_chest_ct_matches_highdicoms_own_volume(corpus: Path) -> None:
    files = sorted((corpus / "ct-chest-lidc" / "LIDC-IDRI-0001").rglob("*.dcm"))
    loaded = load_plugin_input(files)
    reference = highdicom.get_volume_from_series(
        [pydicom.dcmread(f) for f in files], dtype=np.float32
    )
    assert loaded.volume is not None
    np.testing.assert_allclose(loaded.volume.affine, reference.affine)
    np.testing.assert_array_equal(loaded.pixels, reference.array)
    assert loaded.pixels.min() < -900  # Hounsfield units: air


@pytest.mark.corpus
def test_gantry_tilted_head_ct_has_no_volume(corpus: Path) -> None:
    loaded = load_plugin_input(sorted((corpus / "ct-head-ge-gantry-tilt").glob("*.dcm")))
    assert loaded.volume is None
    assert loaded.shape[0] == len(loaded.sources) == 28


@pytest.mark.corpus
def test_every_lossless_encoding_of_one_image_decodes_to_the_same_pixels(corpus: Path) -> None:
    files = sorted((corpus / "transfer-syntaxes" / "dcm_qa_ts").glob("*.dcm"))
    syntaxes = {
        pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in files
    }
    assert len(syntaxes) >= 7
    reference = load_plugin_input([files[0]]).pixels
    for path in files[1:]:
        np.testing.assert_array_equal(load_plugin_input([path]).pixels, reference, str(path))


@pytest.mark.corpus
def test_missing_codec_names_the_transfer_syntax(corpus: Path) -> None:
    path = corpus / "transfer-syntaxes/orthanc/TransferSyntaxes/1.2.840.10008.1.2.4.51.dcm"
    with pytest.raises(PixelDecodeError, match=r"JPEG Extended.*1\.2\.840\.10008\.1\.2\.4\.51"):
        load_plugin_input([path])


@pytest.mark.corpus
def test_monochrome1_radiograph_is_inverted_and_uses_its_pixel_spacing(corpus: Path) -> None:
    path = corpus / "xr-chest" / "Monochrome1-Jpeg.dcm"
    ds = pydicom.dcmread(path)
    loaded = load_plugin_input([path])
    assert loaded.photometric_interpretation == "MONOCHROME1"
    assert loaded.volume is None
    raw = ds.pixel_array.astype(np.float32)
    top = 2**ds.BitsStored - 1
    np.testing.assert_array_equal(loaded.pixels[0], top - raw)
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    assert loaded.pixel_spacing == (float(spacing[0]), float(spacing[1]))


@pytest.mark.corpus
def test_enhanced_multiframe_sources_carry_frame_numbers(corpus: Path) -> None:
    path = corpus / "mr-enhanced-multiframe" / "misc" / "eCT_Supplemental.dcm"
    ds = pydicom.dcmread(path)
    loaded = load_plugin_input([path])
    assert loaded.shape[0] == ds.NumberOfFrames
    assert sorted(s.frame_number for s in loaded.sources) == list(range(1, ds.NumberOfFrames + 1))
    assert loaded.volume is not None
    for index, source in enumerate(loaded.sources):
        group = ds.PerFrameFunctionalGroupsSequence[source.frame_number - 1]
        position = group.PlanePositionSequence[0].ImagePositionPatient
        mapped = loaded.volume.map_indices_to_reference(np.array([[index, 0, 0]]))[0]
        np.testing.assert_allclose(mapped, [float(v) for v in position], atol=1e-3)


@pytest.mark.corpus
def test_colour_jpeg2000_decodes_to_the_luminance_of_the_uncompressed_image(
    corpus: Path,
) -> None:
    folder = corpus / "transfer-syntaxes" / "pydicom-data"
    plain = load_plugin_input([folder / "US1_UNCR.dcm"])
    rgb = pydicom.dcmread(folder / "US1_UNCR.dcm").pixel_array.astype(np.float32)
    np.testing.assert_allclose(plain.pixels[0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
    lossless = load_plugin_input([folder / "US1_J2KR.dcm"])  # stored as YBR_RCT
    np.testing.assert_array_equal(lossless.pixels, plain.pixels)


def test_headers_leave_out_pixel_data_without_touching_the_source(tmp_path: Path) -> None:
    path = _ct_slice(tmp_path, generate_uid(), 0.0, 1, np.ones((2, 2)))
    (header,) = load_plugin_input([path]).headers
    assert "PixelData" not in header
    assert header.RescaleIntercept == -1024
    assert header.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
