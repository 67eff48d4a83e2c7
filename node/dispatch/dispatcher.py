"""The dispatch stage: one sender thread per destination, draining that destination's outbox.

Each destination has its own thread, connection and backoff, so a destination that is down
(connection refused, or worse, a peer that never answers) only ever delays its own rows.
A sender sleeps until its next row is due or until ``wake()`` says new rows were committed.
Each batch is audited: one DICOM Instances Transferred message per study and outcome.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from node.audit.events import InstancesSent, Outcome, Party, StudyRef
from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.db import connect
from node.destination_settings import (
    Destination,
    DicomDestination,
    FolderDestination,
    StowRsDestination,
)
from node.dispatch.outbox import OutboxRow, due_rows, mark_failed, mark_sent, next_due_at
from node.dispatch.sender import Transport, transport_for
from node.shared_types import RetryPolicy

__all__ = ["DestinationSender", "Dispatcher"]

LOG = logging.getLogger(__name__)

BATCH_SIZE = 64
IDLE_POLL_S = 1.0  # how often an idle sender looks for rows committed by another process


def destination_party(name: str, destination: Destination | None) -> Party:
    """A destination as the audit trail names it: AE title, STOW-RS URL or folder."""
    if isinstance(destination, DicomDestination):
        return Party(destination.ae_title, destination.host, destination.ae_title)
    if isinstance(destination, StowRsDestination):
        return Party(destination.url, urlsplit(destination.url).hostname)
    if isinstance(destination, FolderDestination):
        return Party(str(destination.path))
    return Party(name)


def _studies_of(conn: sqlite3.Connection, job_ids: set[int]) -> dict[int, tuple[str, str | None]]:
    """job id -> (Study Instance UID, Patient ID) of the study the job read."""
    marks = ",".join("?" * len(job_ids))
    records = conn.execute(
        "SELECT j.id, v.study_instance_uid, s.patient_id FROM jobs j "
        "JOIN route_matches m ON m.id = j.route_match_id "
        "JOIN study_versions v ON v.id = m.study_version_id "
        "LEFT JOIN studies s ON s.study_instance_uid = v.study_instance_uid "
        f"WHERE j.id IN ({marks})",
        tuple(job_ids),
    ).fetchall()
    return {record[0]: (record[1], record[2]) for record in records}


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
        audit: AuditTrail = DISABLED,
        peer: Party | None = None,
    ) -> None:
        self.name = name
        self.audit = audit
        self.peer = peer or Party(name)
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
        self._audit(conn, rows, outcome)
        return sent > 0

    def _audit(
        self, conn: sqlite3.Connection, rows: list[OutboxRow], outcome: Mapping[int, str | None]
    ) -> None:
        """One message per study and outcome of the batch."""
        if not self.audit.enabled:
            return
        studies = _studies_of(conn, {row.job_id for row in rows})
        groups: dict[tuple[str, str | None, bool], list[OutboxRow]] = {}
        for row in rows:
            study_uid, patient_id = studies.get(row.job_id, ("unknown", None))
            ok = outcome.get(row.id, "no outcome") is None
            groups.setdefault((study_uid, patient_id, ok), []).append(row)
        for (study_uid, patient_id, ok), group in groups.items():
            classes: dict[str, int] = {}
            for row in group:
                classes[row.sop_class_uid] = classes.get(row.sop_class_uid, 0) + 1
            self.audit.record(
                InstancesSent(
                    peer=self.peer,
                    destination=self.name,
                    study=StudyRef(study_uid, patient_id, tuple(sorted(classes.items()))),
                    result=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
                    description=None if ok else outcome.get(group[0].id) or "no outcome",
                )
            )

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
        audit: AuditTrail = DISABLED,
    ) -> None:
        policy = RetryPolicy(
            max_attempts=config.dispatch.max_attempts,
            backoff_s=config.dispatch.backoff_s,
            backoff_max_s=config.dispatch.backoff_max_s,
        )
        self.senders: dict[str, DestinationSender] = {}
        for name, destination in config.destinations.items():
            transport = (transports or {}).get(name) or transport_for(
                destination, config.dispatch.calling_ae_title, config.tls
            )
            self.senders[name] = DestinationSender(
                name,
                transport,
                config.storage.database_path,
                config.storage.outputs_dir,
                policy,
                audit=audit,
                peer=destination_party(name, destination),
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
