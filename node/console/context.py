"""What the console's request handlers share: the node's settings and the console's state."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.console.action_log import ActionLog
from node.console.credentials import Credentials
from node.console.sessions import SessionStore
from node.db import connect


@dataclass(frozen=True)
class ConsoleContext:
    config: NodeConfig
    credentials: Credentials
    sessions: SessionStore
    actions: ActionLog
    audit: AuditTrail = DISABLED
    #: asks the routing stage to re-read routes.yaml, as SIGHUP does (None: no routing stage)
    reload_routes: Callable[[], None] | None = None
    #: tells the dispatcher results are waiting (a remote worker's job succeeded)
    wake_dispatcher: Callable[[], None] | None = None
    #: the console is served over HTTPS: cookies get the Secure flag
    secure: bool = False

    @property
    def storage_mode(self) -> dict[str, str | bool]:
        """What a C-STORE Success promises here, as ``read_status`` reports it."""
        storage = self.config.storage
        return {"durability": str(storage.durability), "journal": storage.journal}

    @contextmanager
    def database(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own per request: SQLite connections are not shared by threads."""
        conn = connect(self.config.storage.database_path)
        try:
            yield conn
        finally:
            conn.close()
