"""Helpers for the routing tests: the shipped route table, and index rows for a study."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from node.config import load_node_config
from node.db import transaction
from node.routing.catalog import destination_flags
from routers.check import check_file
from routers.matcher import RouteTable

REPO = Path(__file__).resolve().parent.parent
SHIPPED_ROUTES = REPO / "config" / "routes.yaml"


def shipped_table() -> RouteTable:
    """config/routes.yaml checked against config/node.yaml's destinations (plugins are the
    plugin engineers' to install, so their names are not checked here)."""
    config = load_node_config(REPO / "config" / "node.yaml")
    report = check_file(SHIPPED_ROUTES, None, destination_flags(config))
    assert report.table is not None, "\n".join(d.format() for d in report.diagnostics)
    return report.table


def add_instance(
    conn: sqlite3.Connection,
    *,
    study: str,
    series: str,
    sop: str,
    version: int = 1,
    modality: str = "CT",
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
    body_part: str | None = "CHEST",
    series_description: str | None = None,
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    orientation: str | None = "1\\0\\0\\0\\1\\0",
    thickness: float | None = 1.0,
    instance_number: int | None = 1,
    calling_ae: str = "CT_SCANNER",
    called_ae: str = "AINODE",
    received_at: float = 1000.0,
    extra: dict[str, object] | None = None,
) -> None:
    """Index rows as the ingest stage writes them (study, series and instance)."""
    attributes = {
        "Modality": modality,
        "BodyPartExamined": body_part,
        "SeriesDescription": series_description,
        "SOPClassUID": sop_class,
        "ImageType": image_type.split("\\"),
        "PatientName": "MUST^NOT^LEAK",
        **(extra or {}),
    }
    with transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO studies (study_instance_uid, first_received_at, "
            "last_received_at, version) VALUES (?, ?, ?, ?)",
            (study, received_at, received_at, version),
        )
        conn.execute(
            "UPDATE studies SET version = ? WHERE study_instance_uid = ?", (version, study)
        )
        conn.execute(
            "INSERT OR IGNORE INTO series (series_instance_uid, study_instance_uid, modality, "
            "body_part_examined, series_description) VALUES (?, ?, ?, ?, ?)",
            (series, study, modality, body_part, series_description),
        )
        conn.execute(
            "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, "
            "sop_class_uid, transfer_syntax_uid, path, size_bytes, calling_ae, called_ae, "
            "received_at, study_version, instance_number, image_type, image_orientation, "
            "slice_thickness, attributes) VALUES (?, ?, ?, ?, '1.2.840.10008.1.2.1', ?, 1, ?, "
            "?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sop,
                series,
                study,
                sop_class,
                f"{sop}.dcm",
                calling_ae,
                called_ae,
                received_at,
                version,
                instance_number,
                image_type,
                orientation,
                thickness,
                json.dumps(attributes),
            ),
        )


def add_series(conn: sqlite3.Connection, count: int, **fields: object) -> None:
    """``count`` instances of one series (SOP UIDs derived from the series UID)."""
    for number in range(1, count + 1):
        add_instance(conn, sop=f"{fields['series']}.{number}", instance_number=number, **fields)  # type: ignore[arg-type]


def make_stable(
    conn: sqlite3.Connection, study: str, version: int = 1, stable_at: float = 2000.0
) -> int:
    """A study_versions row as the assembler writes it; returns its id."""
    count = conn.execute(
        "SELECT COUNT(*) FROM instances WHERE study_instance_uid = ?", (study,)
    ).fetchone()[0]
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO study_versions (study_instance_uid, version, stable_at, instance_count) "
            "VALUES (?, ?, ?, ?)",
            (study, version, stable_at, count),
        )
    return int(cursor.lastrowid)
