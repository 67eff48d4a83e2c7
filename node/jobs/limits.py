"""How many jobs of a plugin may run at once: ``resources.max_concurrent_jobs`` in its manifest.

Every executor passes these to ``table.claim_next``, which counts RUNNING jobs in the shared
table, so a limit holds across the local workers and remote ones together. A plugin name
maps to the smallest limit among its installed versions (a version without one does not lift
another's); a plugin with no limit is not in the mapping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from models.discovery import Catalog, discover, manifest_signature

__all__ = ["REFRESH_S", "PluginLimits", "limits_of"]

REFRESH_S = 5.0  # how often the plugin folders are looked at for a changed manifest


def limits_of(catalog: Catalog) -> dict[str, int]:
    """Plugin name → most jobs RUNNING at once, for every plugin that sets a limit."""
    limits: dict[str, int] = {}
    for manifest in catalog.manifests:
        limit = manifest.resources.max_concurrent_jobs
        if limit is not None:
            limits[manifest.name] = min(limit, limits.get(manifest.name, limit))
    return limits


class PluginLimits:
    """``limits_of`` the installed plugins, read again when a manifest under ``plugin_dirs``
    appears, goes or changes (looked at no more often than every ``refresh_s``)."""

    def __init__(
        self,
        plugin_dirs: Sequence[Path],
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._plugin_dirs = tuple(plugin_dirs)
        self._refresh_s = refresh_s
        self._clock = clock
        self._signature: tuple[tuple[str, int], ...] | None = None
        self._checked_at: float | None = None
        self._limits: dict[str, int] = {}

    def current(self) -> Mapping[str, int]:
        now = self._clock()
        if self._checked_at is not None and now - self._checked_at < self._refresh_s:
            return self._limits
        self._checked_at = now
        signature = manifest_signature(self._plugin_dirs)
        if signature != self._signature:
            self._limits = limits_of(discover(self._plugin_dirs))
            self._signature = signature
        return self._limits
