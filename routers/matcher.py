"""Matching: a stable study version × the route table → route-match rows.

``match_study`` is pure (a study view in, ``RouteMatch`` objects out) so tests, explain, the
bench and the node share it; the node writes the matches into its record
(``node.routing.matches``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from routers.attributes import SeriesView, StudyView
from routers.bodypart import BodyPartTable, RegionDecision
from routers.conditions import Condition, Failure, Subject
from routers.schema import Mode, PluginRef, Urgency
from routers.selection import Selection, SeriesCriteria, select_series


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
