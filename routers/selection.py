"""Series selection: which one series of a matched study a route's plugins get, and why.

Every filter that rejects a series says so in words (explain prints them), and the
tie-break between the series that pass is deterministic (the series UID settles the rest).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom._uid_dict import UID_dictionary

from routers.attributes import SeriesView
from routers.conditions import suggest
from routers.schema import Orientation, Prefer, Problem, SeriesSpec

_SOP_CLASS_NAMES = {
    entry[4]: uid for uid, entry in UID_dictionary.items() if entry[1] == "SOP Class" and entry[4]
}
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def orientation_of(
    orientation: tuple[float, ...] | None, tolerance_deg: float
) -> Orientation | None:
    """The plane of ImageOrientationPatient's slice normal, or None if oblique or unknown."""
    if orientation is None or len(orientation) != 6:
        return None
    rx, ry, rz, cx, cy, cz = orientation
    normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
    length = math.sqrt(sum(n * n for n in normal))
    if not math.isfinite(length) or length < 1e-6:
        return None
    components = [abs(n) / length for n in normal]
    axis = max(range(3), key=lambda i: components[i])
    angle = math.degrees(math.acos(min(1.0, components[axis])))
    if angle > tolerance_deg:
        return None
    return (Orientation.SAGITTAL, Orientation.CORONAL, Orientation.AXIAL)[axis]


def resolve_sop_class(text: str) -> str | None:
    """A SOP class UID from a UID or a pydicom name (``CTImageStorage``)."""
    if _UID_PATTERN.match(text):
        return text
    return _SOP_CLASS_NAMES.get(text)


@dataclass(frozen=True)
class SeriesCriteria:
    """A route's ``series:`` block, with names resolved and the regex compiled."""

    spec: SeriesSpec
    include_sop_classes: frozenset[str]
    exclude_sop_classes: frozenset[str]
    description: re.Pattern[str] | None

    @classmethod
    def compile(
        cls, spec: SeriesSpec, path: tuple[str | int, ...]
    ) -> tuple[SeriesCriteria, list[Problem]]:
        problems: list[Problem] = []

        def uids(field: str, names: Sequence[str]) -> frozenset[str]:
            resolved = set()
            for index, name in enumerate(names):
                uid = resolve_sop_class(name)
                if uid is None:
                    guess = suggest(name, list(_SOP_CLASS_NAMES))
                    problems.append(
                        Problem(
                            (*path, field, index),
                            f"unknown SOP class '{name}'",
                            (f"did you mean '{guess}'? " if guess else "")
                            + "use a UID or a name such as CTImageStorage",
                        )
                    )
                else:
                    resolved.add(uid)
            return frozenset(resolved)

        description = None
        if spec.description_regex is not None:
            try:
                description = re.compile(spec.description_regex, re.IGNORECASE)
            except re.error as exc:
                problems.append(
                    Problem(
                        (*path, "description_regex"),
                        f"invalid regex {spec.description_regex!r}: {exc.msg} "
                        f"at position {exc.pos}",
                        "quote the pattern and escape special characters with a backslash",
                    )
                )
        criteria = cls(
            spec,
            uids("include_sop_class", spec.include_sop_class),
            uids("exclude_sop_class", spec.exclude_sop_class),
            description,
        )
        return criteria, problems

    def rejection(self, series: SeriesView) -> str | None:
        """Why ``series`` cannot be selected, or None if it can."""
        spec = self.spec
        if self.include_sop_classes and not series.sop_classes <= self.include_sop_classes:
            other = sorted(series.sop_classes - self.include_sop_classes)
            return f"SOP class {_sop_name(other[0])} is not in include_sop_class"
        excluded = series.sop_classes & self.exclude_sop_classes
        if excluded:
            return f"SOP class {_sop_name(sorted(excluded)[0])} is excluded"
        image_types = series.image_types
        for value in spec.exclude_image_type:
            if value.upper() in image_types:
                return f"ImageType contains {value.upper()}"
        for value in spec.include_image_type:
            if value.upper() not in image_types:
                return f"ImageType lacks {value.upper()} (has {sorted(image_types) or 'none'})"
        count = series.image_count
        if count < spec.min_instances:
            return f"{count} images, fewer than min_instances {spec.min_instances}"
        if spec.max_instances is not None and count > spec.max_instances:
            return f"{count} images, more than max_instances {spec.max_instances}"
        if spec.orientation is not None:
            plane = orientation_of(series.orientation, spec.orientation_tolerance_deg)
            if plane is not spec.orientation:
                seen = (
                    "no ImageOrientationPatient"
                    if series.orientation is None
                    else f"orientation is {plane.value if plane else 'oblique'}"
                )
                return f"{seen}, not {spec.orientation.value}"
        if spec.slice_thickness_min is not None or spec.slice_thickness_max is not None:
            thickness = series.slice_thickness
            if thickness is None:
                return "no SliceThickness"
            if spec.slice_thickness_min is not None and thickness < spec.slice_thickness_min:
                return f"slice thickness {thickness:g} mm < {spec.slice_thickness_min:g} mm"
            if spec.slice_thickness_max is not None and thickness > spec.slice_thickness_max:
                return f"slice thickness {thickness:g} mm > {spec.slice_thickness_max:g} mm"
        if self.description is not None and not self.description.search(series.description):
            return (
                f"SeriesDescription {series.description!r} does not match "
                f"/{self.description.pattern}/"
            )
        return None


def _sop_name(uid: str) -> str:
    for name, value in _SOP_CLASS_NAMES.items():
        if value == uid:
            return name
    return uid


@dataclass(frozen=True)
class SeriesVerdict:
    series: SeriesView
    reason: str  # why rejected, or why chosen / why it lost the tie-break


@dataclass(frozen=True)
class Selection:
    """The chosen series (or None) and a verdict for every candidate."""

    chosen: SeriesView | None
    verdicts: tuple[SeriesVerdict, ...]


def _latest_key(series: SeriesView) -> tuple[str, float, float]:
    """Series date/time, then arrival, then SeriesNumber: larger is later."""
    attributes = series.attributes
    stamp = f"{attributes.get('SeriesDate') or ''}{attributes.get('SeriesTime') or ''}"
    received = max((i.received_at or 0.0 for i in series.instances), default=0.0)
    try:
        number = float(attributes.get("SeriesNumber"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1.0
    return stamp, received, number if math.isfinite(number) else -1.0


def _ranked(prefer: Prefer, passing: Sequence[SeriesView]) -> list[SeriesView]:
    """Best first; the series UID makes the order total."""
    by_uid = sorted(passing, key=lambda s: s.series_instance_uid)
    if prefer is Prefer.LATEST:
        return sorted(by_uid, key=_latest_key, reverse=True)

    def thinness(series: SeriesView) -> float:
        thickness = series.slice_thickness
        return thickness if thickness is not None else math.inf

    if prefer is Prefer.THINNEST:
        return sorted(by_uid, key=lambda s: (thinness(s), -s.image_count))
    return sorted(by_uid, key=lambda s: (-s.image_count, thinness(s)))


def select_series(criteria: SeriesCriteria, candidates: Sequence[SeriesView]) -> Selection:
    """Apply the filters to ``candidates`` (series that met ``when``) and break the tie."""
    passing: list[SeriesView] = []
    verdicts: dict[str, SeriesVerdict] = {}
    for series in candidates:
        reason = criteria.rejection(series)
        if reason is None:
            passing.append(series)
        else:
            verdicts[series.series_instance_uid] = SeriesVerdict(series, reason)
    if not passing:
        return Selection(None, tuple(verdicts[s.series_instance_uid] for s in candidates))
    prefer = criteria.spec.prefer
    ranked = _ranked(prefer, passing)
    chosen = ranked[0]
    verdicts[chosen.series_instance_uid] = SeriesVerdict(
        chosen,
        "selected: passes every series filter"
        + (f" and wins prefer: {prefer.value}" if len(ranked) > 1 else ""),
    )
    for loser in ranked[1:]:
        verdicts[loser.series_instance_uid] = SeriesVerdict(
            loser, f"passes the filters but loses prefer: {prefer.value}"
        )
    return Selection(chosen, tuple(verdicts[s.series_instance_uid] for s in candidates))
