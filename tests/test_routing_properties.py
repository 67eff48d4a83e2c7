"""Acceptance 2: matching and normalisation never raise, whatever the headers hold."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import MappingProxyType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from routing_support import shipped_table

from node.db import connect, transaction
from routers.attributes import InstanceFacts, SeriesView, StudyView, study_view_from_index
from routers.bodypart import BodyPartTable, Region
from routers.check import check_text
from routers.explain import explain_study
from routers.matcher import match_study

EVERY_OPERATOR = """
routes:
  - name: everything
    when:
      any:
        - Modality: {in: [CT, MR], case_sensitive: true}
        - SliceThickness: {gt: 0.5, le: 3}
        - SeriesDescription: {regex: "^(ax|tra)"}
      not: {ImageType: LOCALIZER}
      BodyPartExamined: {not: {exists: false}}
      all: [{body_part: {in: [chest, neck, unknown]}}, {instance_count: {ge: 1}}]
      Rows: {lt: 100000}
      calling_ae: {regex: "."}
    series: {orientation: axial, slice_thickness_min: 0.1, slice_thickness_max: 5,
             include_image_type: [ORIGINAL], exclude_sop_class: [SecondaryCaptureImageStorage],
             description_regex: ".", max_instances: 5000, prefer: latest}
    run: [p]
"""
KEYWORDS = [
    "Modality",
    "BodyPartExamined",
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "ImageType",
    "SliceThickness",
    "AnatomicRegionSequence",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "Rows",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
attribute_maps = st.dictionaries(
    st.one_of(st.sampled_from(KEYWORDS), st.text(max_size=8)), values, max_size=8
)
maybe_float = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))
instances = st.builds(
    InstanceFacts,
    sop_instance_uid=st.text(max_size=8),
    sop_class_uid=st.sampled_from(
        ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7", "", "x"]
    ),
    image_type=st.lists(st.text(max_size=10), max_size=4).map(tuple),
    orientation=st.one_of(st.none(), st.tuples(*[st.floats()] * 6)),
    slice_thickness=maybe_float,
    instance_number=st.one_of(st.none(), st.integers()),
    frames=st.integers(min_value=-5, max_value=10_000),
    received_at=maybe_float,
)
series_views = st.builds(
    lambda uid, attributes, facts, calling: SeriesView(
        uid, MappingProxyType(attributes), tuple(facts), frozenset(calling)
    ),
    st.text(min_size=1, max_size=8),
    attribute_maps,
    st.lists(instances, min_size=1, max_size=4),
    st.sets(st.text(max_size=16), max_size=2),
)
TABLES = [shipped_table(), check_text(EVERY_OPERATOR, "routes.yaml").table]


@given(st.lists(series_views, max_size=4, unique_by=lambda s: s.series_instance_uid))
@settings(max_examples=150, deadline=None)
def test_matching_and_explain_never_raise(series: list[SeriesView]) -> None:
    study = StudyView("1.2.3", tuple(series))
    for table in TABLES:
        assert table is not None
        for match in match_study(table, study):
            assert match.series_instance_uid in {s.series_instance_uid for s in series}
        assert explain_study(table, study).startswith("study 1.2.3")


@given(values)
@settings(max_examples=200, deadline=None)
def test_body_part_normalisation_never_raises(value: object) -> None:
    table = BodyPartTable.default()
    assert isinstance(table.normalise(value), Region)


@given(attribute_maps)
@settings(max_examples=200, deadline=None)
def test_region_decision_never_raises(attributes: dict) -> None:
    decision = BodyPartTable.default().decide(attributes)
    assert isinstance(decision.region, Region)
    assert isinstance(decision.describe(), str)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
junk_text = st.one_of(st.none(), st.text(max_size=20))


@given(
    attributes=st.one_of(
        st.text(max_size=30),
        st.dictionaries(st.sampled_from(KEYWORDS), json_values).map(json.dumps),
    ),
    image_type=junk_text,
    orientation=junk_text,
    thickness=st.one_of(st.none(), st.floats()),
    frames=st.one_of(st.none(), st.integers(-3, 3)),
    number=st.one_of(st.none(), st.integers()),
)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_index_rows_with_junk_never_break_matching(
    tmp_path: Path, attributes, image_type, orientation, thickness, frames, number
) -> None:
    conn = connect(tmp_path / "junk.sqlite3")
    try:
        _insert_junk(conn, attributes, image_type, orientation, thickness, frames, number)
        study = study_view_from_index(conn, "1.2.3")
        assert study is not None
        for table in TABLES:
            assert table is not None
            match_study(table, study)
    finally:
        conn.close()


def _insert_junk(
    conn: sqlite3.Connection, attributes, image_type, orientation, thickness, frames, number
) -> None:
    with transaction(conn):
        for table in ("instances", "series", "studies"):
            conn.execute(f"DELETE FROM {table}")
        conn.execute(
            "INSERT INTO studies (study_instance_uid, first_received_at, "
            "last_received_at) VALUES ('1.2.3', 0, 0)"
        )
        conn.execute(
            "INSERT INTO series (series_instance_uid, study_instance_uid) "
            "VALUES ('1.2.3.1', '1.2.3')"
        )
        conn.execute(
            "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, "
            "sop_class_uid, transfer_syntax_uid, path, size_bytes, received_at, study_version, "
            "instance_number, image_type, image_orientation, slice_thickness, number_of_frames, "
            "attributes) VALUES ('1.2.3.1.1', '1.2.3.1', '1.2.3', '1.2.840.10008.5.1.4.1.1.2', "
            "'1.2.840.10008.1.2.1', 'x', 1, 0, 1, ?, ?, ?, ?, ?, ?)",
            (
                number if number is None or abs(number) < 2**63 else None,
                image_type,
                orientation,
                thickness,
                frames,
                attributes,
            ),
        )
