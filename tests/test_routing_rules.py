"""Conditions, body-part normalisation and series selection, on small hand-made views."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from routers.attributes import InstanceFacts, SeriesView, StudyView
from routers.bodypart import BodyPartTable, Region, RegionSource
from routers.check import check_text
from routers.conditions import Subject
from routers.schema import Orientation, Prefer, SeriesSpec
from routers.selection import SeriesCriteria, orientation_of, select_series
from routers.when_compiler import compile_when

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def series(
    uid: str = "1.2.3",
    count: int = 1,
    *,
    sop_class: str = CT,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    orientation: tuple[float, ...] | None = AXIAL,
    thickness: float | None = 1.0,
    calling: frozenset[str] = frozenset(),
    called: frozenset[str] = frozenset(),
    **attributes: object,
) -> SeriesView:
    instances = tuple(
        InstanceFacts(f"{uid}.{i}", sop_class, image_type, orientation, thickness, i)
        for i in range(1, count + 1)
    )
    return SeriesView(uid, MappingProxyType(dict(attributes)), instances, calling, called)


def holds(when: object, view: SeriesView) -> bool:
    condition, problems = compile_when(when, ("when",))
    assert problems == []
    region = BodyPartTable.default().decide(view.attributes)
    return condition.first_failure(Subject(view, region)) is None


# --- conditions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"Modality": "ct"}, True),  # case-insensitive by default
        ({"Modality": {"equals": "ct", "case_sensitive": True}}, False),
        ({"Modality": ["MR", "CT"]}, True),
        ({"Modality": {"in": ["MR", "DX"]}}, False),
        ({"SeriesDescription": {"regex": "^ax.*lung"}}, True),
        ({"SeriesDescription": {"regex": "^lung"}}, False),
        ({"SliceThickness": {"lt": 2.5}}, True),
        ({"SliceThickness": {"ge": 1.25, "le": 1.25}}, True),
        ({"SliceThickness": {"gt": 1.25}}, False),
        ({"ImageType": "AXIAL"}, True),  # multi-valued: any value
        ({"ImageType": "LOCALIZER"}, False),
        ({"ImageType": {"not": "LOCALIZER"}}, True),
        ({"BodyPartExamined": {"exists": True}}, False),  # empty counts as absent
        ({"BodyPartExamined": {"exists": False}}, True),
        ({"ProtocolName": {"exists": True}}, False),
        ({"not": {"Modality": "CT"}}, False),
        ({"any": [{"Modality": "MR"}, {"body_part": "chest"}]}, True),
        ({"all": [{"Modality": "CT"}, {"body_part": "head"}]}, False),
        ({"body_part": "chest", "modality": "CT"}, True),
        ({"calling_ae": "ct_scanner"}, True),
        ({"called_ae": "AINODE_NEURO"}, False),
        ({"instance_count": {"ge": 3}}, True),
        ({"Rows": {"gt": 1}}, False),  # absent attribute fails a comparison
        ({"StudyDescription": {"lt": 5}}, False),  # text is not a number: fails, no error
    ],
)
def test_condition_operators(when: object, expected: bool) -> None:
    view = series(
        count=3,
        thickness=1.25,
        calling=frozenset({"CT_SCANNER"}),
        called=frozenset({"AINODE"}),
        Modality="CT",
        SeriesDescription="Axial 1.25 Lung",
        SliceThickness=1.25,
        ImageType=("ORIGINAL", "PRIMARY", "AXIAL"),
        BodyPartExamined="",
        StudyDescription="CT THORAX",
    )
    assert holds(when, view) is expected


def test_failure_names_the_first_failing_condition_and_actual_value() -> None:
    condition, _ = compile_when({"Modality": "CT", "SliceThickness": {"le": 2.5}}, ("when",))
    view = series(Modality="CT", SliceThickness=5.0)
    failure = condition.first_failure(Subject(view, BodyPartTable.default().decide({})))
    assert failure is not None
    assert failure.condition == "SliceThickness <= 2.5"
    assert failure.actual == "5.0"
    assert failure.path == ("when", "SliceThickness", "le")


# --- body parts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "region"),
    [
        ("CHEST", Region.CHEST),
        ("THORAX", Region.CHEST),
        ("LUNG", Region.CHEST),
        ("chest", Region.CHEST),
        ("HEAD", Region.HEAD),
        ("BRAIN", Region.HEAD),
        ("SKULL", Region.HEAD),
        ("NECK", Region.NECK),
        ("CAROTID", Region.NECK),
        ("HEADNECK", Region.NECK),
        ("L_SPINE", Region.SPINE),
        ("CSPINE", Region.SPINE),
        ("WHOLE BODY", Region.WHOLE_BODY),
        ("BREAST", Region.BREAST),
        ("EXTREMITY", Region.EXTREMITY),
        ("PANCREAS", Region.ABDOMEN),
        ("B?cken", Region.UNKNOWN),  # invalid CS character: unknown, not an exception
        ("", Region.UNKNOWN),
        (None, Region.UNKNOWN),
        ("ANNOON", Region.UNKNOWN),
        (b"CHEST", Region.UNKNOWN),
        (12, Region.UNKNOWN),
    ],
)
def test_body_part_examined_normalisation(value: object, region: Region) -> None:
    assert BodyPartTable.default().normalise(value) is region


@pytest.mark.parametrize(
    ("attributes", "region", "source"),
    [
        (
            {"BodyPartExamined": "", "StudyDescription": "CT THORAX"},
            Region.CHEST,
            RegionSource.STUDY_DESCRIPTION,
        ),
        (
            {"SeriesDescription": "Carotids TOF", "StudyDescription": "BRAIN"},
            Region.NECK,
            RegionSource.SERIES_DESCRIPTION,
        ),  # series-level text wins over the study's
        ({"ProtocolName": "THORACIC SPINE"}, Region.SPINE, RegionSource.PROTOCOL_NAME),
        ({"StudyDescription": "XR C Spine Comp"}, Region.SPINE, RegionSource.STUDY_DESCRIPTION),
        (
            {
                "AnatomicRegionSequence": [
                    {"CodeValue": "51185008", "CodingSchemeDesignator": "SCT"}
                ]
            },
            Region.CHEST,
            RegionSource.ANATOMIC_REGION_CODE,
        ),
        (
            {
                "AnatomicRegionSequence": [
                    {"CodeValue": "T-A0100", "CodingSchemeDesignator": "SRT"}
                ],
                "StudyDescription": "chest",
            },
            Region.HEAD,
            RegionSource.ANATOMIC_REGION_CODE,
        ),
        (
            {"BodyPartExamined": "B?cken", "SeriesDescription": "BÄCKEN FRONTAL"},
            Region.PELVIS,
            RegionSource.SERIES_DESCRIPTION,
        ),
        ({"StudyDescription": "No Finding"}, Region.UNKNOWN, RegionSource.NONE),
        ({"StudyDescription": "Sharpening"}, Region.UNKNOWN, RegionSource.NONE),  # no 'ARM'
    ],
)
def test_region_fallbacks(attributes: dict, region: Region, source: RegionSource) -> None:
    decision = BodyPartTable.default().decide(attributes)
    assert (decision.region, decision.source) == (region, source)


def test_site_synonyms_extend_the_table_from_routes_yaml() -> None:
    text = (
        "body_parts:\n"
        "  chest: {synonyms: [KLATKA PIERSIOWA, 胸腔], codes: ['99LOCAL:C1']}\n"
        "routes: []\n"
    )
    table = check_text(text, "routes.yaml").table
    assert table is not None
    parts = table.body_parts
    assert parts.normalise("KLATKA_PIERSIOWA") is Region.CHEST
    assert parts.decide({"StudyDescription": "胸腔CT"}).region is Region.CHEST
    assert (
        parts.decide(
            {"AnatomicRegionSequence": [{"CodeValue": "C1", "CodingSchemeDesignator": "99LOCAL"}]}
        ).region
        is Region.CHEST
    )
    assert parts.normalise("THORAX") is Region.CHEST  # defaults stay
    assert BodyPartTable.default().normalise("KLATKA PIERSIOWA") is Region.UNKNOWN
    assert BodyPartTable.default().decide({"StudyDescription": "胸腔CT"}).region is Region.UNKNOWN


# --- series selection --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "plane"),
    [
        (AXIAL, Orientation.AXIAL),
        (SAGITTAL, Orientation.SAGITTAL),
        (CORONAL, Orientation.CORONAL),
        ((1.0, 0.0, 0.0, 0.0, 0.95, -0.31), Orientation.AXIAL),  # 18 degree gantry tilt
        ((1.0, 0.0, 0.0, 0.0, 0.7071, -0.7071), None),  # 45 degrees: oblique
        ((0.0, 0.0, 0.0, 0.0, 0.0, 0.0), None),
        (None, None),
    ],
)
def test_orientation_from_image_orientation_patient(orientation, plane) -> None:
    assert orientation_of(orientation, 20.0) is plane


def test_tilt_tolerance_is_configurable() -> None:
    tilted = (1.0, 0.0, 0.0, 0.0, 0.95, -0.31)
    assert orientation_of(tilted, 10.0) is None


def criteria(**spec: object) -> SeriesCriteria:
    compiled, problems = SeriesCriteria.compile(SeriesSpec.model_validate(spec), ("series",))
    assert problems == []
    return compiled


def test_selection_filters_and_says_why() -> None:
    candidates = [
        series("axial-thin", 100, thickness=1.0, SeriesDescription="AX 1mm"),
        series("scout", 1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), orientation=SAGITTAL),
        series("dose", 5, sop_class=SC, image_type=("DERIVED", "SECONDARY")),
        series("axial-thick", 40, thickness=5.0),
        series("coronal", 300, orientation=CORONAL, thickness=1.0),
        series("short", 5, thickness=1.0),
    ]
    selection = select_series(
        criteria(
            orientation="axial",
            slice_thickness_max=2.5,
            min_instances=10,
            exclude_image_type=["localizer"],
            include_sop_class=["CTImageStorage"],
        ),
        candidates,
    )
    assert selection.chosen is candidates[0]
    reasons = {v.series.series_instance_uid: v.reason for v in selection.verdicts}
    assert reasons["scout"] == "ImageType contains LOCALIZER"
    assert reasons["dose"] == ("SOP class SecondaryCaptureImageStorage is not in include_sop_class")
    assert reasons["axial-thick"] == "slice thickness 5 mm > 2.5 mm"
    assert reasons["coronal"] == "orientation is coronal, not axial"
    assert reasons["short"] == "5 images, fewer than min_instances 10"


@pytest.mark.parametrize(
    ("prefer", "winner"),
    [(Prefer.THINNEST, "thin"), (Prefer.MOST_INSTANCES, "many"), (Prefer.LATEST, "late")],
)
def test_tie_break(prefer: Prefer, winner: str) -> None:
    candidates = [
        series("thin", 50, thickness=0.625, SeriesNumber=2, SeriesTime="101500"),
        series("many", 400, thickness=2.0, SeriesNumber=3, SeriesTime="101000"),
        series("late", 60, thickness=1.5, SeriesNumber=4, SeriesTime="103000"),
    ]
    selection = select_series(criteria(prefer=prefer.value), candidates)
    assert selection.chosen is not None
    assert selection.chosen.series_instance_uid == winner
    losers = [v.reason for v in selection.verdicts if v.series.series_instance_uid != winner]
    assert losers == [f"passes the filters but loses prefer: {prefer.value}"] * 2


def test_include_image_type_and_description_regex_and_max_instances() -> None:
    candidates = [
        series("derived", 20, image_type=("DERIVED", "SECONDARY"), SeriesDescription="MIP"),
        series("original", 20, SeriesDescription="Lung 1.0 B60f"),
        series("huge", 2000, SeriesDescription="Lung 0.6"),
    ]
    selection = select_series(
        criteria(include_image_type=["ORIGINAL"], description_regex="lung", max_instances=1000),
        candidates,
    )
    assert selection.chosen is candidates[1]
    reasons = {v.series.series_instance_uid: v.reason for v in selection.verdicts}
    assert reasons["derived"].startswith("ImageType lacks ORIGINAL")
    assert reasons["huge"] == "2000 images, more than max_instances 1000"


def test_multiframe_frames_count_as_images() -> None:
    enhanced = SeriesView(
        "enh",
        MappingProxyType({}),
        (
            InstanceFacts(
                "enh.1", "1.2.840.10008.5.1.4.1.1.2.1", ("ORIGINAL",), AXIAL, 1.0, 1, frames=120
            ),
        ),
    )
    assert select_series(criteria(min_instances=100), [enhanced]).chosen is enhanced


def test_study_view_is_only_a_container() -> None:
    study = StudyView("1.2", (series("a"),), version=3)
    assert study.series[0].image_count == 1


@pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "ReferringPhysicianName"])
def test_patient_identifiers_cannot_be_routed_on(keyword: str) -> None:
    _, problems = compile_when({keyword: "X"}, ("when",))
    assert [p.message for p in problems] == [f"'{keyword}' cannot be used in routes"]
