"""The CT and MR phantoms: their ground truth agrees with the voxels they draw, they are
reproducible from their seed, and the series they write validate and load like a scanner's."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from models.loading import load_plugin_input
from models.phantoms.chest_ct import (
    SOLID_NODULE_HU,
    ChestCTSpec,
    LungSide,
    NoduleKind,
    make_chest_ct,
    write_chest_ct,
)
from models.phantoms.dicom_series import (
    Modality,
    SeriesIdentity,
    SliceGeometry,
    StudyIdentity,
    write_ct_series,
    write_mr_series,
)
from models.phantoms.neck_mr import CarotidSide, NeckMRSpec, make_neck_mr, write_neck_mr


@pytest.fixture(scope="module")
def chest():
    return make_chest_ct(ChestCTSpec.small())


@pytest.fixture(scope="module")
def neck():
    return make_neck_mr(NeckMRSpec.small())


def test_chest_nodules_lie_in_their_lung_zone_clear_of_vessels_and_airways(chest) -> None:
    """Free nodules keep clear of vessels and airways; juxtavascular ones touch a vessel."""
    assert len(chest.nodules) == len(chest.spec.nodules)
    assert any(n.spec.touching_vessel for n in chest.nodules)
    lungs = {LungSide.RIGHT: chest.right_lung, LungSide.LEFT: chest.left_lung}
    spacing = np.array([chest.geometry.slice_spacing, *chest.geometry.pixel_spacing])
    vessels, airways = np.argwhere(chest.vessels), np.argwhere(chest.airways)
    for nodule in chest.nodules:
        centre = tuple(round(c) for c in nodule.centre_voxel)
        assert lungs[nodule.spec.side][centre], f"nodule {nodule} is not in its lung"
        reach = max(nodule.spec.a_mm, nodule.spec.c_mm)

        def nearest(voxels: np.ndarray, nodule=nodule) -> float:
            return float(
                np.linalg.norm((voxels - np.array(nodule.centre_voxel)) * spacing, axis=1).min()
            )

        assert nearest(airways) > reach + 2.0
        if nodule.spec.touching_vessel:
            assert nearest(vessels) < reach + 1.0  # within a voxel of its surface
        else:
            assert nearest(vessels) > reach + 2.0


def test_chest_nodule_voxels_match_their_analytic_size(chest) -> None:
    """Counting voxels above the half-maximum recovers the truth volume: the partial-volume
    drawing puts each surface where the ground truth says it is."""
    spacing = (chest.geometry.slice_spacing, *chest.geometry.pixel_spacing)
    voxel = float(np.prod(spacing))
    for nodule in chest.nodules:
        if nodule.spec.kind is not NoduleKind.SOLID or nodule.long_axis_mm < 5:
            continue
        if nodule.spec.touching_vessel:
            continue  # its box also holds the vessel it touches
        centre = np.array(nodule.centre_voxel)
        reach = [math.ceil((nodule.spec.a_mm + 2) / s) for s in spacing]
        box = tuple(
            slice(round(c) - r, round(c) + r + 1) for c, r in zip(centre, reach, strict=True)
        )
        local = chest.hounsfield[box]
        grids = np.ogrid[tuple(slice(b.start, b.stop) for b in box)]
        distance = np.sqrt(
            sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing, strict=True))
        )
        ball = distance <= nodule.spec.a_mm + 2  # the nodule's surroundings, no neighbours
        assert abs(float(local.max()) - SOLID_NODULE_HU) < 80
        half = (SOLID_NODULE_HU + float(np.median(local[ball & (local < -700)]))) / 2
        volume = (ball & (local > half)).sum() * voxel
        assert volume == pytest.approx(nodule.volume_mm3, rel=0.12)


def test_chest_phantom_is_reproducible_from_its_seed() -> None:
    spec = ChestCTSpec.small()
    first, again = make_chest_ct(spec), make_chest_ct(spec)
    other = make_chest_ct(replace(spec, seed=spec.seed + 1))
    assert np.array_equal(first.hounsfield, again.hounsfield)
    assert first.nodules == again.nodules
    assert first.nodules != other.nodules


def test_large_chest_spec_is_screening_sized() -> None:
    spec = ChestCTSpec.large()
    slices, rows, columns = spec.shape
    assert (rows, columns) == (512, 512) and slices >= 200
    assert 1.0 <= spec.slice_spacing_mm <= 1.25
    diameters = sorted(2 * n.a_mm for n in spec.nodules)
    assert diameters[0] <= 4 and diameters[-1] >= 25
    assert {n.kind for n in spec.nodules} == set(NoduleKind)


def test_neck_truth_matches_the_drawn_masks(neck) -> None:
    area = neck.spec.pixel_spacing_mm**2
    for truth in neck.truth:
        lumen = neck.lumen[truth.side][truth.slice_index].sum() * area
        wall = neck.wall[truth.side][truth.slice_index].sum() * area
        assert lumen == pytest.approx(truth.lumen_area_mm2, rel=0.05)
        assert wall == pytest.approx(truth.wall_area_mm2, rel=0.06)
    right = neck.side_truth(CarotidSide.RIGHT)
    thickest = max(t.max_wall_thickness_mm for t in right)
    thinnest = min(t.max_wall_thickness_mm for t in right)
    assert thickest > 2 * thinnest, "the right carotid carries an eccentric plaque"


def test_neck_lumen_is_dark_and_wall_bright(neck) -> None:
    for side in CarotidSide:
        lumen_signal = neck.intensities[neck.lumen[side]].mean()
        wall_signal = neck.intensities[neck.wall[side]].mean()
        assert wall_signal > 4 * lumen_signal


@pytest.mark.dicom3tools
def test_written_series_validate(tmp_path, validate_dicom) -> None:
    study = StudyIdentity.from_seed("validate")
    geometry = SliceGeometry.centred_axial((3, 64, 64), (0.7, 0.7), 1.25)
    rng = np.random.default_rng(1)
    ct = write_ct_series(
        tmp_path / "ct",
        rng.normal(-800, 50, (3, 64, 64)),
        geometry,
        study,
        SeriesIdentity.from_seed("validate-ct", Modality.CT, body_part_examined="CHEST"),
    )
    mr = write_mr_series(
        tmp_path / "mr",
        rng.uniform(0, 900, (3, 64, 64)),
        geometry,
        study,
        SeriesIdentity.from_seed(
            "validate-mr",
            Modality.MR,
            body_part_examined="NECK",
            image_type=("ORIGINAL", "PRIMARY", "OTHER"),
        ),
    )
    outcome = validate_dicom(*ct, *mr)
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr


def test_written_chest_ct_loads_with_its_geometry(tmp_path) -> None:
    spec = replace(ChestCTSpec.small(), shape=(24, 160, 160), nodules=())
    phantom, paths = write_chest_ct(tmp_path, spec)
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert header.Modality == "CT" and header.BodyPartExamined == "CHEST"
    assert header.SliceThickness == spec.slice_spacing_mm
    assert pydicom.uid.UID(header.SeriesInstanceUID).is_valid
    loaded = load_plugin_input(paths)
    assert loaded.volume is not None
    assert loaded.pixel_spacing == (spec.pixel_spacing_mm, spec.pixel_spacing_mm)
    # the loader may order slices either way along z; compare in the phantom's order
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in paths]
    by_uid = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: i for i, p in enumerate(paths)
    }
    order = [by_uid[s.sop_instance_uid] for s in loaded.sources]
    assert np.allclose(loaded.pixels, np.rint(phantom.hounsfield[order]), atol=0.51)
    assert z == sorted(z), "slice 0 is the most inferior"


def test_written_neck_mr_routes_as_neck(tmp_path) -> None:
    _, paths = write_neck_mr(tmp_path, replace(NeckMRSpec.small(), shape=(3, 128, 128)))
    header = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert (header.Modality, header.BodyPartExamined) == ("MR", "NECK")
    assert header.SOPClassUID == pydicom.uid.MRImageStorage
    assert "EchoTime" in header and "ScanningSequence" in header
