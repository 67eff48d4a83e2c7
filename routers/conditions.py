"""Route conditions: the ``when:`` mapping compiled into a small tree that explains itself.

Keys are DICOM keywords or the derived fields below; ``any``/``all`` take lists of mappings
and ``not`` one. A plain value tests equality, a list means ``in``, a mapping gives operators
(``equals in regex lt le gt ge exists not``, plus ``case_sensitive``). String compares ignore
case unless ``case_sensitive: true``; a multi-valued attribute (ImageType) passes when any of
its values does. Evaluation never raises: a value that cannot be compared fails the test and
is reported as the actual value.
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

from pydicom.datadict import keyword_dict

from routers.attributes import SeriesView, is_identifying
from routers.bodypart import Region, RegionDecision
from routers.schema import Problem

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


OPERATOR_KEYS = (*(op.value for op in Operator), "not", "case_sensitive")
# Spellings people bring from other languages, for "did you mean" hints.
_OPERATOR_ALIASES = {
    "eq": "equals",
    "equal": "equals",
    "is": "equals",
    "==": "equals",
    "one_of": "in",
    "match": "regex",
    "matches": "regex",
    "re": "regex",
    "lte": "le",
    "gte": "ge",
    "<": "lt",
    "<=": "le",
    ">": "gt",
    ">=": "ge",
    "present": "exists",
    "ne": "not",
    "neq": "not",
    "!=": "not",
}
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


# --- compiling ---------------------------------------------------------------------------


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The closest choice, case-insensitively (exact case-insensitive hits first)."""
    lowered = {c.lower(): c for c in choices}
    if word.lower() in lowered:
        return lowered[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _known_field(name: str) -> bool:
    return name in DERIVED_FIELDS or name in keyword_dict


def _field_choices() -> list[str]:
    return [*DERIVED_FIELDS, *keyword_dict]


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


class _Compiler:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(
        self, path: tuple[str | int, ...], message: str, hint: str = "", at_key: bool = False
    ) -> None:
        self.problems.append(Problem(path, message, hint, at_key))

    def mapping(self, data: Any, path: tuple[str | int, ...]) -> Condition:
        if not isinstance(data, Mapping):
            self.problem(
                path, "conditions must be a mapping of keyword: value", "write e.g. `Modality: CT`"
            )
            return AllOf((), path)
        items: list[Condition] = []
        for key, value in data.items():
            key_path = (*path, key)
            if not isinstance(key, str):
                self.problem(
                    key_path,
                    f"condition key {key!r} is not a name",
                    "use a DICOM keyword such as Modality",
                    at_key=True,
                )
                continue
            if key in ("any", "all"):
                items.append(self.group(key, value, key_path))
            elif key == "not":
                items.append(Not(self.mapping(value, key_path), key_path))
            elif is_identifying(key):
                self.problem(
                    key_path,
                    f"'{key}' cannot be used in routes",
                    "patient identifiers and person names are kept out of routing and its "
                    "logs; route on study and series attributes",
                    at_key=True,
                )
            elif not _known_field(key):
                guess = suggest(key, _field_choices())
                hint = (
                    f"did you mean '{guess}'?"
                    if guess
                    else "use a DICOM keyword (PS3.6), or one of " + ", ".join(DERIVED_FIELDS)
                )
                self.problem(key_path, f"unknown keyword '{key}'", hint, at_key=True)
            else:
                items.append(self.matcher(key, value, key_path))
        return items[0] if len(items) == 1 else AllOf(tuple(items), path)

    def group(self, key: str, value: Any, path: tuple[str | int, ...]) -> Condition:
        if not isinstance(value, list) or not value:
            self.problem(
                path,
                f"'{key}' needs a non-empty list of condition mappings",
                f"write `{key}:` followed by lines starting with '- '",
            )
            return AllOf((), path)
        items = tuple(self.mapping(item, (*path, i)) for i, item in enumerate(value))
        return AnyOf(items, path) if key == "any" else AllOf(items, path)

    def matcher(self, field: str, value: Any, path: tuple[str | int, ...]) -> Condition:
        if value is None:
            self.problem(
                path,
                f"'{field}' has no value",
                "give a value, or `{exists: true}` to require the attribute",
            )
            return AllOf((), path)
        if _is_scalar(value):
            return self.test(field, Operator.EQUALS, value, False, path)
        if isinstance(value, list):
            return self.test(field, Operator.IN, value, False, path)
        if not isinstance(value, Mapping):
            self.problem(path, f"'{field}' has a value of an unusable type")
            return AllOf((), path)
        case_sensitive = value.get("case_sensitive", False)
        if not isinstance(case_sensitive, bool):
            self.problem((*path, "case_sensitive"), "case_sensitive must be true or false")
            case_sensitive = False
        tests: list[Condition] = []
        for op_name, operand in value.items():
            op_path = (*path, op_name)
            if op_name == "case_sensitive":
                continue
            if op_name == "not":
                tests.append(Not(self.matcher(field, operand, op_path), op_path))
                continue
            try:
                operator = Operator(op_name)
            except ValueError:
                guess = _OPERATOR_ALIASES.get(str(op_name).lower()) or suggest(
                    str(op_name), OPERATOR_KEYS
                )
                hint = f"did you mean '{guess}'? " if guess else ""
                self.problem(
                    op_path,
                    f"unknown operator '{op_name}'",
                    hint + "operators: " + ", ".join(OPERATOR_KEYS),
                    at_key=True,
                )
                continue
            tests.append(self.test(field, operator, operand, case_sensitive, op_path))
        if not tests:
            if all(key == "case_sensitive" for key in value):
                self.problem(path, f"'{field}' has no operator", "e.g. `{equals: CT}`")
            return AllOf((), path)
        return tests[0] if len(tests) == 1 else AllOf(tuple(tests), path)

    def test(
        self,
        field: str,
        operator: Operator,
        operand: Any,
        case_sensitive: bool,
        path: tuple[str | int, ...],
    ) -> Condition:
        if operator is Operator.EXISTS and not isinstance(operand, bool):
            self.problem(path, "exists takes true or false")
        elif operator is Operator.IN:
            if not isinstance(operand, list) or not all(_is_scalar(v) for v in operand):
                self.problem(path, "'in' takes a list of values", "e.g. `in: [CR, DX]`")
                operand = []
            operand = tuple(operand)
        elif operator is Operator.EQUALS and not _is_scalar(operand):
            self.problem(path, "'equals' takes one value", "use 'in' for a list")
        elif operator in _NUMERIC and (
            isinstance(operand, bool) or not isinstance(operand, (int, float))
        ):
            self.problem(path, f"'{operator.value}' takes a number, got {operand!r}")
        elif operator is Operator.REGEX:
            if not isinstance(operand, str):
                self.problem(path, "'regex' takes a string")
            else:
                try:
                    re.compile(operand)
                except re.error as exc:
                    self.problem(
                        path,
                        f"invalid regex {operand!r}: {exc.msg} at position {exc.pos}",
                        "quote the pattern and escape special characters with a backslash",
                    )
        if field == "body_part" and operator in (Operator.EQUALS, Operator.IN):
            for region in operand if isinstance(operand, tuple) else (operand,):
                if _text(region).lower() not in {r.value for r in Region}:
                    guess = suggest(_text(region), [r.value for r in Region])
                    self.problem(
                        path,
                        f"unknown body region {region!r}",
                        (f"did you mean '{guess}'? " if guess else "")
                        + "regions: "
                        + ", ".join(r.value for r in Region),
                    )
        return FieldTest(field, operator, operand, case_sensitive, path)


def compile_when(data: Any, path: tuple[str | int, ...]) -> tuple[Condition, list[Problem]]:
    """The condition tree for a ``when:`` mapping, and the problems found in it."""
    compiler = _Compiler()
    condition = compiler.mapping(data if data is not None else {}, path)
    return condition, compiler.problems
