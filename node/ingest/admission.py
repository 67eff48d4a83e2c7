"""Which new connections the listener takes, so that a flood of them costs bounded threads.

Every accepted connection costs two threads (its association's and its DUL reactor's) until it
ends, and one that never sends an A-ASSOCIATE-RQ ends only at the request timeout: 500 bare
connects were 1,000 threads. ``Admission`` holds at most ``max_pending`` connections that
have not sent their request; a new one beyond that cuts the oldest of them (a caller that
means to associate sends its request at once, so a flood cannot lock it out), and while as
many connections are open as associations and pending ones may be, a new one is closed as it
is accepted, without a thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import weakref
from collections.abc import Sequence
from typing import Any

from pynetdicom.association import Association

LOGGER = logging.getLogger(__name__)

#: Refused and cut connections are logged at most this often (counts and the latest peer).
REFUSAL_LOG_INTERVAL_S = 5.0


class Admission:
    """The accepting thread's decision on each new connection (``verify_request``)."""

    def __init__(self, max_pending: int, max_associations: int) -> None:
        self.max_pending = max_pending
        self.max_open = max_pending + max_associations
        #: Pending connections already cut: they count as open until their threads end.
        self._cut: weakref.WeakSet[Association] = weakref.WeakSet()
        self._refused = 0
        self._cut_count = 0
        self._logged_at = -REFUSAL_LOG_INTERVAL_S

    def admit(self, open_: Sequence[Association], peer: Any) -> bool:
        """Whether to take a connection from ``peer`` beside the ``open_`` associations
        (oldest first), cutting the oldest pending one to make room if need be."""
        if len(open_) >= self.max_open:
            self._refused += 1
            self._log(peer, open_)
            return False
        pending = [a for a in open_ if not getattr(a, "requested", True) and a not in self._cut]
        if len(pending) >= self.max_pending:
            self._cut_connection(pending[0])
            self._cut_count += 1
            self._log(peer, open_)
        return True

    def _cut_connection(self, assoc: Association) -> None:
        """End a pending connection: its DUL reads the end at once (or its TLS handshake
        fails) and its threads finish. The plain socket's shutdown, so an ``SSLSocket`` in a
        handshake on another thread is not pulled from under it."""
        self._cut.add(assoc)
        sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _log(self, peer: Any, open_: Sequence[Association]) -> None:
        now = time.monotonic()
        if now - self._logged_at < REFUSAL_LOG_INTERVAL_S:
            return
        LOGGER.warning(
            "connection flood: closed %d new connection(s) at once and cut %d that had sent "
            "no A-ASSOCIATE-RQ, the latest from %s:%s (%d open; max_pending_connections %d)",
            self._refused,
            self._cut_count,
            *peer[:2],
            len(open_),
            self.max_pending,
        )
        self._refused = self._cut_count = 0
        self._logged_at = now
