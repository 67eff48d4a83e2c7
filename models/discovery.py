"""Finding installed plugins: manifest folders and Python entry points.

Two sources, one result:

* **Folders** listed in node.yaml's ``plugin_dirs``. A folder holding ``plugin.yaml`` is one
  plugin version; otherwise its sub-folders (two levels deep, so both
  ``plugins/dx-chest/`` and ``plugins/dx-chest/1.1.0/`` layouts work) are searched.
* **Entry points** in the group ``ainode.plugins`` of any installed distribution. The entry
  point names a module (or package) whose folder holds ``plugin.yaml``, or a callable that
  returns the path of that folder or file::

      [project.entry-points."ainode.plugins"]
      dx-chest = "vendor_models.dx_chest"

A broken manifest does not hide the others: it becomes a ``DiscoveryProblem`` that
``ainode plugins list`` shows as ``broken`` and ``ainode plugins check`` explains.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from packaging.version import InvalidVersion, Version

from models.manifest import MANIFEST_FILE, ManifestError, PluginManifest, load_manifest

__all__ = [
    "ENTRY_POINT_GROUP",
    "Catalog",
    "DiscoveryProblem",
    "available_plugins",
    "discover",
    "manifest_signature",
    "version_key",
]

ENTRY_POINT_GROUP = "ainode.plugins"
_SEARCH_DEPTH = 2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoveryProblem:
    """A manifest that could not be loaded, and why (one line per problem)."""

    source: str
    problems: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.problems)


def version_key(version: str) -> tuple[int, Version | str]:
    """Sort key for plugin versions: PEP 440 order where it parses, text order after."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


@dataclass(frozen=True)
class Catalog:
    """Every plugin version found, in name then version order, and what could not load."""

    manifests: tuple[PluginManifest, ...]
    problems: tuple[DiscoveryProblem, ...] = ()

    @classmethod
    def of(cls, manifests: Iterable[PluginManifest]) -> Catalog:
        """A catalog of given manifests (tools and tests), in name then version order."""
        return cls(tuple(sorted(manifests, key=lambda m: (m.name, version_key(m.version)))))

    def versions(self, name: str) -> tuple[PluginManifest, ...]:
        return tuple(m for m in self.manifests if m.name == name)

    def get(self, name: str, version: str | None = None) -> PluginManifest:
        """The named version, or the newest installed when ``version`` is None."""
        candidates = self.versions(name)
        if not candidates:
            known = sorted({m.name for m in self.manifests})
            raise KeyError(f"no plugin named {name!r} is installed (installed: {known})")
        if version is None:
            return candidates[-1]
        for manifest in candidates:
            if manifest.version == version:
                return manifest
        raise KeyError(
            f"plugin {name!r} has no version {version!r} "
            f"(installed: {[m.version for m in candidates]})"
        )


def _manifest_files(root: Path) -> Iterable[Path]:
    if (root / MANIFEST_FILE).is_file():
        yield root / MANIFEST_FILE
        return
    frontier = [root]
    for _depth in range(_SEARCH_DEPTH):
        next_frontier = []
        for folder in frontier:
            for child in sorted(folder.iterdir()):
                if not child.is_dir() or child.name.startswith((".", "_")):
                    continue
                if (child / MANIFEST_FILE).is_file():
                    yield child / MANIFEST_FILE
                else:
                    next_frontier.append(child)
        frontier = next_frontier


def _entry_point_location(loaded: object) -> Path:
    if isinstance(loaded, ModuleType):
        if loaded.__file__ is None:
            raise ValueError(f"module {loaded.__name__} has no file to find plugin.yaml beside")
        return Path(loaded.__file__).parent
    if callable(loaded):
        return Path(loaded())
    raise ValueError(
        f"entry point gave {type(loaded).__name__}; it must name a module or a callable "
        "returning the plugin folder"
    )


def _from_entry_points() -> Iterable[PluginManifest | DiscoveryProblem]:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {entry_point.name} = {entry_point.value}"
        try:
            yield load_manifest(_entry_point_location(entry_point.load()))
        except ManifestError as exc:
            yield DiscoveryProblem(source, (f"{exc.path}:", *exc.problems))
        except Exception as exc:  # a vendor package that fails to import must not hide others
            yield DiscoveryProblem(source, (f"cannot load: {type(exc).__name__}: {exc}",))


def _from_folders(plugin_dirs: Sequence[Path]) -> Iterable[PluginManifest | DiscoveryProblem]:
    for root in plugin_dirs:
        root = Path(root)
        if not root.is_dir():
            yield DiscoveryProblem(str(root), ("plugin folder does not exist",))
            continue
        for manifest_file in _manifest_files(root):
            try:
                yield load_manifest(manifest_file)
            except ManifestError as exc:
                yield DiscoveryProblem(str(manifest_file), exc.problems)


def manifest_signature(plugin_dirs: Sequence[Path]) -> tuple[tuple[str, int], ...]:
    """Every manifest file under ``plugin_dirs`` with its mtime: cheap to compute, and it
    changes when a plugin version is added, removed or edited."""
    found = []
    for root in plugin_dirs:
        if Path(root).is_dir():
            for manifest_file in _manifest_files(Path(root)):
                try:
                    found.append((str(manifest_file), manifest_file.stat().st_mtime_ns))
                except FileNotFoundError:
                    continue
    return tuple(found)


def discover(plugin_dirs: Sequence[Path] = (), *, entry_points: bool = True) -> Catalog:
    """Load every manifest under ``plugin_dirs`` and, optionally, from entry points."""
    found: dict[str, PluginManifest] = {}
    problems: list[DiscoveryProblem] = []
    sources = list(_from_folders(plugin_dirs))
    if entry_points:
        sources += list(_from_entry_points())
    for item in sources:
        if isinstance(item, DiscoveryProblem):
            problems.append(item)
            continue
        if item.key in found:
            problems.append(
                DiscoveryProblem(
                    str(item.directory),
                    (
                        f"{item.key} is also installed at {found[item.key].directory}; "
                        "keeping the first",
                    ),
                )
            )
            continue
        found[item.key] = item
    for problem in problems:
        log.warning("plugin discovery: %s: %s", problem.source, problem.message)
    return replace(Catalog.of(found.values()), problems=tuple(problems))


def available_plugins(plugin_dirs: Sequence[Path] = ()) -> dict[str, tuple[str, ...]]:
    """Installed plugin names and their versions, oldest first (the routing engine's view)."""
    catalog = discover(plugin_dirs)
    result: dict[str, tuple[str, ...]] = {}
    for manifest in catalog.manifests:
        result[manifest.name] = (*result.get(manifest.name, ()), manifest.version)
    return result
