"""Logins kept in memory: a restart logs everyone out, which a node restart may well do."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from node.console.credentials import Principal


@dataclass(frozen=True)
class Session:
    """One login: the cookie's value names it, ``csrf`` must come back on every change."""

    id: str
    principal: Principal
    csrf: str
    expires_at: float


class SessionStore:
    """Bounded: past ``max_sessions`` the oldest login is dropped, so a login loop cannot grow
    memory."""

    def __init__(self, lifetime_s: float, max_sessions: int) -> None:
        self._lifetime_s = lifetime_s
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, principal: Principal) -> Session:
        session = Session(
            secrets.token_urlsafe(32),
            principal,
            secrets.token_urlsafe(24),
            time.time() + self._lifetime_s,
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at < time.time():
                del self._sessions[session_id]
                return None
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)
