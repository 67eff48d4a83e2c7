"""Acceptance 1: the shipped routes.yaml over every folder of the shared corpus.

The expected table is written from CATALOG.md and manifest.tsv (series UIDs copied from the
manifest), not from the router's output: chest CT -> ct-lung-nodule on the thin axial series;
chest CR/DX -> dx-chest-report, which chains dx-chest (the two radiographs that name no
body part anywhere run in shadow mode); everything else -> nothing. The generated MR neck
phantom -> mr-vessel-wall on its axial series.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from routing_support import shipped_table

from models.phantoms.neck_mr import NeckMRSpec, write_neck_mr
from routers.attributes import study_views_from_paths
from routers.matcher import evaluate, match_study

pytestmark = pytest.mark.corpus

LIDC_0001_SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"  # 2.5 mm
LIDC_0002_SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.619372068417051974713149104919"  # 1.25 mm
CR_CHEST_PHILIPS = "1.3.6.1.4.1.5962.1.3.9.1.20040826185059.5457"  # RG1_J2KI, CHEST
CR_CHEST_BARRE = "1.2.392.200036.9125.0.199302241758.16"  # gdcm-CR-MONO1-10-chest, CHEST
DX_THORAX_FUJI = "1.2.826.0.1.3680043.8.498.43029757880331125098557355444280009133"  # THORAX
DX_NIH_NO_BODY_PART = "1.3.6.1.4.1.11129.5.5.112630850362182468372440828755218293352329"
CR_KONICA_EMPTY_BODY_PART = "2.25.235463475375884963483113463561090525587"

CXR_PLUGINS = ("dx-chest-report",)
# (route, plugins, mode) per route name of config/routes.yaml
ROUTES = {
    "ct-chest-lung-nodule": (("ct-lung-nodule",), "production"),
    "cxr-chest": (CXR_PLUGINS, "production"),
    "cxr-unlabelled-shadow": (CXR_PLUGINS, "shadow"),
    "mr-neck-vessel-wall": (("mr-vessel-wall",), "production"),
}

# Top-level corpus folder -> the (route, selected series UID) pairs it must produce. A folder
# listed with an empty set must route nothing at all.
EXPECTED: dict[str, set[tuple[str, str]]] = {
    # LIDC: two patients, one contiguous thin axial series each (2.5 mm and 1.25 mm).
    "ct-chest-lidc": {
        ("ct-chest-lung-nodule", LIDC_0001_SERIES),
        ("ct-chest-lung-nodule", LIDC_0002_SERIES),
    },
    # One LUNG CT slice (+ RTSTRUCT): a single derived slice is not a series to run on.
    "ct-chest-lctsc-rtstruct": set(),
    # Chest CT, but each study is one sagittal MPR image: not a thin axial series.
    "ct-chest-two-studies": set(),
    "ct-head-ge-gantry-tilt": set(),  # head CT
    "ct-head-phantom-philips-study": set(),  # head CT + scout + dose SCs + DIRFILEs
    "xr-chest": {
        ("cxr-chest", CR_CHEST_PHILIPS),
        ("cxr-chest", CR_CHEST_BARRE),
        ("cxr-chest", DX_THORAX_FUJI),
        ("cxr-unlabelled-shadow", DX_NIH_NO_BODY_PART),
        ("cxr-unlabelled-shadow", CR_KONICA_EMPTY_BODY_PART),
    },
    "xr-other": set(),  # extremity, dental panoramic, pelvis (B?cken), GSPS
    "mr-brain-ge-epi-150": set(),
    "mr-brain-siemens-mosaic": set(),
    "mr-enhanced-multiframe": set(),  # brain/knee MR, eCT, PhoenixZIPReport SRs
    "mr-head-uih-odd-vendor": set(),
    "mr-agfa-private-tag-renaming": set(),
    # Signed CT is one "CT THORAX" slice: below min_instances. Others are MR spine, US.
    "vendor-quirks": set(),
    "transfer-syntaxes": set(),  # the Barre CHEST CT here is a single LOCALIZER
    # The raw Barre chest CR without File Meta is still a chest CR (a folder import sees it).
    "malformed-and-edge": {("cxr-chest", CR_CHEST_BARRE)},
    "seg-sr-rt-reference": set(),  # SEG/SR/RT inputs and their small source series
    "dicomdir-tiny": set(),  # head CT, C-spine CR, brain/carotid MR localisers only
    "other-modalities": set(),
}


def _expanded(pairs: set[tuple[str, str]]) -> set[tuple[str, str, str, str]]:
    return {
        (route, plugin, series, ROUTES[route][1])
        for route, series in pairs
        for plugin in ROUTES[route][0]
    }


def _routes_of(paths: list[Path]) -> set[tuple[str, str, str, str]]:
    table = shipped_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        studies = study_views_from_paths(paths)
    return {
        (m.route_name, m.plugin, m.series_instance_uid, m.mode.value)
        for study in studies
        for m in match_study(table, study)
    }


def test_every_corpus_folder_is_in_the_table(corpus: Path) -> None:
    folders = {p.name for p in corpus.iterdir() if p.is_dir()}
    assert folders == set(EXPECTED)


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_corpus_folder_routes_as_catalogued(corpus: Path, folder: str) -> None:
    assert _routes_of([corpus / folder]) == _expanded(EXPECTED[folder])


def test_dose_report_secondary_capture_is_chest_but_never_selected(corpus: Path) -> None:
    """GH178: Modality CT, 'CT THORACO-ABDOMINAL', Secondary Capture dose report."""
    table = shipped_table()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (study,) = study_views_from_paths(
            sorted((corpus / "malformed-and-edge" / "fo-dicom").glob("GH178*"))
        )
    outcome = next(o for o in evaluate(table, study) if o.route.name == "ct-chest-lung-nodule")
    assert all(s.region.region.value == "chest" and s.failure is None for s in outcome.series)
    assert outcome.selection is not None and outcome.selection.chosen is None
    assert "SecondaryCaptureImageStorage" in outcome.selection.verdicts[0].reason


def _write_mr_neck_study(target: Path) -> dict[str, str]:
    """The generated neck MR phantom (axial black-blood series, body part NECK) plus, in the
    same study, a sagittal localiser and a coronal series made from its slices, as a scanner
    would send them. Returns role -> series UID."""
    _, paths = write_neck_mr(target, NeckMRSpec.small())
    uids = {"axial": pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID}
    extra = {
        "localiser": ([0, 1, 0, 0, 0, -1], ["ORIGINAL", "PRIMARY", "LOCALIZER"], paths[:3]),
        "coronal": ([1, 0, 0, 0, 0, -1], ["ORIGINAL", "PRIMARY", "OTHER"], paths),
    }
    for number, (role, (orientation, image_type, sources)) in enumerate(extra.items(), start=2):
        uids[role] = generate_uid()
        for index, source in enumerate(sources, start=1):
            ds = pydicom.dcmread(source)
            ds.SeriesInstanceUID = uids[role]
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.SeriesNumber, ds.InstanceNumber = number, index
            ds.SeriesDescription = role.upper()
            ds.ImageOrientationPatient = orientation
            ds.ImageType = image_type
            ds.save_as(target / f"{role}-{index:03d}.dcm")
    return uids


def test_mr_neck_phantom_routes_to_vessel_wall_axial_series(tmp_path: Path) -> None:
    uids = _write_mr_neck_study(tmp_path)
    assert _routes_of([tmp_path]) == {
        ("mr-neck-vessel-wall", "mr-vessel-wall", uids["axial"], "production")
    }
