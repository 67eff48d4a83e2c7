"""The route table in force, and replacing it safely while the node runs.

A reload (SIGHUP, or the file's content changing) checks the new file completely before it
is used: a valid file replaces the table atomically and applies to studies that become stable
afterwards; an invalid one is logged with every problem and the old table stays in force.
Whoever runs the table is told of each reload, taken or refused (the node audits it).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from routers.check import RoutesFileError
from routers.matcher import RouteTable

logger = logging.getLogger(__name__)

TableLoader = Callable[[Path], RouteTable]
#: told of every reload: the file, and None when the new table is in force, or the problems
#: that made it refused
ReloadListener = Callable[[Path, RoutesFileError | None], None]


def _nobody(path: Path, refused: RoutesFileError | None) -> None:
    """The listener of a table loaded outside a running node: a test, a tool."""


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class LiveRouteTable:
    """Holds the current table; ``reload`` and ``poll`` swap it only for a valid file.

    Construction loads the file and raises ``RoutesFileError`` if it is invalid, which is how
    ``ainode serve`` refuses to start on a broken routes.yaml. Every reload, taken or
    refused, goes to ``on_reload``.
    """

    def __init__(
        self, path: Path, loader: TableLoader, on_reload: ReloadListener = _nobody
    ) -> None:
        self.path = Path(path)
        self._loader = loader
        self._on_reload = on_reload
        self._lock = threading.Lock()
        self._seen_digest = _digest(self.path)
        self._table = loader(self.path)
        self.last_error: RoutesFileError | None = None
        self.generation = 1  # bumped on every successful reload (tests and status read it)
        logger.info("routes: %d loaded from %s", len(self._table.routes), self.path)

    @property
    def current(self) -> RouteTable:
        return self._table

    def reload(self) -> bool:
        """Re-read the file; True if the new table is in force."""
        with self._lock:
            self._seen_digest = _digest(self.path)
            try:
                table = self._loader(self.path)
            except RoutesFileError as exc:
                logger.error(
                    "routes: %s rejected, keeping the %d route(s) in force:\n%s",
                    self.path,
                    len(self._table.routes),
                    exc,
                )
                self.last_error = exc
                self._on_reload(self.path, exc)
                return False
            self._table = table
            self.last_error = None
            self.generation += 1
            logger.info("routes: reloaded %d route(s) from %s", len(table.routes), self.path)
            self._on_reload(self.path, None)
            return True

    def poll(self) -> bool:
        """Reload if the file's content changed since it was last read; True if reloaded."""
        if _digest(self.path) == self._seen_digest:
            return False
        return self.reload()
