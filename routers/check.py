"""Load and check routes.yaml: every problem as ``file:line:column: message`` with a hint.

The YAML is composed into nodes first so every value keeps its position; pydantic checks
the structure route by route (one broken route does not hide the problems of the next), then
the semantic checks run: DICOM keywords, operators, regexes, SOP classes, installed plugins,
node.yaml destinations, and that a shadow route never sends to a production destination.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from routers.bodypart import BodyPartTable, Region
from routers.conditions import suggest
from routers.matcher import Route, RouteTable
from routers.schema import BodyPartEntry, Mode, Problem, RouteSpec
from routers.selection import SeriesCriteria
from routers.when_compiler import compile_when

DataPath = tuple[str | int, ...]  # keys and list indexes from the file's root


@dataclass(frozen=True)
class Diagnostic:
    """A located problem, as printed by ``ainode routes check``."""

    file: str
    line: int
    column: int
    message: str
    hint: str = ""

    def format(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: error: {self.message}"
        return text + (f"\n    hint: {self.hint}" if self.hint else "")


class RoutesFileError(Exception):
    """routes.yaml cannot be used; ``diagnostics`` say where and why (``ainode serve`` says
    "bad configuration", as for node.yaml)."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__("\n".join(d.format() for d in self.diagnostics))


@dataclass(frozen=True)
class CheckReport:
    diagnostics: tuple[Diagnostic, ...]
    table: RouteTable | None  # None when there is any diagnostic

    @property
    def ok(self) -> bool:
        return not self.diagnostics


# --- YAML with positions -----------------------------------------------------------------


class _Locator:
    """Maps a data path (keys and list indexes) to the YAML node it came from."""

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def find(self, path: DataPath, at_key: bool = False) -> yaml.Node | None:
        node = self.root
        key_node = None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                match = None
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        match = (k, v)
                if match is None:
                    break
                key_node, node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                key_node, node = None, node.value[part]
            else:
                break
        else:
            if at_key and key_node is not None:
                return key_node
        return node

    def duplicate_keys(self) -> list[tuple[yaml.Node, str]]:
        found: list[tuple[yaml.Node, str]] = []
        stack = [self.root] if self.root is not None else []
        while stack:
            node = stack.pop()
            if isinstance(node, yaml.MappingNode):
                seen: set[str] = set()
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode):
                        if k.value in seen:
                            found.append((k, k.value))
                        seen.add(k.value)
                    stack.append(v)
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)
        return found


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


# --- checking ----------------------------------------------------------------------------


def _pydantic_problems(
    exc: ValidationError, prefix: DataPath, model: type[BaseModel] | None
) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and "[" in p))
        path = (*prefix, *loc)
        kind = error["type"]
        if kind == "missing":
            problems.append(
                Problem(
                    path[:-1],
                    f"missing required field '{loc[-1]}'",
                    f"add `{loc[-1]}:` to this mapping",
                )
            )
        elif kind == "extra_forbidden":
            field = str(loc[-1])
            choices = list(_fields_at(model, loc[:-1]))
            guess = suggest(field, choices) if choices else None
            hint = (
                f"did you mean '{guess}'?"
                if guess
                else ("allowed: " + ", ".join(choices) if choices else "")
            )
            problems.append(Problem(path, f"unknown field '{field}'", hint, at_key=True))
        else:
            message = error["msg"].removeprefix("Value error, ")
            hint = ""
            if kind == "string_pattern_mismatch" and loc and loc[-1] == "name":
                message = f"route name {error['input']!r} is not allowed"
                hint = (
                    "start with a letter or digit; then letters, digits, '.', '_', '-' "
                    "(no spaces), at most 64 characters"
                )
            problems.append(Problem(path, f"{'.'.join(map(str, loc)) or 'value'}: {message}", hint))
    return problems


def _fields_at(model: type[BaseModel] | None, loc: DataPath) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        current = next(
            (a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _check_route(
    raw: Any,
    path: DataPath,
    known_plugins: Mapping[str, Sequence[str]] | None,
    destinations: Mapping[str, bool] | None,
) -> tuple[Route | None, list[Problem]]:
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        return None, [Problem(path, "a route must be a mapping with name, when, run, ...")]
    condition, when_problems = compile_when(raw.get("when"), (*path, "when"))
    problems += when_problems
    try:
        spec = RouteSpec.model_validate(raw)
    except ValidationError as exc:
        problems += [
            p
            for p in _pydantic_problems(exc, path, RouteSpec)
            if not (len(p.path) > len(path) and p.path[len(path)] == "when")
        ]
        return None, problems
    criteria, series_problems = SeriesCriteria.compile(spec.series, (*path, "series"))
    problems += series_problems
    for index, plugin in enumerate(spec.run):
        problems += _plugin_problems(
            plugin.plugin, plugin.version, (*path, "run", index), known_plugins
        )
    for index, name in enumerate(spec.send_to):
        problems += _destination_problems(spec, name, (*path, "send_to", index), destinations)
    route = Route(
        spec.name,
        spec.enabled,
        spec.priority,
        condition,
        criteria,
        spec.run,
        spec.send_to,
        spec.mode,
        spec.urgency,
    )
    return route, problems


def _plugin_problems(
    name: str, version: str | None, path: DataPath, known: Mapping[str, Sequence[str]] | None
) -> list[Problem]:
    if known is None:
        return []
    if name not in known:
        guess = suggest(name, list(known))
        installed = ", ".join(sorted(known)) or "none"
        hint = (f"did you mean '{guess}'? " if guess else "") + f"installed: {installed}"
        return [Problem(path, f"unknown plugin '{name}'", hint)]
    versions = tuple(known[name])
    if version is not None and versions and version not in versions:
        return [
            Problem(
                path,
                f"plugin '{name}' has no installed version '{version}'",
                "installed versions: " + ", ".join(versions),
            )
        ]
    return []


def _destination_problems(
    spec: RouteSpec, name: str, path: DataPath, destinations: Mapping[str, bool] | None
) -> list[Problem]:
    if destinations is None:
        return []
    if name not in destinations:
        guess = suggest(name, list(destinations))
        known = ", ".join(sorted(destinations)) or "none"
        hint = (f"did you mean '{guess}'? " if guess else "") + f"node.yaml destinations: {known}"
        return [Problem(path, f"unknown destination '{name}'", hint)]
    shadow = destinations[name]
    if spec.mode is Mode.SHADOW and not shadow:
        return [
            Problem(
                path,
                f"shadow route '{spec.name}' sends to production destination '{name}'",
                "send shadow results only to destinations with "
                "`shadow: true` in node.yaml, or to none (send_to: [])",
            )
        ]
    if spec.mode is Mode.PRODUCTION and shadow:
        return [
            Problem(
                path,
                f"production route '{spec.name}' sends to shadow destination '{name}'",
                "set `mode: shadow` on the route, or send to a production destination",
            )
        ]
    return []


def _check_data(
    data: Any,
    known_plugins: Mapping[str, Sequence[str]] | None,
    destinations: Mapping[str, bool] | None,
) -> tuple[list[Route], BodyPartTable, list[Problem]]:
    problems: list[Problem] = []
    table = BodyPartTable.default()
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return (
            [],
            table,
            [
                Problem(
                    (),
                    "the top level must be a mapping with `routes:`",
                    "start the file with `routes:`",
                )
            ],
        )
    for key in data:
        if key not in ("routes", "body_parts"):
            guess = suggest(str(key), ["routes", "body_parts"])
            problems.append(
                Problem(
                    (key,),
                    f"unknown top-level field '{key}'",
                    f"did you mean '{guess}'?" if guess else "allowed: routes, body_parts",
                    at_key=True,
                )
            )
    raw_parts = data.get("body_parts") or {}
    try:
        parts = TypeAdapter(dict[Region, BodyPartEntry]).validate_python(raw_parts)
    except ValidationError as exc:
        problems += _pydantic_problems(exc, ("body_parts",), None)
    else:
        if Region.UNKNOWN in parts:
            problems.append(
                Problem(
                    ("body_parts", "unknown"),
                    "'unknown' cannot have synonyms",
                    "a value that names no region is already unknown",
                    at_key=True,
                )
            )
        else:
            table = table.extended({r.value: e.model_dump() for r, e in parts.items()})
    raw_routes = data.get("routes")
    if raw_routes is None:
        raw_routes = []
    if not isinstance(raw_routes, list):
        problems.append(
            Problem(
                ("routes",),
                "`routes` must be a list of routes",
                "start each route with '- name: ...'",
            )
        )
        raw_routes = []
    routes: list[Route] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_routes):
        route, route_problems = _check_route(raw, ("routes", index), known_plugins, destinations)
        problems += route_problems
        if route is not None:
            if route.name in seen:
                problems.append(
                    Problem(
                        ("routes", index, "name"),
                        f"duplicate route name '{route.name}'",
                        f"route #{seen[route.name] + 1} already uses it; "
                        "names identify matches in the database",
                    )
                )
            seen.setdefault(route.name, index)
            routes.append(route)
    return routes, table, problems


def check_text(
    text: str,
    file: str,
    known_plugins: Mapping[str, Sequence[str]] | None = None,
    destinations: Mapping[str, bool] | None = None,
) -> CheckReport:
    """Check routes.yaml content. ``known_plugins`` maps name -> installed versions and
    ``destinations`` maps node.yaml destination names to their ``shadow`` flag; either may
    be None to skip that check."""
    try:
        root, data = _parse(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"not valid YAML: {exc.problem or exc.context}"
        hint = "check indentation (spaces, not tabs) and quote values containing ': ' or '#'"
        return CheckReport((Diagnostic(file, line, column, message, hint),), None)
    except yaml.YAMLError as exc:
        return CheckReport((Diagnostic(file, 1, 1, f"not valid YAML: {exc}"),), None)
    locator = _Locator(root)
    routes, body_parts, problems = _check_data(data, known_plugins, destinations)
    diagnostics = [
        Diagnostic(
            file,
            k.start_mark.line + 1,
            k.start_mark.column + 1,
            f"duplicate key '{name}'",
            "a repeated key silently replaces the first; remove one of them",
        )
        for k, name in locator.duplicate_keys()
    ]
    for problem in problems:
        node = locator.find(problem.path, problem.at_key)
        line, column = (
            (node.start_mark.line + 1, node.start_mark.column + 1) if node is not None else (1, 1)
        )
        diagnostics.append(Diagnostic(file, line, column, problem.message, problem.hint))
    diagnostics = sorted(set(diagnostics), key=lambda d: (d.line, d.column, d.message))
    if diagnostics:
        return CheckReport(tuple(diagnostics), None)
    shadow = (
        frozenset(n for n, is_shadow in destinations.items() if is_shadow)
        if destinations is not None
        else None
    )
    return CheckReport((), RouteTable(tuple(routes), body_parts, file, shadow))


def check_file(
    path: Path,
    known_plugins: Mapping[str, Sequence[str]] | None = None,
    destinations: Mapping[str, bool] | None = None,
) -> CheckReport:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        return CheckReport((Diagnostic(str(path), 1, 1, f"cannot read: {reason}"),), None)
    return check_text(text, str(path), known_plugins, destinations)


def load_route_table(
    path: Path,
    known_plugins: Mapping[str, Sequence[str]] | None = None,
    destinations: Mapping[str, bool] | None = None,
) -> RouteTable:
    """The route table of a valid file; raises RoutesFileError listing every problem."""
    report = check_file(path, known_plugins, destinations)
    if report.table is None:
        raise RoutesFileError(report.diagnostics)
    return report.table
