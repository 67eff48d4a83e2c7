"""Matching: a stable study version × the route table → route-match rows.

``match_study`` is pure (a study view in, ``RouteMatch`` objects out) so tests, explain and
the bench share it; ``route_pending`` persists the matches of every stable version that has
not been routed yet, and marks it routed, in one transaction per version.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, replace

from node.db import transaction
from routers.attributes import SeriesView, StudyView, study_view_from_index
from routers.bodypart import BodyPartTable, RegionDecision
from routers.conditions import Condition, Failure, Subject
from routers.schema import Mode, PluginRef, Urgency
from routers.selection import Selection, SeriesCriteria, select_series

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """One compiled route, ready to evaluate."""

    name: str
    enabled: bool
    priority: int
    when: Condition
    series: SeriesCriteria
    run: tuple[PluginRef, ...]
    send_to: tuple[str, ...]
    mode: Mode
    urgency: Urgency = Urgency.NORMAL


@dataclass(frozen=True)
class RouteTable:
    """Every route of one routes.yaml, in evaluation order (priority, then file order)."""

    routes: tuple[Route, ...]
    body_parts: BodyPartTable
    source: str = ""  # the file it came from, for logs
    # node.yaml destinations flagged shadow; None when loaded without node.yaml (explain)
    shadow_destinations: frozenset[str] | None = None

    def ordered(self) -> tuple[Route, ...]:
        return tuple(sorted(self.routes, key=lambda r: -r.priority))


@dataclass(frozen=True)
class RouteMatch:
    """One plugin run a study version needs: ready for the job stage."""

    route_name: str
    plugin: str
    plugin_version: str | None
    series_instance_uid: str
    destinations: tuple[str, ...]
    mode: Mode
    urgency: Urgency = Urgency.NORMAL  # the job's: node.jobs claims urgent jobs first


@dataclass(frozen=True)
class SeriesOutcome:
    """How one series fared against a route's ``when``."""

    series: SeriesView
    region: RegionDecision
    failure: Failure | None


@dataclass(frozen=True)
class RouteOutcome:
    """A route evaluated against a study: what explain prints, what matching persists."""

    route: Route
    series: tuple[SeriesOutcome, ...]
    selection: Selection | None  # None when the route is disabled or no series met ``when``

    @property
    def matched(self) -> bool:
        return (
            self.route.enabled
            and self.selection is not None
            and (self.selection.chosen is not None)
        )

    def matches(self) -> tuple[RouteMatch, ...]:
        if not self.matched or self.selection is None or self.selection.chosen is None:
            return ()
        chosen = self.selection.chosen.series_instance_uid
        return tuple(
            RouteMatch(
                route_name=self.route.name,
                plugin=plugin.plugin,
                plugin_version=plugin.version,
                series_instance_uid=chosen,
                destinations=self.route.send_to,
                mode=self.route.mode,
                urgency=self.route.urgency,
            )
            for plugin in self.route.run
        )


def evaluate(table: RouteTable, study: StudyView) -> tuple[RouteOutcome, ...]:
    """Every route (disabled ones too, for explain) against ``study``."""
    regions = {s.series_instance_uid: table.body_parts.decide(s.attributes) for s in study.series}
    outcomes = []
    for route in table.ordered():
        series_outcomes = tuple(
            SeriesOutcome(
                s,
                regions[s.series_instance_uid],
                route.when.first_failure(Subject(s, regions[s.series_instance_uid])),
            )
            for s in study.series
        )
        candidates = [o.series for o in series_outcomes if o.failure is None]
        selection = None
        if route.enabled and candidates:
            selection = select_series(route.series, candidates)
        outcomes.append(RouteOutcome(route, series_outcomes, selection))
    return tuple(outcomes)


def match_study(table: RouteTable, study: StudyView) -> tuple[RouteMatch, ...]:
    """The plugin runs ``study`` needs: fan-out over routes and over each route's plugins.

    A shadow match keeps only shadow destinations. ``routes check`` already refuses a shadow
    route that names a production destination; this guard covers node.yaml changing later.
    """
    matches = []
    for outcome in evaluate(table, study):
        for match in outcome.matches():
            if match.mode is Mode.SHADOW and table.shadow_destinations is not None:
                kept = tuple(d for d in match.destinations if d in table.shadow_destinations)
                match = replace(match, destinations=kept)
            matches.append(match)
    return tuple(matches)


# --- persistence -------------------------------------------------------------------------


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
