"""Every console action, who did it and when, with what it changed (before/after).

An append-only JSON-lines file in the data folder (``console/actions.log``): one ``write`` per
record on an ``O_APPEND`` descriptor, flushed to disk before the action is answered. Actions
also go to the audit trail where PS3.15 has an event for them (a routes change is a Software
Configuration alert); this log is the console's own history page.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ActionRecord:
    at: float
    user: str
    action: str  # e.g. "job.retry", "plugin.promote"
    target: str  # what it acted on: a job id, a plugin@version, a study UID
    outcome: str  # "ok" or the refusal's message
    before: Any = None
    after: Any = None


class ActionLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(
        self,
        user: str,
        action: str,
        target: str,
        outcome: str = "ok",
        before: Any = None,
        after: Any = None,
    ) -> ActionRecord:
        record = ActionRecord(time.time(), user, action, target, outcome, before, after)
        line = (json.dumps(asdict(record), sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def newest(self, limit: int = 100) -> list[ActionRecord]:
        """The last ``limit`` records, newest first (a torn last line is skipped)."""
        try:
            with self.path.open() as lines:
                tail = deque(lines, maxlen=limit)
        except FileNotFoundError:
            return []
        records = []
        for line in reversed(tail):
            try:
                records.append(ActionRecord(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return records
