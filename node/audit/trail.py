"""The audit trail: every event to the local append-only file first, then to the collector.

``record`` is cheap and thread-safe (the SCP calls it from its receive threads): it renders
the message, appends one JSON line with a single ``os.write`` to a file opened ``O_APPEND``
(so a crash of the node never loses a recorded event, and processes may share the file) and
hands the message to the syslog forwarder's queue. A background thread fsyncs the file at
least every ``FSYNC_INTERVAL_S`` while there is something new, so a power loss costs at most
that much. Nothing here raises into the caller: a failing disk is logged, never ingest's
problem.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from node.audit.events import AuditEvent, Outcome
from node.audit.messages import AuditSource, event_time, render
from node.audit.settings import AuditSettings
from node.audit.syslog import SyslogForwarder, syslog_message
from node.config import ConfigError

__all__ = ["DISABLED", "FSYNC_INTERVAL_S", "AuditTrail", "record_from_command"]

LOG = logging.getLogger(__name__)

FSYNC_INTERVAL_S = 0.5
WARN_EVERY_S = 60.0


class AuditTrail:
    """Records audit events; ``close`` last, after everything that records has stopped."""

    def __init__(
        self,
        path: Path | None,
        source: AuditSource,
        forwarder: SyslogForwarder | None = None,
        app_name: str = "ainode",
    ) -> None:
        self.path = path
        self.source = source
        self.app_name = app_name
        self._forwarder = forwarder
        self._fd: int | None = None
        self._fd_lock = threading.Lock()  # a write never meets a closed (or reused) descriptor
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._last_warning = float("-inf")
        self._flusher: threading.Thread | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._flusher = threading.Thread(
                target=self._flush_loop, name="audit-fsync", daemon=True
            )
            self._flusher.start()

    @classmethod
    def from_settings(cls, settings: AuditSettings, data_dir: Path, ae_title: str) -> AuditTrail:
        """The node's trail as node.yaml's ``audit:`` asks (``DISABLED`` if it is off)."""
        if not settings.enabled:
            return DISABLED
        source = AuditSource(
            ae_title=ae_title, source_id=settings.source_id or ae_title, site_id=settings.site_id
        )
        path = settings.file_path(data_dir)
        forwarder = SyslogForwarder(settings.collector) if settings.collector else None
        try:
            return cls(path, source, forwarder, settings.app_name)
        except OSError as exc:
            if forwarder is not None:
                forwarder.close(drain_s=0)
            raise ConfigError(f"audit.file {path} cannot be opened: {exc.strerror}") from exc

    @classmethod
    def disabled(cls) -> AuditTrail:
        """A trail that records nothing (audit switched off, or a component run on its own)."""
        return cls(None, AuditSource(ae_title="-", source_id="-"))

    @property
    def enabled(self) -> bool:
        return self._fd is not None or self._forwarder is not None

    @property
    def dropped(self) -> int:
        """Messages the collector missed because its queue was full."""
        return self._forwarder.dropped if self._forwarder is not None else 0

    def record(self, event: AuditEvent) -> None:
        """Write the event to the file and queue it for the collector; never raises."""
        if not self.enabled or self._closed.is_set():
            return
        try:
            xml = render(event, self.source)
        except Exception:
            LOG.exception("cannot render the audit message for a %s event", event.kind)
            return
        if self._fd is not None:
            line = {
                "time": event_time(event.at),
                "kind": str(event.kind),
                "outcome": int(event.outcome),
                "ae_titles": list(event.ae_titles),
                "study_uids": list(event.study_uids),
                "xml": xml,
            }
            self._append((json.dumps(line, separators=(",", ":")) + "\n").encode())
        if self._forwarder is not None:
            self._forwarder.submit(
                syslog_message(
                    xml,
                    at=event.at,
                    hostname=self.source.hostname,
                    app_name=self.app_name,
                    failure=event.outcome != Outcome.SUCCESS,
                )
            )

    def _append(self, data: bytes) -> None:
        try:
            with self._fd_lock:
                if self._fd is None:
                    return
                written = os.write(self._fd, data)  # O_APPEND: one write lands whole at the end
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
        except OSError as exc:
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                self._last_warning = now
                LOG.error("cannot append to the audit file %s: %s", self.path, exc)
            return
        self._dirty.set()

    def _flush_loop(self) -> None:
        while not self._closed.is_set():
            self._dirty.wait()
            self._dirty.clear()
            self._fsync()
            self._closed.wait(FSYNC_INTERVAL_S)

    def _fsync(self) -> None:
        # without the lock: writers never wait for the disk; close joins this thread first
        fd = self._fd
        if fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            LOG.error("cannot fsync the audit file %s: %s", self.path, exc)

    def close(self) -> None:
        """Flush the file, let the forwarder drain briefly, and stop recording."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._dirty.set()  # wake the flusher so it sees the close
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        if self._forwarder is not None:
            self._forwarder.close()
        self._fsync()
        with self._fd_lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


#: The trail of components built without one (tests, tools): records nothing.
DISABLED = AuditTrail.disabled()


def record_from_command(
    settings: AuditSettings, data_dir: Path, ae_title: str, event: AuditEvent
) -> None:
    """Record one event from a command run beside the node (``ainode studies``, ``ainode
    audit``) into the same trail: the file is opened ``O_APPEND`` and each record is one
    write, so the node's lines and the command's never interleave."""
    trail = AuditTrail.from_settings(settings, data_dir, ae_title)
    try:
        trail.record(event)
    finally:
        trail.close()
