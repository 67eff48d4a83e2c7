"""The dispatch stage: one sender thread per destination, draining that destination's outbox.

Each destination has its own thread, connection and backoff, so a destination that is down
(connection refused, or worse, a peer that never answers) only ever delays its own rows.
A sender sleeps until its next row is due or until ``wake()`` says new rows were committed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from node.config import NodeConfig
from node.db import connect
from node.dispatch.outbox import RetryPolicy, due_rows, mark_failed, mark_sent, next_due_at
from node.dispatch.sender import Transport, transport_for

__all__ = ["DestinationSender", "Dispatcher"]

LOG = logging.getLogger(__name__)

BATCH_SIZE = 64
IDLE_POLL_S = 1.0  # how often an idle sender looks for rows committed by another process


class DestinationSender:
    """Sends one destination's due outbox rows, batch by batch, until stopped."""

    def __init__(
        self,
        name: str,
        transport: Transport,
        database_path: Path,
        outputs_dir: Path,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.transport = transport
        self.database_path = database_path
        self.outputs_dir = outputs_dir
        self.policy = policy
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"send-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        conn = connect(self.database_path)
        try:
            while not self._stop.is_set():
                try:
                    sent_any = self.send_due(conn)
                except Exception:
                    LOG.exception("destination %s: send step failed; retrying", self.name)
                    sent_any = False
                if not sent_any:
                    self._sleep(conn)
        finally:
            conn.close()

    def send_due(self, conn: sqlite3.Connection) -> bool:
        """Send one batch of due rows; returns whether any was delivered (then look again)."""
        rows = due_rows(conn, self.name, self.outputs_dir, self.clock(), BATCH_SIZE)
        if not rows:
            return False
        try:
            outcome = self.transport.deliver(rows)
        except Exception as exc:  # a transport bug must cost attempts, not the sender thread
            LOG.exception("destination %s: delivery raised", self.name)
            outcome = {row.id: f"delivery failed: {type(exc).__name__}: {exc}" for row in rows}
        now = self.clock()
        mark_sent(conn, [row.id for row in rows if outcome.get(row.id, "no outcome") is None], now)
        failed = [row for row in rows if outcome.get(row.id, "no outcome") is not None]
        by_error: dict[str, list] = {}
        for row in failed:
            by_error.setdefault(outcome.get(row.id) or "no outcome", []).append(row)
        for error, group in by_error.items():
            LOG.warning(
                "destination %s: %d instance(s) not delivered: %s", self.name, len(group), error
            )
            for dead in mark_failed(conn, group, error, self.policy, now):
                LOG.error(
                    "destination %s: %s dead-lettered after %d attempts: %s",
                    self.name,
                    dead.sop_instance_uid,
                    dead.attempts + 1,
                    error,
                )
        sent = len(rows) - len(failed)
        if sent:
            LOG.info("destination %s: delivered %d instance(s)", self.name, sent)
        return sent > 0

    def _sleep(self, conn: sqlite3.Connection) -> None:
        due = next_due_at(conn, self.name)
        wait = IDLE_POLL_S if due is None else min(IDLE_POLL_S, max(0.0, due - self.clock()))
        if wait > 0:
            self._wake.wait(wait)
        self._wake.clear()


class Dispatcher:
    """The ``dispatch`` stage of the service: a sender per configured destination."""

    name = "dispatch"

    def __init__(
        self,
        config: NodeConfig,
        transports: Mapping[str, Transport] | None = None,
    ) -> None:
        policy = RetryPolicy(
            max_attempts=config.dispatch.max_attempts,
            backoff_s=config.dispatch.backoff_s,
            backoff_max_s=config.dispatch.backoff_max_s,
        )
        self.senders: dict[str, DestinationSender] = {}
        for name, destination in config.destinations.items():
            transport = (transports or {}).get(name) or transport_for(
                destination, config.dispatch.calling_ae_title
            )
            self.senders[name] = DestinationSender(
                name,
                transport,
                config.storage.database_path,
                config.storage.outputs_dir,
                policy,
            )

    def start(self) -> None:
        for sender in self.senders.values():
            sender.start()

    def wake(self) -> None:
        for sender in self.senders.values():
            sender.wake()

    def stop(self) -> None:
        for sender in self.senders.values():
            sender.stop()
