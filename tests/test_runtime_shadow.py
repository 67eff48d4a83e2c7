"""Shadow comparison: findings recorded only where production and shadow share a series."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.sr.coding import Code

from models.api import AlgorithmIdentification, Finding, Findings, Measurement, Segment
from models.shadow import dice
from node.db import connect, transaction
from node.shadow import agreement_report, record_if_shadowed

LUNG = Code("39607008", "SCT", "Lung")
NODULE = Code("27925004", "SCT", "Nodule")
STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
VOLUME = Code("118565006", "SCT", "Volume")
ML = Code("ml", "UCUM", "milliliter")


def _job(conn, study_version: int, route: str, plugin: str, mode: str, series: str) -> int:
    with transaction(conn):
        match = conn.execute(
            "INSERT INTO route_matches (study_version_id, route_name, plugin, "
            "series_instance_uid, destinations, mode, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (study_version, route, plugin, series, "[]", mode, time.time()),
        ).lastrowid
        return conn.execute(
            "INSERT INTO jobs (route_match_id, next_attempt_at, created_at) VALUES (?, ?, ?)",
            (match, time.time(), time.time()),
        ).lastrowid


@pytest.fixture
def conn(tmp_path: Path):
    conn = connect(tmp_path / "ainode.sqlite3")
    now = time.time()
    with transaction(conn):
        conn.execute(
            "INSERT INTO studies (study_instance_uid, first_received_at, last_received_at) "
            "VALUES ('1.2', ?, ?)",
            (now, now),
        )
        for series in ("1.2.3", "1.2.4"):
            conn.execute(
                "INSERT INTO series (series_instance_uid, study_instance_uid) VALUES (?, '1.2')",
                (series,),
            )
        conn.execute(
            "INSERT INTO study_versions (id, study_instance_uid, version, stable_at, "
            "instance_count) VALUES (1, '1.2', 1, ?, 2)",
            (now,),
        )
    yield conn
    conn.close()


def _findings(version: str, lung: np.ndarray, nodule: np.ndarray, volume: float) -> Findings:
    return Findings(
        AlgorithmIdentification("ct-lung", version),
        segments=(
            Segment("lung", "Lung", STRUCTURE, LUNG, lung),
            Segment("nodule-1", "Nodule 1", ABNORMAL, NODULE, nodule),
        ),
        findings=(
            Finding(
                "n1",
                NODULE,
                segment_key="nodule-1",
                measurements=(Measurement(VOLUME, volume, ML),),
            ),
        ),
    )


def test_dice_counts_overlap_and_treats_two_empty_masks_as_agreement() -> None:
    a = np.zeros((2, 5, 5), bool)
    b = np.zeros((2, 5, 5), bool)
    assert dice(a, b) == 1.0
    a[0, 0, :4] = True  # 4
    b[0, 0, 2:] = True  # 3, shared 2 → 4/7
    assert dice(a, b) == pytest.approx(4 / 7)
    assert dice(a.astype(np.float32) * 0.9, b) == pytest.approx(4 / 7)  # fractional ≥ 0.5


def test_only_series_run_by_both_modes_are_recorded_and_compared(conn, tmp_path: Path) -> None:
    masks = tmp_path / "shadow"
    production_job = _job(conn, 1, "lung-prod", "ct-lung", "production", "1.2.3")
    shadow_job = _job(conn, 1, "lung-next", "ct-lung", "shadow", "1.2.3")
    alone_job = _job(conn, 1, "lung-other", "ct-lung", "production", "1.2.4")

    lung = np.zeros((3, 4, 4), bool)
    lung[:, :2] = True  # 24 voxels
    nodule_a = np.zeros((3, 4, 4), bool)
    nodule_a[1, 1, 1] = True
    nodule_b = np.zeros((3, 4, 4), bool)
    nodule_b[1, 2, 2] = True  # no overlap: Dice 0
    assert record_if_shadowed(conn, production_job, _findings("1.0", lung, nodule_a, 1.5), masks)
    assert record_if_shadowed(conn, shadow_job, _findings("2.0", lung, nodule_b, 1.25), masks)
    assert not record_if_shadowed(conn, alone_job, _findings("1.0", lung, nodule_a, 1.5), masks)

    rows = conn.execute("SELECT job_id, mode, summary FROM shadow_findings").fetchall()
    assert [(r["job_id"], r["mode"]) for r in rows] == [
        (production_job, "production"),
        (shadow_job, "shadow"),
    ]
    assert (masks / json.loads(rows[0]["summary"])["masks"]).exists()

    report = agreement_report(conn, masks)
    (series,) = report.series
    assert series.series_instance_uid == "1.2.3"
    assert {s.label: s.dice for s in series.segments} == {"Lung": 1.0, "Nodule 1": 0.0}
    (volume,) = series.measurements
    assert (volume.production, volume.shadow, volume.unit) == (1.5, 1.25, "ml")
    assert volume.difference == pytest.approx(-0.25)
    assert report.mean_dice == pytest.approx(0.5)
    assert agreement_report(conn, masks, plugin="something-else").series == ()
