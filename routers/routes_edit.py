"""Rewrite routes.yaml with the fewest changed bytes: the edits promotions and rollbacks make.

Each edit is placed at the position the YAML parser reports for the value it changes (or
adds or removes one key line), so comments, blank lines and wrapped flow lists stay as the
operator wrote them. Where that cannot be done (a key on a list item's dash line, a merge
key), ruamel's round trip rewrites the whole file: comments kept, flow lists may be re-wrapped.
Either result must parse (with PyYAML, as the node reads it) to exactly the intended data,
which is also what refuses an edit that would reach other routes through a YAML alias.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from ruamel.yaml import YAML

_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")


@dataclass(frozen=True)
class PinRef:
    """Set entry ``item`` of route ``route``'s ``run`` to ``plugin@version`` (None: unpinned)."""

    route: int
    item: int
    plugin: str
    version: str | None


@dataclass(frozen=True)
class SetEnabled:
    route: int
    enabled: bool


RouteEdit = PinRef | SetEnabled


def ref_text(plugin: str, version: str | None) -> str:
    """A ``run`` entry as text, as ``routers.schema.PluginRef`` prints it."""
    return f"{plugin}@{version}" if version else plugin


def rewrite(text: str, root: yaml.Node | None, data: Any, edits: Sequence[RouteEdit]) -> str | None:
    """``text`` with ``edits`` made (``root``/``data``: its composed node and value), or None
    if no rewrite parses to exactly the intended data."""
    expected = _unshared(data)
    for edit in edits:
        _apply(expected, edit)
    for build in (_splice, _round_trip):
        candidate = build(text, root, edits)
        if candidate is not None and _parses_to(candidate, expected):
            return candidate
    return None


def _unshared(value: Any) -> Any:
    """A copy in which no alias shares a list or mapping, so an edit changes one place."""
    if isinstance(value, dict):
        return {k: _unshared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshared(v) for v in value]
    return value


def _apply(data: Any, op: RouteEdit) -> None:
    route = data["routes"][op.route]
    if isinstance(op, SetEnabled):
        route["enabled"] = op.enabled
        return
    item = route["run"][op.item]
    if isinstance(item, Mapping):
        item = {k: v for k, v in item.items() if k != "version"}
        if op.version is not None:
            item["version"] = op.version
        route["run"][op.item] = item
    else:
        route["run"][op.item] = ref_text(op.plugin, op.version)


def _parses_to(text: str, expected: Any) -> bool:
    try:
        return bool(yaml.safe_load(text) == expected)
    except yaml.YAMLError:
        return False


# --- edits in place --------------------------------------------------------------------

_Splice = tuple[int, int, str]  # replace text[start:end] with the string


def _splice(text: str, root: yaml.Node | None, edits: Sequence[RouteEdit]) -> str | None:
    newline = "\r\n" if "\r\n" in text else "\n"
    splices = [_splice_for(text, root, edit, newline) for edit in edits]
    placed = [s for s in splices if s is not None]
    if len(placed) < len(splices):
        return None
    last = len(text) + 1
    for start, end, new in sorted(set(placed), reverse=True):  # an alias: one edit, twice
        if end > last:
            return None  # overlapping: let the round trip do it
        text, last = text[:start] + new + text[end:], start
    return text


def _entry(node: yaml.Node | None, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    pairs = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]
    return pairs[-1] if pairs else None


def _splice_for(text: str, root: yaml.Node | None, op: RouteEdit, newline: str) -> _Splice | None:
    routes = _entry(root, "routes")
    if routes is None or not isinstance(routes[1], yaml.SequenceNode):
        return None
    route = routes[1].value[op.route]
    if isinstance(op, SetEnabled):
        value = "true" if op.enabled else "false"
        pair = _entry(route, "enabled")
        if pair is not None:
            return _replace(pair[1], value)
        return _insert(text, route, "enabled", value, "name", newline)
    run = _entry(route, "run")
    if run is None or not isinstance(run[1], yaml.SequenceNode):
        return None
    item = run[1].value[op.item]
    if isinstance(item, yaml.ScalarNode):
        return _replace(item, _scalar(ref_text(op.plugin, op.version), item.style))
    pair = _entry(item, "version")
    if op.version is None:
        return _remove(text, item, pair) if pair is not None else None
    if pair is not None:
        return _replace(pair[1], _scalar(op.version, pair[1].style))
    return _insert(text, item, "version", _scalar(op.version, None), "plugin", newline)


def _scalar(value: str, style: str | None) -> str:
    """``value`` as YAML that reads back as this string, in the old scalar's quoting."""
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    if style != '"' and _PLAIN.match(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value, ensure_ascii=False)


def _one_line(node: yaml.Node) -> bool:
    return (
        isinstance(node, yaml.ScalarNode)
        and node.style not in ("|", ">")
        and node.start_mark.line == node.end_mark.line
    )


def _replace(node: yaml.Node, new: str) -> _Splice | None:
    if not _one_line(node):
        return None
    return node.start_mark.index, node.end_mark.index, new


def _line_end(text: str, index: int) -> int:
    end = text.find("\n", index)
    return len(text) if end < 0 else end


def _rest_is_blank(text: str, index: int) -> bool:
    rest = text[index : _line_end(text, index)].strip()
    return not rest or rest.startswith("#")


def _insert(
    text: str, mapping: yaml.Node, key: str, value: str, after: str, newline: str
) -> _Splice | None:
    """A new ``key: value`` in ``mapping``: on its own line after the ``after`` entry in a
    block mapping, before the closing brace of a flow mapping."""
    if not isinstance(mapping, yaml.MappingNode) or not mapping.value:
        return None
    if mapping.flow_style:
        at = mapping.value[-1][1].end_mark.index
        return at, at, f", {key}: {value}"
    k, v = _entry(mapping, after) or mapping.value[0]
    if not _one_line(v) or not _rest_is_blank(text, v.end_mark.index):
        return None
    eol = _line_end(text, v.end_mark.index)
    line = " " * k.start_mark.column + f"{key}: {value}"
    if eol == len(text):
        return eol, eol, newline + line
    return eol + 1, eol + 1, line + newline


def _remove(
    text: str, mapping: yaml.MappingNode, pair: tuple[yaml.Node, yaml.Node]
) -> _Splice | None:
    k, v = pair
    if mapping.flow_style:
        i = next(n for n, p in enumerate(mapping.value) if p[0] is k)
        if i > 0:
            return mapping.value[i - 1][1].end_mark.index, v.end_mark.index, ""
        if len(mapping.value) > 1:
            return k.start_mark.index, mapping.value[1][0].start_mark.index, ""
        return None
    start = text.rfind("\n", 0, k.start_mark.index) + 1
    if text[start : k.start_mark.index].strip() or not _one_line(v):
        return None  # the key shares its line (a list item's dash): round trip instead
    if not _rest_is_blank(text, v.end_mark.index):
        return None
    return start, min(_line_end(text, v.end_mark.index) + 1, len(text)), ""


# --- round trip ------------------------------------------------------------------------


def _round_trip(text: str, root: yaml.Node | None, ops: Sequence[RouteEdit]) -> str | None:
    """ruamel rewrites the whole file: comments kept, indentation as the file's own."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096  # never fold a long line the operator wrote
    rt.indent(**_indents(root))
    try:
        data = rt.load(text)
        for op in ops:
            route = data["routes"][op.route]
            if isinstance(op, SetEnabled):
                if "enabled" in route or "name" not in route:
                    route["enabled"] = op.enabled
                else:
                    route.insert(list(route).index("name") + 1, "enabled", op.enabled)
                continue
            item = route["run"][op.item]
            if not isinstance(item, Mapping):
                route["run"][op.item] = ref_text(op.plugin, op.version)
            elif op.version is None:
                item.pop("version", None)
            else:
                item["version"] = op.version
        out = io.StringIO()
        rt.dump(data, out)
    except Exception:  # ruamel reads YAML 1.2 and may refuse what PyYAML took
        return None
    return out.getvalue()


def _indents(root: yaml.Node | None) -> dict[str, int]:
    """Block indentation the file uses most: nested mapping, list item, and dash offset."""
    mapping: Counter[int] = Counter()
    sequence: Counter[tuple[int, int]] = Counter()
    stack = [root] if root is not None else []
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue  # an alias: counted where its anchor is
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.append(v)
                if getattr(v, "flow_style", True) or not v.value:
                    continue
                column = k.start_mark.column
                if isinstance(v, yaml.MappingNode):
                    mapping[v.value[0][0].start_mark.column - column] += 1
                elif isinstance(v, yaml.SequenceNode):
                    sequence[
                        (v.value[0].start_mark.column - column, v.start_mark.column - column)
                    ] += 1
    map_indent = mapping.most_common(1)[0][0] if mapping else 2
    seq_indent, offset = sequence.most_common(1)[0][0] if sequence else (2, 0)
    return {
        "mapping": max(map_indent, 1),
        "sequence": max(seq_indent, offset + 2),
        "offset": max(offset, 0),
    }
