"""Matching against the index: route_matches rows, fan-out, shadow mode, re-opened studies."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from routing_support import add_instance, add_series, make_stable

from node.db import connect
from node.jobs import table as jobs
from node.routing.matches import route_pending
from routers.attributes import study_view_from_index
from routers.check import check_text
from routers.matcher import RouteTable

ROUTES = """
routes:
  - name: chest-ct
    priority: 10
    when: {modality: CT, body_part: chest}
    series:
      orientation: axial
      slice_thickness_max: 2.5
      min_instances: 10
      exclude_image_type: [LOCALIZER]
      include_sop_class: [CTImageStorage]
    run: [ct-lung-nodule@1.0.0, ct-lung-report]
    send_to: [pacs]
    urgency: urgent
  - name: chest-ct-candidate
    mode: shadow
    urgency: background
    when: {modality: CT, body_part: chest}
    series: {orientation: axial, min_instances: 10, prefer: most_instances,
             include_sop_class: [CTImageStorage]}
    run: [ct-lung-nodule@2.0.0]
    send_to: [shadow-review]
  - name: neuro-department-only
    when: {called_ae: AINODE_NEURO, modality: CT}
    run: [ct-bleed]
    send_to: [pacs]
"""
PLUGINS = {"ct-lung-nodule": ("1.0.0", "2.0.0"), "ct-lung-report": ("1.0.0",), "ct-bleed": ("0.1",)}
DESTINATIONS = {"pacs": False, "shadow-review": True}
STUDY = "1.2.826.0.1.3680043.10.1.1"


@pytest.fixture
def table() -> RouteTable:
    report = check_text(ROUTES, "routes.yaml", PLUGINS, DESTINATIONS)
    assert report.table is not None, [d.format() for d in report.diagnostics]
    return report.table


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    connection = connect(tmp_path / "ainode.sqlite3")
    yield connection
    connection.close()


def chest_study(conn: sqlite3.Connection) -> None:
    add_series(
        conn, 60, study=STUDY, series=f"{STUDY}.2", thickness=1.0, series_description="AX LUNG 1.0"
    )
    add_series(
        conn, 120, study=STUDY, series=f"{STUDY}.3", thickness=3.0, series_description="AX BODY 3.0"
    )
    add_instance(
        conn,
        study=STUDY,
        series=f"{STUDY}.1",
        sop=f"{STUDY}.1.1",
        image_type="ORIGINAL\\PRIMARY\\LOCALIZER",
        orientation="0\\1\\0\\0\\0\\-1",
    )
    add_series(
        conn,
        3,
        study=STUDY,
        series=f"{STUDY}.99",
        sop_class="1.2.840.10008.5.1.4.1.1.7",
        image_type="DERIVED\\SECONDARY\\DOSE_INFO",
        body_part=None,
        series_description="Dose Report",
    )


def rows(conn: sqlite3.Connection) -> set[tuple]:
    return {
        (
            r["study_version_id"],
            r["route_name"],
            r["plugin"],
            r["plugin_version"],
            r["series_instance_uid"],
            tuple(json.loads(r["destinations"])),
            r["mode"],
        )
        for r in conn.execute("SELECT * FROM route_matches")
    }


def test_stable_version_gets_one_row_per_route_and_plugin(conn, table) -> None:
    chest_study(conn)
    version_id = make_stable(conn, STUDY)
    assert route_pending(conn, table) == 1
    assert rows(conn) == {
        (version_id, "chest-ct", "ct-lung-nodule", "1.0.0", f"{STUDY}.2", ("pacs",), "production"),
        (version_id, "chest-ct", "ct-lung-report", None, f"{STUDY}.2", ("pacs",), "production"),
        # the shadow candidate prefers most instances: the 3 mm series, to the shadow folder
        (
            version_id,
            "chest-ct-candidate",
            "ct-lung-nodule",
            "2.0.0",
            f"{STUDY}.3",
            ("shadow-review",),
            "shadow",
        ),
    }
    routed_at = conn.execute("SELECT routed_at FROM study_versions").fetchone()[0]
    assert routed_at is not None
    assert route_pending(conn, table) == 0  # nothing pending: no duplicate rows
    assert len(rows(conn)) == 3


def test_route_urgency_goes_to_its_matches_and_their_jobs(conn, table) -> None:
    chest_study(conn)
    make_stable(conn, STUDY)
    route_pending(conn, table)
    jobs.create_jobs(conn)
    ranked = conn.execute(
        "SELECT m.route_name, m.plugin, m.urgency, j.urgency FROM route_matches m "
        "JOIN jobs j ON j.route_match_id = m.id"
    ).fetchall()
    assert {tuple(r) for r in ranked} == {
        ("chest-ct", "ct-lung-nodule", 0, 0),
        ("chest-ct", "ct-lung-report", 0, 0),
        ("chest-ct-candidate", "ct-lung-nodule", 2, 2),
    }


def test_reopened_study_is_matched_again_with_its_late_series(conn, table) -> None:
    add_series(conn, 5, study=STUDY, series=f"{STUDY}.2", thickness=1.0)
    first = make_stable(conn, STUDY, version=1)
    route_pending(conn, table)
    assert rows(conn) == set()  # 5 images: below min_instances
    add_series(conn, 80, study=STUDY, series=f"{STUDY}.7", version=2, thickness=0.625)
    second = make_stable(conn, STUDY, version=2, stable_at=3000.0)
    assert route_pending(conn, table) == 1
    selected = {(r[0], r[1], r[4]) for r in rows(conn)}
    assert selected == {
        (second, "chest-ct", f"{STUDY}.7"),
        (second, "chest-ct-candidate", f"{STUDY}.7"),
    }
    assert first != second


def test_version_sees_only_instances_it_was_made_of(conn) -> None:
    add_series(conn, 3, study=STUDY, series=f"{STUDY}.2")
    add_series(conn, 4, study=STUDY, series=f"{STUDY}.5", version=2)
    view_1 = study_view_from_index(conn, STUDY, 1)
    view_2 = study_view_from_index(conn, STUDY, 2)
    assert [s.image_count for s in view_1.series] == [3]
    assert sorted(s.image_count for s in view_2.series) == [3, 4]


def test_called_ae_routes_one_department(conn, table) -> None:
    add_series(
        conn, 2, study=STUDY, series=f"{STUDY}.4", body_part="HEAD", called_ae="AINODE_NEURO"
    )
    add_series(conn, 2, study="1.2.3.4", series="1.2.3.4.1", body_part="HEAD", called_ae="AINODE")
    neuro = make_stable(conn, STUDY)
    make_stable(conn, "1.2.3.4")
    route_pending(conn, table)
    assert {(r[0], r[1], r[2]) for r in rows(conn)} == {
        (neuro, "neuro-department-only", "ct-bleed")
    }


def test_index_view_never_carries_patient_identifiers(conn) -> None:
    add_series(conn, 2, study=STUDY, series=f"{STUDY}.2")
    view = study_view_from_index(conn, STUDY)
    attributes = view.series[0].attributes
    assert "PatientName" not in attributes
    assert "MUST^NOT^LEAK" not in repr(dict(attributes))
    assert attributes["Modality"] == "CT"


def test_shadow_match_drops_destinations_that_became_production(conn) -> None:
    """node.yaml changed after the routes were checked: a shadow route still cannot send
    to a destination that is now production."""
    report = check_text(ROUTES, "routes.yaml", PLUGINS, DESTINATIONS)
    assert report.table is not None
    table = RouteTable(
        report.table.routes, report.table.body_parts, "routes.yaml", shadow_destinations=frozenset()
    )
    chest_study(conn)
    make_stable(conn, STUDY)
    route_pending(conn, table)
    shadow_rows = [r for r in rows(conn) if r[6] == "shadow"]
    assert shadow_rows and all(r[5] == () for r in shadow_rows)


def test_a_version_whose_study_has_no_instances_is_routed_to_nothing(conn, table) -> None:
    add_instance(conn, study=STUDY, series=f"{STUDY}.2", sop="x.1")
    make_stable(conn, STUDY)
    conn.execute("DELETE FROM instances")
    assert route_pending(conn, table) == 1
    assert rows(conn) == set()
