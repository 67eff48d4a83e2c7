"""``routes explain``: for one study, every route, matched or not, and why, in plain text.

The study's series are listed once as S1, S2, ... with their normalised region; then, per
route, a miss names the first condition that failed and the value it saw (series that fail
the same way are grouped), and a match shows the selected series and why the others were not.
Given the installed plugins, a match also says when a plugin will refuse the selected series
because it needs a pixel spacing the series' indexed header does not have.
"""

from __future__ import annotations

from models.discovery import Catalog
from models.manifest import PluginManifest
from models.spacing import spacing_of_attributes
from routers.attributes import SeriesView, StudyView
from routers.matcher import RouteOutcome, RouteTable, evaluate
from routers.schema import PluginRef


def _short(series: SeriesView) -> str:
    number = series.attributes.get("SeriesNumber")
    modality = series.attributes.get("Modality") or "?"
    description = series.description or "(no description)"
    return f"#{number if number is not None else '?'} {modality} {description!r}"


def _grouped(pairs: list[tuple[str, str]]) -> list[str]:
    """'S1, S3: reason' lines, one per distinct reason, in first-seen order."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in pairs:
        by_reason.setdefault(reason, []).append(name)
    return [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def _needs_spacing(catalog: Catalog, name: str, version: str | None) -> PluginManifest | None:
    """The first plugin of ``name``'s chain (it or what it needs) that needs a spacing."""
    pending, seen = [(name, version)], set()
    while pending:
        name, version = pending.pop(0)
        try:
            manifest = catalog.get(name, version)
        except KeyError:  # not installed: the job says so; routes check already did
            continue
        if manifest.input.needs_spacing:
            return manifest
        seen.add(manifest.name)
        pending += [(needed, None) for needed in manifest.needs if needed not in seen]
    return None


def _spacing_refusals(
    run: tuple[PluginRef, ...], series: SeriesView, name: str, catalog: Catalog
) -> list[str]:
    """Why a plugin of ``run`` will refuse the series (no calibrated spacing), if it will."""
    resolved = spacing_of_attributes(series.attributes)
    if resolved is None or resolved.spacing is not None:
        return []
    lines = []
    for plugin in run:
        manifest = _needs_spacing(catalog, plugin.plugin, plugin.version)
        if manifest is not None:
            lines.append(
                f"  {plugin} will refuse {name}: {manifest.key} needs a calibrated pixel "
                f"spacing (input.needs_spacing), and the series has {resolved.detail}"
            )
    return lines


def _explain_route(
    outcome: RouteOutcome, names: dict[str, str], catalog: Catalog | None
) -> list[str]:
    route = outcome.route
    if not route.enabled:
        verdict = "disabled (not evaluated)"
    else:
        verdict = "MATCHED" if outcome.matched else "no match"
    lines = [f"route {route.name} [priority {route.priority}, {route.mode.value}]: {verdict}"]
    if not route.enabled:
        return lines
    when_failures = [
        (names[o.series.series_instance_uid], f"`when` fails at {o.failure.describe()}")
        for o in outcome.series
        if o.failure is not None
    ]
    if outcome.selection is None:
        lines.append("  no series meets `when`; first failing condition:")
        bare = [(name, reason.removeprefix("`when` fails at ")) for name, reason in when_failures]
        lines.extend(f"    {line}" for line in _grouped(bare))
        return lines
    if outcome.matched:
        destinations = ", ".join(route.send_to) or "no destination"
        lines.append(f"  runs: {', '.join(str(p) for p in route.run)} -> {destinations}")
        lines.append("  series:")
    else:
        lines.append("  series meet `when`, but none passes the series filters:")
    chosen = outcome.selection.chosen
    for verdict_ in outcome.selection.verdicts:
        name = names[verdict_.series.series_instance_uid]
        mark = "->" if chosen is not None and verdict_.series is chosen else "  "
        lines.append(f"   {mark} {name}: {verdict_.reason}")
    lines.extend(f"      {line}" for line in _grouped(when_failures))
    if outcome.matched and chosen is not None and catalog is not None:
        name = names[chosen.series_instance_uid]
        lines.extend(_spacing_refusals(route.run, chosen, name, catalog))
    return lines


def explain_study(table: RouteTable, study: StudyView, catalog: Catalog | None = None) -> str:
    """The whole explanation for one study, as text ending in a newline; with the installed
    plugins' ``catalog``, matches also say which plugin will refuse the series and why."""
    names = {s.series_instance_uid: f"S{i}" for i, s in enumerate(study.series, start=1)}
    version = f" (version {study.version})" if study.version is not None else ""
    lines = [f"study {study.study_instance_uid}{version}: {len(study.series)} series"]
    for series in study.series:
        region = table.body_parts.decide(series.attributes)
        lines.append(
            f"  {names[series.series_instance_uid]} {_short(series)}: "
            f"{series.image_count} image(s), region {region.describe()}"
        )
        lines.append(f"     series UID {series.series_instance_uid}")
    outcomes = evaluate(table, study)
    matched = [o for o in outcomes if o.matched]
    summary = "; ".join(
        f"{o.route.name} -> {', '.join(str(p) for p in o.route.run)} on "
        f"{names[o.selection.chosen.series_instance_uid]}"
        for o in matched
        if o.selection is not None and o.selection.chosen is not None
    )
    lines.append(f"result: {summary if matched else 'no route matches'}")
    for outcome in outcomes:
        lines.append("")
        lines.extend(_explain_route(outcome, names, catalog))
    return "\n".join(lines) + "\n"
