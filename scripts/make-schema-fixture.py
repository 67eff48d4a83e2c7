#!/usr/bin/env python3
"""Write tests/fixtures/ainode-schema-v2.sqlite3: a database as the schema-2 release left it.

    .venv/bin/python scripts/make-schema-fixture.py

The schema comes from ``node/db.py`` at the last commit with schema version 2 (``git show``),
not from today's code, so the file stays what that release wrote after the schema moves on.
A few rows in every table the pipeline fills (study, series, instances, a stable version, a
route match, jobs, results, outbox) let the migration tests check that data survives.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RELEASE = "558f960c310644dafd3ddd328ee15cea772adff7"  # node/db.py with SCHEMA_VERSION = 2
TARGET = REPO / "tests" / "fixtures" / "ainode-schema-v2.sqlite3"
STUDY = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000001"
SERIES = (
    "1.2.826.0.1.3680043.8.498.20000000000000000000000000000000001",
    "1.2.826.0.1.3680043.8.498.20000000000000000000000000000000002",
)
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z: fixed, so the file is the same at every run


def _release_db_module(folder: Path) -> ModuleType:
    source = subprocess.run(
        ["git", "show", f"{RELEASE}:node/db.py"], cwd=REPO, check=True, capture_output=True
    ).stdout
    path = folder / "release_db.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("release_db", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fill(conn: sqlite3.Connection, transaction: Callable[..., Any]) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO studies (study_instance_uid, patient_id, patient_name, study_date, "
            "study_description, accession_number, first_received_at, last_received_at, state, "
            "version) VALUES (?, 'SYNTH-001', 'Synthetic^Patient', '20250101', 'fixture', "
            "'ACC1', ?, ?, 'stable', 1)",
            (STUDY, T0, T0 + 2),
        )
        for number, series in enumerate(SERIES, start=1):
            conn.execute(
                "INSERT INTO series (series_instance_uid, study_instance_uid, modality, "
                "body_part_examined, series_description, series_number) "
                "VALUES (?, ?, 'CT', 'CHEST', 'axial', ?)",
                (series, STUDY, number),
            )
            for instance in (1, 2):
                uid = f"{series}.{instance}"
                conn.execute(
                    "INSERT INTO instances (sop_instance_uid, series_instance_uid, "
                    "study_instance_uid, sop_class_uid, transfer_syntax_uid, path, size_bytes, "
                    "calling_ae, called_ae, received_at, study_version, instance_number, "
                    "attributes) VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', "
                    "'1.2.840.10008.1.2.1', ?, 1234, 'MODALITY', 'AINODE', ?, 1, ?, "
                    '\'{"Modality": "CT"}\')',
                    (uid, series, STUDY, f"{STUDY}/{uid}.dcm", T0 + instance, instance),
                )
        conn.execute(
            "INSERT INTO study_versions (id, study_instance_uid, version, stable_at, "
            "instance_count, routed_at) VALUES (1, ?, 1, ?, 4, ?)",
            (STUDY, T0 + 40, T0 + 41),
        )
        for match, plugin in ((1, "ct-lung-nodule"), (2, "dx-chest")):
            conn.execute(
                "INSERT INTO route_matches (id, study_version_id, route_name, plugin, "
                "series_instance_uid, destinations, mode, created_at) "
                "VALUES (?, 1, 'chest-ct', ?, ?, '[\"pacs\"]', 'production', ?)",
                (match, plugin, SERIES[0], T0 + 41),
            )
        conn.execute(
            "INSERT INTO jobs (id, route_match_id, state, attempts, next_attempt_at, created_at,"
            " started_at, finished_at) VALUES (1, 1, 'SUCCEEDED', 1, ?, ?, ?, ?)",
            (T0 + 41, T0 + 41, T0 + 42, T0 + 50),
        )
        conn.execute(
            "INSERT INTO jobs (id, route_match_id, state, next_attempt_at, created_at) "
            "VALUES (2, 2, 'QUEUED', ?, ?)",
            (T0 + 41, T0 + 41),
        )
        for number, kind in enumerate(("seg", "sr"), start=1):
            uid = f"1.2.826.0.1.3680043.8.498.3000000000000000000000000000000000{number}"
            conn.execute(
                "INSERT INTO results (sop_instance_uid, job_id, kind, sop_class_uid, path, "
                "created_at) VALUES (?, 1, ?, '1.2.840.10008.5.1.4.1.1.66.4', ?, ?)",
                (uid, kind, f"job-1/{kind}.dcm", T0 + 50),
            )
            conn.execute(
                "INSERT INTO outbox (sop_instance_uid, destination, state, attempts, "
                "next_attempt_at, sent_at) VALUES (?, 'pacs', ?, ?, ?, ?)",
                (uid, "SENT" if kind == "seg" else "PENDING", 1, T0 + 51, T0 + 51),
            )


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        release = _release_db_module(Path(folder))
        assert release.SCHEMA_VERSION == 2, release.SCHEMA_VERSION
        built = Path(folder) / TARGET.name
        conn = release.connect(built)
        _fill(conn, release.transaction)
        # the smallest pages keep the committed file a few KB; WAL stays, as the node sets it
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA page_size=512")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        TARGET.parent.mkdir(parents=True, exist_ok=True)
        TARGET.write_bytes(built.read_bytes())
    print(f"wrote {TARGET.relative_to(REPO)} ({TARGET.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
