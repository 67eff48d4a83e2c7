"""The routing stage of ``ainode serve``: routes every newly stable study version.

One thread polls ``study_versions`` for rows with ``routed_at`` NULL and writes their route
matches. It also watches routes.yaml (content checked every ``watch_interval_s``) and, when
started on the main thread, reloads on SIGHUP; every reload, taken or refused, is a
configuration change in the audit trail.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from node.audit.events import ConfigurationChanged, Outcome
from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.db import connect
from node.routing.catalog import destination_flags, installed_plugins
from node.routing.matches import route_pending
from routers.check import RoutesFileError, load_route_table
from routers.matcher import RouteTable
from routers.reload import LiveRouteTable, ReloadListener

logger = logging.getLogger(__name__)

# node.yaml -> installed plugin name -> versions (None: discovery unavailable, names unchecked)
PluginCatalog = Callable[[NodeConfig], Mapping[str, Sequence[str]] | None]


def audit_reloads(audit: AuditTrail) -> ReloadListener:
    """A routes.yaml reload, taken or refused, as a configuration change (IHE ATNA)."""

    def record(path: Path, refused: RoutesFileError | None) -> None:
        if refused is None:
            audit.record(ConfigurationChanged(path=str(path)))
            return
        audit.record(
            ConfigurationChanged(
                path=str(path),
                result=Outcome.MINOR_FAILURE,
                description="rejected: the routes in force stay",
            )
        )

    return record


class RoutingStage:
    """Stable study versions → route_matches rows, with live route reloads."""

    name = "routing"

    def __init__(
        self,
        config: NodeConfig,
        poll_interval_s: float | None = None,
        watch_interval_s: float | None = 1.0,
        plugin_catalog: PluginCatalog = installed_plugins,
        audit: AuditTrail = DISABLED,
    ) -> None:
        self._config = config
        self._plugin_catalog = plugin_catalog
        self._poll_interval_s = poll_interval_s or config.stability.poll_interval_s
        self._watch_interval_s = watch_interval_s
        self.routes = LiveRouteTable(config.routes_file, self._load, audit_reloads(audit))
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._reload_requested = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous_sighup: Any = None
        self._sighup_installed = False

    def _load(self, path: Path) -> RouteTable:
        """Check against the plugins installed now, so a reload sees newly added ones."""
        return load_route_table(
            path, self._plugin_catalog(self._config), destination_flags(self._config)
        )

    def request_reload(self) -> None:
        """Reload routes.yaml on the stage's thread (what SIGHUP does)."""
        self._reload_requested.set()
        self._wake.set()

    def start(self) -> None:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(
                signal.SIGHUP, lambda signum, frame: self.request_reload()
            )
            self._sighup_installed = True
        self._thread = threading.Thread(target=self._run, name="ainode-routing", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._sighup_installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, self._previous_sighup or signal.SIG_DFL)
            self._sighup_installed = False

    def _run(self) -> None:
        conn = connect(self._config.storage.database_path)
        watch_elapsed = 0.0
        try:
            while not self._stopping.is_set():
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self.routes.reload()
                elif self._watch_interval_s is not None and watch_elapsed >= self._watch_interval_s:
                    watch_elapsed = 0.0
                    self.routes.poll()
                try:
                    route_pending(conn, self.routes.current)
                except sqlite3.Error:  # e.g. the database is busy: try again next poll
                    logger.exception("routing poll failed; retrying")
                self._wake.wait(self._poll_interval_s)
                self._wake.clear()
                watch_elapsed += self._poll_interval_s
        finally:
            conn.close()
