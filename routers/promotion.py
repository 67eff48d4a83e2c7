"""Promote a shadow plugin version to production, or roll production back, in routes.yaml.

A shadow route that runs ``plugin@version`` is the evidence a promotion needs; production
routes are re-pinned and the shadow routes switched off (a rollback undoes both). The file is
the operator's, so ``routers.routes_edit`` changes only the values involved; the caller's
``validate`` (the node wires ``routers.check``) must accept the result before it is written,
atomically, and only if nobody changed the file meanwhile. No ``node`` imports: a console or
a CLI can use this without a running node.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from routers.routes_edit import PinRef, RouteEdit, SetEnabled, ref_text, rewrite
from routers.schema import Mode

Validate = Callable[[str], object]  # raises ValueError (with a message) for an invalid file
_BOOL: TypeAdapter[bool] = TypeAdapter(bool)


class RoutesAction(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class PromotionRefused(ValueError):
    """Nothing was written; the message says what to fix."""


@dataclass(frozen=True)
class RoutesChange:
    """What a promotion or rollback wrote, for the audit record and a later rollback."""

    action: RoutesAction
    plugin: str
    version: str | None  # production's version now; None = unpinned (newest installed)
    previous: dict[str, str]  # production route name -> its ref before, e.g. "ct-lung@1.0"
    routes_changed: tuple[str, ...]  # production and shadow routes, in file order
    before_text: str
    after_text: str
    before_digest: str
    after_digest: str


def text_digest(text: str) -> str:
    """sha256 of the file's UTF-8 bytes: what ``expected_digest`` and the reloader compare."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- reading ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    plugin: str
    version: str | None

    def __str__(self) -> str:
        return ref_text(self.plugin, self.version)


@dataclass(frozen=True)
class _Route:
    index: int
    name: str
    enabled: bool
    mode: str
    refs: tuple[tuple[int, _Ref], ...]  # (position in `run`, ref)

    def runs(self, plugin: str, version: str | None) -> bool:
        return _Ref(plugin, version) in (r for _, r in self.refs)

    def names(self, plugin: str) -> bool:
        return any(r.plugin == plugin for _, r in self.refs)


@dataclass(frozen=True)
class _Document:
    text: str
    root: yaml.Node | None
    data: Any
    routes: tuple[_Route, ...]


def _ref(raw: Any) -> _Ref | None:
    """A ``run`` entry as routers.schema.PluginRef reads it; None if it is not one."""
    if isinstance(raw, str):
        name, _, version = raw.partition("@")
        return _Ref(name.strip(), version.strip() or None)
    if isinstance(raw, Mapping) and isinstance(raw.get("plugin"), str):
        version = raw.get("version")
        return _Ref(raw["plugin"], None if version is None else str(version))
    return None


def _enabled(raw: Mapping[str, Any]) -> bool:
    try:
        return _BOOL.validate_python(raw.get("enabled", True))
    except ValidationError:
        return False  # the file's check refuses it; never count it as running


def _parse(text: str) -> _Document:
    hint = "run `ainode routes check` and fix the file first"
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise PromotionRefused(f"routes file is not valid YAML ({exc}); {hint}") from exc
    finally:
        loader.dispose()
    if data is not None and not isinstance(data, Mapping):
        raise PromotionRefused(f"routes file's top level must be a mapping with `routes:`; {hint}")
    raw_routes = (data or {}).get("routes")
    if raw_routes is None:
        raw_routes = []  # an empty file, or no `routes:`: valid, and routes nothing
    if not isinstance(raw_routes, list):
        raise PromotionRefused(f"`routes:` in the routes file must be a list; {hint}")
    routes = []
    for index, raw in enumerate(raw_routes):
        if not isinstance(raw, Mapping):
            continue
        run = raw.get("run") if isinstance(raw.get("run"), list) else []
        refs = tuple((i, r) for i, item in enumerate(run) if (r := _ref(item)) is not None)
        name = str(raw.get("name", f"#{index + 1}"))
        mode = str(raw.get("mode", Mode.PRODUCTION.value))
        routes.append(_Route(index, name, _enabled(raw), mode, refs))
    return _Document(text, root, data, tuple(routes))


def production_versions(text: str) -> dict[str, tuple[str | None, ...]]:
    """Plugin -> the versions enabled production routes pin (None = unpinned), file order."""
    return _versions(text, Mode.PRODUCTION)


def shadow_versions(text: str) -> dict[str, tuple[str, ...]]:
    """Plugin -> the pinned versions enabled shadow routes run, file order."""
    found = _versions(text, Mode.SHADOW)
    pinned = {p: tuple(v for v in vs if v is not None) for p, vs in found.items()}
    return {p: vs for p, vs in pinned.items() if vs}


def _versions(text: str, mode: Mode) -> dict[str, tuple[str | None, ...]]:
    found: dict[str, list[str | None]] = {}
    for route in _parse(text).routes:
        if route.mode == mode and route.enabled:
            for _, ref in route.refs:
                versions = found.setdefault(ref.plugin, [])
                if ref.version not in versions:
                    versions.append(ref.version)
    return {plugin: tuple(versions) for plugin, versions in found.items()}


# --- what changes ----------------------------------------------------------------------


def promote(
    path: Path,
    plugin: str,
    version: str,
    validate: Validate,
    expected_digest: str | None = None,
) -> RoutesChange:
    """Pin every production route's ``plugin`` to ``version`` and disable the enabled shadow
    routes that ran ``plugin@version`` (they would now duplicate production)."""
    doc = _read(Path(path), expected_digest)
    wanted = _Ref(plugin, version)
    evidence = [
        r for r in doc.routes if r.mode == Mode.SHADOW and r.enabled and r.runs(plugin, version)
    ]
    if not evidence:
        raise PromotionRefused(
            f"no enabled shadow route runs {wanted}: run it in shadow first (a route with "
            f"`mode: shadow` and `run: [{wanted}]`, enabled), then promote it"
        )
    ops, previous, _ = _pin_production(doc, plugin, version)
    ops += [SetEnabled(r.index, False) for r in evidence]
    return _commit(Path(path), doc, RoutesAction.PROMOTE, plugin, version, ops, previous, validate)


def rollback(
    path: Path,
    plugin: str,
    to_version: str | None,
    validate: Validate,
    expected_digest: str | None = None,
) -> RoutesChange:
    """Pin production's ``plugin`` back to ``to_version`` (None: unpinned) and re-enable the
    disabled shadow routes that run the version rolled back from, so it keeps running there."""
    doc = _read(Path(path), expected_digest)
    ops, previous, left = _pin_production(doc, plugin, to_version)
    ops += [
        SetEnabled(r.index, True)
        for r in doc.routes
        if r.mode == Mode.SHADOW and not r.enabled and any(r.runs(plugin, v) for v in left)
    ]
    return _commit(
        Path(path), doc, RoutesAction.ROLLBACK, plugin, to_version, ops, previous, validate
    )


def _pin_production(
    doc: _Document, plugin: str, version: str | None
) -> tuple[list[RouteEdit], dict[str, str], set[str]]:
    """Pins for every production route (enabled or not, so enabling one later does not bring
    back an old version) whose ``run`` names ``plugin`` at another version; also the pinned
    versions they leave."""
    target = _Ref(plugin, version)
    production = [r for r in doc.routes if r.mode == Mode.PRODUCTION and r.names(plugin)]
    if not production:
        raise PromotionRefused(
            f"no production route runs {plugin}, so there is nothing to change to {target}; "
            f"add {target} to a production route's `run:` by hand"
        )
    ops: list[RouteEdit] = []
    previous: dict[str, str] = {}
    left: set[str] = set()
    for route in production:
        for item, ref in route.refs:
            if ref.plugin == plugin and ref.version != version:
                ops.append(PinRef(route.index, item, plugin, version))
                previous.setdefault(route.name, str(ref))
                if ref.version is not None:
                    left.add(ref.version)
    if not ops:
        raise PromotionRefused(f"production already runs {target}; nothing to change")
    return ops, previous, left


# --- writing ---------------------------------------------------------------------------


def _read(path: Path, expected_digest: str | None) -> _Document:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise PromotionRefused(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise PromotionRefused(f"{path} is not UTF-8 text; save it as UTF-8") from exc
    if expected_digest is not None and text_digest(text) != expected_digest:
        raise PromotionRefused(f"{path} changed since it was read; reload it and try again")
    return _parse(text)


def _commit(
    path: Path,
    doc: _Document,
    action: RoutesAction,
    plugin: str,
    version: str | None,
    ops: list[RouteEdit],
    previous: dict[str, str],
    validate: Validate,
) -> RoutesChange:
    after = rewrite(doc.text, doc.root, doc.data, ops)
    if after is None:
        raise PromotionRefused(
            f"could not rewrite {path} so that only the intended routes change (is a `run:` "
            "list or a route shared through a YAML anchor/alias?); write it out in full in "
            "each route, or make the change by hand"
        )
    try:
        validate(after)
    except ValueError as exc:
        raise PromotionRefused(
            f"{path} would not be valid after this change, so nothing was written:\n{exc}"
        ) from exc
    before_digest = text_digest(doc.text)
    _write_atomically(path, after, before_digest)
    indexes = {op.route for op in ops}
    return RoutesChange(
        action=action,
        plugin=plugin,
        version=version,
        previous=previous,
        routes_changed=tuple(r.name for r in doc.routes if r.index in indexes),
        before_text=doc.text,
        after_text=after,
        before_digest=before_digest,
        after_digest=text_digest(after),
    )


def replace_text(path: Path, text: str, validate: Validate, expected_digest: str) -> str:
    """Write an edited routes file whole (the console's editor): checked by ``validate``
    first, refused when the file is no longer the one the editor loaded; the new digest."""
    before = Path(path).read_text(encoding="utf-8")
    if text_digest(before) != expected_digest:
        raise PromotionRefused(f"{path} changed since it was loaded; reload it and edit again")
    try:
        validate(text)
    except ValueError as exc:
        raise PromotionRefused(
            f"{path} would not be valid, so nothing was written:\n{exc}"
        ) from exc
    _write_atomically(Path(path), text, expected_digest)
    return text_digest(text)


def _write_atomically(path: Path, text: str, before_digest: str) -> None:
    """Temp file beside the target, fsync, rename over it, fsync the folder; the target's
    mode is kept and a symlinked routes file stays a symlink (its target is replaced)."""
    target = Path(os.path.realpath(path))
    mode = stat.S_IMODE(target.stat().st_mode)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        if text_digest(target.read_bytes().decode("utf-8", "replace")) != before_digest:
            raise PromotionRefused(f"{path} changed while it was rewritten; reload and try again")
        os.replace(temp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
