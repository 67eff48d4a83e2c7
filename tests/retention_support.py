"""Studies at each point of the pipeline, for retention tests: spool files and index rows
written as ingest writes them, then the later stages' rows with chosen timestamps."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import yaml

from node.config import NodeConfig, load_node_config
from node.db import connect, transaction
from node.ingest.header import parse_file_header
from node.ingest.index import Index, StoredInstance
from node.ingest.spool import Spool, instance_relpath
from tests.ingest_support import make_instances

DAY = 86_400.0
NOW = 1_800_000_000.0  # the injected clock


def write_config(folder: Path, port: int | None = None, **retention: object) -> NodeConfig:
    """node.yaml in ``folder`` with these ``storage.retention`` settings (and a listener on
    127.0.0.1:``port`` for a node that is started)."""
    path = folder / "node.yaml"
    storage = {"data_dir": str(folder / "data"), "min_free_mb": 1, "retention": retention}
    sections: dict[str, object] = {"storage": storage}
    if port is not None:
        sections["listener"] = {"host": "127.0.0.1", "port": port}
    path.write_text(yaml.safe_dump(sections))
    return load_node_config(path)


@dataclass(frozen=True)
class Study:
    uid: str
    relpaths: tuple[str, ...]
    job_id: int | None = None


def ingest(config: NodeConfig, workdir: Path, count: int = 3) -> Study:
    """Spool and index ``count`` instances of a new study, as the SCP does."""
    spool = Spool(config.storage.spool_dir, 0)
    index = Index(config.storage.database_path)
    relpaths = []
    try:
        for source in make_instances(workdir / "src", count):
            header = parse_file_header(source)
            relpath = instance_relpath(
                header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
            )
            size = spool.write(relpath, [source.read_bytes()])
            index.store(StoredInstance(header, relpath, size, NOW - 100 * DAY))
            relpaths.append(relpath)
            source.unlink()
    finally:
        index.close()
    return Study(header.study_instance_uid, tuple(relpaths))


def settle(
    conn: sqlite3.Connection,
    study: Study,
    *,
    at: float,
    routed: bool = True,
    job_state: str | None = None,
    outbox_state: str | None = None,
    vendor_expires_at: float | None = None,
    outputs_dir: Path | None = None,
) -> Study:
    """Make the study stable at ``at``; optionally routed to one job whose one result has
    one outbox row in ``outbox_state`` (sent at ``at``), with result files under
    ``outputs_dir/job-N``."""
    with transaction(conn):
        conn.execute(
            "UPDATE studies SET state = 'stable' WHERE study_instance_uid = ?", (study.uid,)
        )
        version_id = conn.execute(
            "INSERT INTO study_versions (study_instance_uid, version, stable_at, instance_count,"
            " routed_at) VALUES (?, 1, ?, ?, ?)",
            (study.uid, at, len(study.relpaths), at if routed else None),
        ).lastrowid
        if job_state is None:
            return study
        match_id = conn.execute(
            "INSERT INTO route_matches (study_version_id, route_name, plugin, "
            "series_instance_uid, destinations, mode, created_at) "
            "VALUES (?, 'r', 'p', 'series', '[\"pacs\"]', 'production', ?)",
            (version_id, at),
        ).lastrowid
        finished = at if job_state not in ("QUEUED", "RUNNING") else None
        job_id = conn.execute(
            "INSERT INTO jobs (route_match_id, state, next_attempt_at, created_at, finished_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (match_id, job_state, at, at, finished),
        ).lastrowid
        if vendor_expires_at is not None:
            conn.execute(
                "INSERT INTO vendor_requests VALUES "
                "(?, 'v@1', 'VENDOR', ?, 'series', 0, 1, ?, ?, 5)",
                (job_id, study.uid, at, vendor_expires_at),
            )
        conn.execute(
            "INSERT INTO pseudonyms VALUES (?, 'uid', ?, '2.25.1', ?)",
            (f"{study.uid}/r/p", study.uid, at),
        )
        if outbox_state is not None:
            result_uid = f"{study.uid}.9{job_id}"
            conn.execute(
                "INSERT INTO results VALUES (?, ?, 'sr', '1.2.840.10008.5.1.4.1.1.88.22', ?, ?)",
                (result_uid, job_id, f"job-{job_id}/sr.dcm", at),
            )
            conn.execute(
                "INSERT INTO outbox (sop_instance_uid, destination, state, next_attempt_at, "
                "sent_at) VALUES (?, 'pacs', ?, ?, ?)",
                (result_uid, outbox_state, at, at if outbox_state == "SENT" else None),
            )
            conn.execute(
                "INSERT INTO shadow_findings (job_id, series_instance_uid, plugin, "
                "plugin_version, mode, summary, created_at) VALUES (?, 's', 'p', '1', 'shadow', "
                "'{}', ?)",
                (job_id, at),
            )
        if outputs_dir is not None:
            (outputs_dir / f"job-{job_id}").mkdir(parents=True)
            (outputs_dir / f"job-{job_id}" / "sr.dcm").write_bytes(b"x" * 1000)
    return Study(study.uid, study.relpaths, job_id)


def assert_consistent(config: NodeConfig) -> None:
    """The index and the spool name the same files, and no foreign key dangles."""
    spool = Spool(config.storage.spool_dir, 0)
    conn = connect(config.storage.database_path)
    try:
        indexed = {row[0] for row in conn.execute("SELECT path FROM instances")}
        assert set(spool.files()) == indexed
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


def study_rows(conn: sqlite3.Connection, uid: str) -> int:
    """Rows that still name the study (studies, instances, versions, pseudonyms)."""
    return sum(
        conn.execute(sql, (uid,)).fetchone()[0]
        for sql in (
            "SELECT COUNT(*) FROM studies WHERE study_instance_uid = ?",
            "SELECT COUNT(*) FROM instances WHERE study_instance_uid = ?",
            "SELECT COUNT(*) FROM study_versions WHERE study_instance_uid = ?",
            "SELECT COUNT(*) FROM pseudonyms WHERE original = ?",
        )
    )
