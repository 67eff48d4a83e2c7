"""A route's ``when:`` mapping compiled into the condition tree (``conditions``), with every
problem in it located for ``routes check``.

Keys are DICOM keywords or the derived fields of ``conditions.DERIVED_FIELDS``;
``any``/``all`` take lists of mappings and ``not`` one. A plain value tests equality, a list
means ``in``, a mapping gives operators (``equals in regex lt le gt ge exists not``, plus
``case_sensitive``). String compares ignore case unless ``case_sensitive: true``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import keyword_dict

from routers.attributes import is_identifying
from routers.bodypart import Region
from routers.conditions import (
    DERIVED_FIELDS,
    OPERATOR_KEYS,
    AllOf,
    AnyOf,
    Condition,
    FieldTest,
    Not,
    Operator,
    suggest,
)
from routers.schema import Problem

__all__ = ["compile_when"]

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
        elif operator.numeric and (
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
                if str(region).strip().lower() not in {r.value for r in Region}:
                    guess = suggest(str(region).strip(), [r.value for r in Region])
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
