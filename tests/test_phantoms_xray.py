"""Chest radiograph phantoms: the truth they return, and the DICOM they write."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation
from scipy import ndimage

from models.loading import load_plugin_input
from models.phantoms.chest_xray import (
    ChestXrayAnatomy,
    Photometric,
    RadiographKind,
    make_chest_xray,
    render_chest_xray,
)


@pytest.mark.parametrize("ctr", [0.36, 0.45, 0.55, 0.66])
def test_truth_ctr_is_the_one_requested_and_measured_on_the_masks(ctr: float) -> None:
    phantom = render_chest_xray(ChestXrayAnatomy(ctr=ctr, rows=320, columns=288, seed=7))
    truth = phantom.truth
    assert abs(truth.ctr - ctr) < 0.01
    heart_columns = np.flatnonzero(truth.heart.any(axis=0))
    thorax_columns = np.flatnonzero((truth.lungs | truth.heart).any(axis=0))
    assert truth.ctr == pytest.approx(
        (np.ptp(heart_columns) + 1) / (np.ptp(thorax_columns) + 1), abs=1e-9
    )
    assert truth.cardiomegaly == (truth.ctr > 0.5)
    assert truth.heart_width_mm == pytest.approx(
        (np.ptp(heart_columns) + 1) * phantom.anatomy.pixel_spacing[1]
    )


def test_anatomy_is_two_lungs_with_the_heart_between_them_left_of_the_patient() -> None:
    phantom = render_chest_xray(ChestXrayAnatomy(ctr=0.5, rows=256, columns=256, seed=3))
    lungs, heart = phantom.truth.lungs, phantom.truth.heart
    labelled, count = ndimage.label(lungs)
    assert count == 2
    assert not (lungs & heart).any()
    assert ndimage.label(heart)[1] == 1
    centres = sorted(ndimage.center_of_mass(lungs, labelled, [1, 2]), key=lambda c: c[1])
    _, heart_column = ndimage.center_of_mass(heart)
    assert centres[0][1] < heart_column < centres[1][1]
    # PA view: the patient's left is image right, and most of the heart lies there
    assert heart_column > 128
    # lungs are darker than the heart on the image itself
    assert phantom.image[lungs].mean() < phantom.image[heart].mean() - 0.1


def test_same_seed_same_phantom_and_another_seed_another_patient() -> None:
    anatomy = ChestXrayAnatomy(ctr=0.48, rows=200, columns=200, seed=11)
    first, again = render_chest_xray(anatomy), render_chest_xray(anatomy)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.truth.lungs, again.truth.lungs)
    other = render_chest_xray(ChestXrayAnatomy(ctr=0.48, rows=200, columns=200, seed=12))
    assert not np.array_equal(first.truth.lungs, other.truth.lungs)


def test_high_resolution_masks_agree_with_low_resolution_ones() -> None:
    small = render_chest_xray(ChestXrayAnatomy(ctr=0.55, rows=256, columns=256, seed=5))
    large = render_chest_xray(ChestXrayAnatomy(ctr=0.55, rows=1024, columns=1024, seed=5))
    assert large.truth.lungs.shape == (1024, 1024)
    assert abs(large.truth.ctr - small.truth.ctr) < 0.01
    coarse = large.truth.lungs.reshape(256, 4, 256, 4).mean(axis=(1, 3)) > 0.5
    overlap = (coarse & small.truth.lungs).sum() * 2 / (coarse.sum() + small.truth.lungs.sum())
    assert overlap > 0.97


def test_anatomy_rejects_what_it_cannot_draw() -> None:
    with pytest.raises(ValueError, match="ctr"):
        ChestXrayAnatomy(ctr=0.9)
    with pytest.raises(ValueError, match="64"):
        ChestXrayAnatomy(rows=32)


@pytest.mark.parametrize("kind", list(RadiographKind))
@pytest.mark.parametrize("photometric", list(Photometric))
def test_written_instance_has_radiography_headers_and_loads_as_drawn(
    tmp_path, kind: RadiographKind, photometric: Photometric
) -> None:
    anatomy = ChestXrayAnatomy(ctr=0.52, rows=300, columns=260, seed=21)
    written = make_chest_xray(tmp_path, kind=kind, photometric=photometric, anatomy=anatomy)
    ds = pydicom.dcmread(written.path)
    assert ds.Modality == kind.value
    assert ds.SOPClassUID == (
        DigitalXRayImageStorageForPresentation
        if kind is RadiographKind.DX
        else ComputedRadiographyImageStorage
    )
    assert ds.PhotometricInterpretation == photometric.value
    assert (ds.BodyPartExamined, ds.ViewPosition) == ("CHEST", "PA")
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(anatomy.pixel_spacing, abs=1e-5)
    assert "ImagerPixelSpacing" in ds
    if kind is RadiographKind.DX:
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        expected_shape = "IDENTITY" if photometric is Photometric.MONOCHROME2 else "INVERSE"
        assert ds.PresentationLUTShape == expected_shape
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        written.study_instance_uid,
        written.series_instance_uid,
        written.sop_instance_uid,
    )

    loaded = load_plugin_input([written.path])
    assert loaded.pixels.shape == (1, 300, 260)
    assert loaded.pixel_spacing == pytest.approx(anatomy.pixel_spacing, abs=1e-5)
    # after the loader's MONOCHROME1 inversion both encodings are the image that was drawn
    top = (1 << int(ds.BitsStored)) - 1
    assert np.abs(loaded.pixels[0] / top - written.phantom.image).max() <= 0.5 / top + 1e-6


def test_uids_follow_the_seed(tmp_path) -> None:
    anatomy = ChestXrayAnatomy(rows=128, columns=128, seed=4)
    first = make_chest_xray(tmp_path / "a", anatomy=anatomy)
    again = make_chest_xray(tmp_path / "b", anatomy=anatomy)
    other = make_chest_xray(tmp_path / "c", anatomy=ChestXrayAnatomy(rows=128, columns=128, seed=5))
    assert first.sop_instance_uid == again.sop_instance_uid
    assert first.study_instance_uid != other.study_instance_uid


@pytest.mark.dicom3tools
def test_every_variant_passes_the_validator(tmp_path, validate_dicom) -> None:
    for kind in RadiographKind:
        for photometric in Photometric:
            make_chest_xray(
                tmp_path / f"{kind.value}-{photometric.value}",
                kind=kind,
                photometric=photometric,
                anatomy=ChestXrayAnatomy(ctr=0.58, rows=256, columns=256, seed=8),
            )
    result = validate_dicom(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
