"""The ``shadow_findings`` table: production and shadow findings kept side by side.

After each job the worker calls ``record_if_shadowed``: when the job's series has both a
production and a shadow match in the same study version, the Findings are kept (the JSON
summary of ``models.shadow.findings_summary`` in the row, segment masks in a ``.npz`` under
the data folder). ``agreement_report`` reads the rows back for ``ainode shadow report`` and
the console; how two records compare is ``models.shadow``'s.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from models.api import AlgorithmIdentification, Findings
from models.shadow import (
    RecordedFindings,
    ShadowReport,
    agreement,
    findings_summary,
    save_masks,
)
from node.db import transaction

__all__ = ["agreement_report", "masks_dir_for", "record_findings", "record_if_shadowed"]


def masks_dir_for(data_dir: Path) -> Path:
    """Where segment masks of recorded findings live for a node with this data folder."""
    return Path(data_dir) / "shadow"


def record_findings(
    conn: sqlite3.Connection,
    *,
    job_id: int,
    series_instance_uid: str,
    mode: str,
    findings: Findings,
    masks_dir: Path,
    product: AlgorithmIdentification | None = None,
) -> int:
    """Keep ``findings`` of one job for later comparison; returns the row id. ``product`` is
    the plugin version that ran (default: the findings' algorithm): a container product's
    findings name the vendor's algorithm, the same in two versions of its image."""
    product = product or findings.algorithm
    if mode not in ("production", "shadow"):
        raise ValueError(f"mode must be 'production' or 'shadow', got {mode!r}")
    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    masks_file = None
    if findings.segments:
        masks_file = f"job-{job_id}.npz"
        save_masks(findings, masks_dir / masks_file)
    summary = findings_summary(findings, masks_file)
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO shadow_findings (job_id, series_instance_uid, plugin, plugin_version, "
            "mode, summary, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                series_instance_uid,
                product.name,
                product.version,
                mode,
                json.dumps(summary),
                time.time(),
            ),
        )
    return int(cursor.lastrowid or 0)


def record_if_shadowed(
    conn: sqlite3.Connection,
    job_id: int,
    findings: Findings,
    masks_dir: Path,
    product: AlgorithmIdentification | None = None,
) -> bool:
    """Record the job's findings when its series is also run by a route of the other mode."""
    row = conn.execute(
        "SELECT m.study_version_id, m.series_instance_uid, m.mode FROM jobs j "
        "JOIN route_matches m ON m.id = j.route_match_id WHERE j.id = ?",
        (job_id,),
    ).fetchone()
    if row is None:
        raise ValueError(f"job {job_id} does not exist")
    modes = {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT mode FROM route_matches WHERE study_version_id = ? "
            "AND series_instance_uid = ?",
            (row["study_version_id"], row["series_instance_uid"]),
        )
    }
    if modes != {"production", "shadow"}:
        return False
    record_findings(
        conn,
        job_id=job_id,
        series_instance_uid=row["series_instance_uid"],
        mode=row["mode"],
        findings=findings,
        masks_dir=masks_dir,
        product=product,
    )
    return True


def agreement_report(
    conn: sqlite3.Connection, masks_dir: Path, *, plugin: str | None = None
) -> ShadowReport:
    """``models.shadow.agreement`` over every kept record, oldest first."""
    rows = conn.execute(
        "SELECT * FROM shadow_findings ORDER BY series_instance_uid, created_at, id"
    ).fetchall()
    records = (
        RecordedFindings(
            job_id=row["job_id"],
            series_instance_uid=row["series_instance_uid"],
            plugin=row["plugin"],
            plugin_version=row["plugin_version"],
            mode=row["mode"],
            summary=json.loads(row["summary"]),
        )
        for row in rows
    )
    return agreement(records, masks_dir, plugin=plugin)
