"""Route matches into the record: one transaction per stable study version.

``routers.matcher.match_study`` decides (pure: a study view in, ``RouteMatch`` objects out);
this module reads the version from the index, writes its ``route_matches`` rows and sets
``study_versions.routed_at``, so the job stage picks the matches up and a restart never
routes a version twice.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time

from node.db import transaction
from routers.attributes import study_view_from_index
from routers.matcher import RouteMatch, RouteTable, match_study

logger = logging.getLogger(__name__)


def _pending_versions(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT id, study_instance_uid, version FROM study_versions "
        "WHERE routed_at IS NULL ORDER BY stable_at, id"
    ).fetchall()


def route_version(
    conn: sqlite3.Connection, table: RouteTable, version_id: int, now: float | None = None
) -> tuple[RouteMatch, ...]:
    """Match one stable version and persist its route matches; idempotent per version.

    Rows are inserted in route priority order, so ``ORDER BY id`` is the routes' ranking.
    """
    row = conn.execute(
        "SELECT study_instance_uid, version, routed_at FROM study_versions WHERE id = ?",
        (version_id,),
    ).fetchone()
    if row is None or row["routed_at"] is not None:
        return ()
    study = study_view_from_index(conn, row["study_instance_uid"], row["version"])
    matches = match_study(table, study) if study is not None else ()
    stamp = time.time() if now is None else now
    with transaction(conn):
        still_pending = conn.execute(
            "SELECT 1 FROM study_versions WHERE id = ? AND routed_at IS NULL", (version_id,)
        ).fetchone()
        if still_pending is None:
            return ()
        conn.executemany(
            "INSERT OR IGNORE INTO route_matches (study_version_id, route_name, plugin, "
            "plugin_version, series_instance_uid, destinations, mode, created_at, urgency) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    version_id,
                    m.route_name,
                    m.plugin,
                    m.plugin_version,
                    m.series_instance_uid,
                    json.dumps(list(m.destinations)),
                    m.mode.value,
                    stamp,
                    m.urgency.rank,
                )
                for m in matches
            ],
        )
        conn.execute("UPDATE study_versions SET routed_at = ? WHERE id = ?", (stamp, version_id))
    logger.info(
        "routed study %s version %s: %d match(es)%s",
        row["study_instance_uid"],
        row["version"],
        len(matches),
        "".join(f"; {m.route_name} -> {m.plugin} ({m.mode.value})" for m in matches),
    )
    return matches


def route_pending(conn: sqlite3.Connection, table: RouteTable) -> int:
    """Route every stable version not routed yet; returns how many versions were routed."""
    count = 0
    for row in _pending_versions(conn):
        try:
            route_version(conn, table, row["id"])
        except Exception:  # one bad version must not hold up the others; it stays pending
            logger.exception(
                "routing study %s version %s failed; it stays pending",
                row["study_instance_uid"],
                row["version"],
            )
            continue
        count += 1
    return count
