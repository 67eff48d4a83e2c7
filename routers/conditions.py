"""Route conditions: the tree a ``when:`` mapping compiles to (``when_compiler``), which
evaluates a series and explains the first test that failed.

A multi-valued attribute (ImageType) passes a test when any of its values does; string
compares ignore case unless the test is case-sensitive. Evaluation never raises: a value that
cannot be compared fails the test and is reported as the actual value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, Protocol

from routers.attributes import SeriesView
from routers.bodypart import RegionDecision

DERIVED_FIELDS: Mapping[str, str] = {
    "body_part": "normalised region (chest, head, neck, ...) from BodyPartExamined and fallbacks",
    "modality": "the Modality attribute",
    "calling_ae": "AE title of the sender (any of them, when several sent the series)",
    "called_ae": "AE title the sender called (this node's, per department)",
    "instance_count": "images in the series (each frame of a multi-frame instance counts)",
}
GROUP_KEYS = ("any", "all", "not")


class Operator(StrEnum):
    EQUALS = "equals"
    IN = "in"
    REGEX = "regex"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    EXISTS = "exists"

    @property
    def numeric(self) -> bool:
        """lt, le, gt, ge: compare numbers."""
        return self in _NUMERIC


OPERATOR_KEYS = (*(op.value for op in Operator), "not", "case_sensitive")
_NUMERIC = {
    Operator.LT: lambda a, b: a < b,
    Operator.LE: lambda a, b: a <= b,
    Operator.GT: lambda a, b: a > b,
    Operator.GE: lambda a, b: a >= b,
}
_SYMBOL = {Operator.LT: "<", Operator.LE: "<=", Operator.GT: ">", Operator.GE: ">="}


@dataclass(frozen=True)
class Subject:
    """What conditions read: one series and its normalised region."""

    series: SeriesView
    region: RegionDecision


@dataclass(frozen=True)
class Failure:
    """The first condition that did not hold, with the value it saw."""

    condition: str
    actual: str
    path: tuple[str | int, ...]

    def describe(self) -> str:
        return f"{self.condition} -- actual: {self.actual}"


class Condition(Protocol):
    path: tuple[str | int, ...]

    def first_failure(self, subject: Subject) -> Failure | None: ...

    def describe(self) -> str: ...


# --- reading values ----------------------------------------------------------------------


def _flatten(value: Any) -> tuple[Any, ...]:
    """Scalars of a value; nested sequences and mappings are not comparable and dropped."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(
            v for v in value if v is not None and not isinstance(v, (list, tuple, dict, Mapping))
        )
    if isinstance(value, (dict, Mapping)):
        return ()
    return (value,)


def field_values(subject: Subject, field: str) -> tuple[Any, ...]:
    """The values a condition on ``field`` compares against (empty when absent)."""
    if field == "body_part":
        return (subject.region.region.value,)
    if field == "calling_ae":
        return tuple(sorted(subject.series.calling_ae_titles))
    if field == "called_ae":
        return tuple(sorted(subject.series.called_ae_titles))
    if field == "instance_count":
        return (subject.series.image_count,)
    keyword = "Modality" if field == "modality" else field
    values = _flatten(subject.series.attributes.get(keyword))
    return tuple(v for v in values if not (isinstance(v, str) and not v.strip()))


def _text(value: Any) -> str:
    try:
        return value.strip() if isinstance(value, str) else str(value)
    except Exception:
        return ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if not math.isnan(number) else None


def show(values: Sequence[Any]) -> str:
    """Values as explain prints them."""
    if not values:
        return "absent"
    if len(values) == 1:
        return repr(values[0]) if isinstance(values[0], str) else _text(values[0])
    return "[" + ", ".join(repr(v) if isinstance(v, str) else _text(v) for v in values) + "]"


# --- the tree ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldTest:
    field: str
    operator: Operator
    operand: Any
    case_sensitive: bool
    path: tuple[str | int, ...]

    def describe(self) -> str:
        if self.operator is Operator.EXISTS:
            return f"{self.field} {'exists' if self.operand else 'is absent'}"
        if self.operator is Operator.EQUALS:
            return f"{self.field} == {self.operand!r}"
        if self.operator is Operator.IN:
            return f"{self.field} in {list(self.operand)!r}"
        if self.operator is Operator.REGEX:
            return f"{self.field} matches /{self.operand}/"
        return f"{self.field} {_SYMBOL[self.operator]} {self.operand}"

    def _fold(self, text: str) -> str:
        return text if self.case_sensitive else text.casefold()

    def _equal(self, actual: Any, expected: Any) -> bool:
        if not isinstance(expected, (str, bool)) and isinstance(expected, (int, float)):
            number = _number(actual)
            if number is not None:
                return number == expected
        return self._fold(_text(actual)) == self._fold(_text(expected))

    def holds(self, values: tuple[Any, ...]) -> bool:
        if self.operator is Operator.EXISTS:
            return bool(values) == bool(self.operand)
        if self.operator is Operator.EQUALS:
            return any(self._equal(v, self.operand) for v in values)
        if self.operator is Operator.IN:
            return any(self._equal(v, e) for v in values for e in self.operand)
        if self.operator is Operator.REGEX:
            pattern = _compiled(self.operand, self.case_sensitive)
            return any(pattern.search(_text(v)) is not None for v in values)
        compare = _NUMERIC[self.operator]
        numbers = (_number(v) for v in values)
        return any(n is not None and compare(n, self.operand) for n in numbers)

    def first_failure(self, subject: Subject) -> Failure | None:
        values = field_values(subject, self.field)
        if self.holds(values):
            return None
        return Failure(self.describe(), show(values), self.path)


@lru_cache(maxsize=1024)
def _compiled(pattern: str, case_sensitive: bool) -> re.Pattern[str]:
    return re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)


@dataclass(frozen=True)
class Not:
    inner: Condition
    path: tuple[str | int, ...]

    def describe(self) -> str:
        return f"not ({self.inner.describe()})"

    def first_failure(self, subject: Subject) -> Failure | None:
        if self.inner.first_failure(subject) is not None:
            return None
        actual = "it holds"
        if isinstance(self.inner, FieldTest):
            actual = show(field_values(subject, self.inner.field))
        return Failure(self.describe(), actual, self.path)


@dataclass(frozen=True)
class AllOf:
    items: tuple[Condition, ...]
    path: tuple[str | int, ...]

    def describe(self) -> str:
        return "all of (" + "; ".join(c.describe() for c in self.items) + ")"

    def first_failure(self, subject: Subject) -> Failure | None:
        for item in self.items:
            failure = item.first_failure(subject)
            if failure is not None:
                return failure
        return None


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]
    path: tuple[str | int, ...]

    def describe(self) -> str:
        return "any of (" + "; ".join(c.describe() for c in self.items) + ")"

    def first_failure(self, subject: Subject) -> Failure | None:
        failures = []
        for item in self.items:
            failure = item.first_failure(subject)
            if failure is None:
                return None
            failures.append(failure)
        actual = "; ".join(f"{f.condition}: {f.actual}" for f in failures) or "empty list"
        return Failure(self.describe(), actual, self.path)


# --- did you mean -----------------------------------------------------------------------


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The closest choice, case-insensitively (exact case-insensitive hits first)."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None
