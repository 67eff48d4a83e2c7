"""Audit messages to a syslog collector: RFC 5424 messages over UDP (RFC 5426), TCP (RFC 6587
octet counting) or TLS (RFC 5425), as PS3.15 A.6/A.7 prescribe.

``submit`` only puts the frame on a bounded queue; one background thread connects, sends and
reconnects with backoff. A collector that is down, slow or never reads costs the node nothing
but the messages the full queue drops, counted and warned about at most once a minute (the
local audit file has every message regardless).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import socket
import ssl
import threading
import time

from node.audit.messages import event_time
from node.audit.settings import CollectorSettings, SyslogTransport

__all__ = ["MSGID", "SyslogForwarder", "frame", "syslog_message"]

LOG = logging.getLogger(__name__)

#: PS3.15 A.7: "DICOM+RFC3881" for messages that follow the DICOM audit message format.
MSGID = "DICOM+RFC3881"
FACILITY_AUTH = 10  # security/authorization messages (PS3.15 A.6, A.7)
SEVERITY_NOTICE, SEVERITY_WARNING = 5, 4
BOM = b"\xef\xbb\xbf"
SEND_TIMEOUT_S = 5.0  # a collector that stops reading is given up on after this
WARN_EVERY_S = 60.0


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit``."""
    cleaned = "".join(c for c in value if "!" <= c <= "~")[:limit]
    return cleaned or "-"


def syslog_message(
    xml: str, *, at: float, hostname: str, app_name: str, failure: bool = False
) -> bytes:
    """One RFC 5424 SYSLOG-MSG: PRI (facility 10), version 1, timestamp, hostname, APP-NAME,
    PROCID, MSGID, no structured data, then the BOM and the UTF-8 XML."""
    severity = SEVERITY_WARNING if failure else SEVERITY_NOTICE
    header = " ".join(
        (
            f"<{FACILITY_AUTH * 8 + severity}>1",
            event_time(at),
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            str(os.getpid()),
            MSGID,
            "-",
        )
    )
    return header.encode("ascii") + b" " + BOM + xml.encode("utf-8")


def frame(message: bytes, transport: SyslogTransport) -> bytes:
    """How the message goes on the wire: a UDP datagram is the message; on a stream it is
    prefixed by its length in octets (RFC 5425 section 4.3, RFC 6587 section 3.4.1)."""
    if transport == SyslogTransport.UDP:
        return message
    return str(len(message)).encode("ascii") + b" " + message


class SyslogForwarder:
    """Sends queued messages to one collector from its own thread; never blocks a caller."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        self.dropped = 0
        self.sent = 0
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=settings.queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_drop_warning = self._last_retry_warning = float("-inf")
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def submit(self, message: bytes) -> None:
        """Queue one SYSLOG-MSG; drop it (counted) if the queue is full."""
        try:
            self._queue.put_nowait(frame(message, self.settings.transport))
        except queue.Full:
            with self._lock:
                self.dropped += 1
                self._warn_dropped()

    def _warn_dropped(self) -> None:
        now = time.monotonic()
        if now - self._last_drop_warning >= WARN_EVERY_S:
            self._last_drop_warning = now
            collector = self.settings
            LOG.warning(
                "audit collector %s:%d is not taking messages: %d dropped so far (the local "
                "audit file has them all)",
                collector.host,
                collector.resolved_port,
                self.dropped,
            )

    def close(self, drain_s: float = 2.0) -> None:
        """Stop after sending what is queued while the collector is connected, giving up
        after ``drain_s``."""
        deadline = time.monotonic() + drain_s
        while (
            not self._queue.empty()
            and self._socket is not None
            and time.monotonic() < deadline
            and self._thread.is_alive()
        ):
            time.sleep(0.01)
        self._stop.set()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()))
        self._disconnect()  # wakes a send still stuck on a collector that does not read

    # -- the sending thread ------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.5
        pending: bytes | None = None
        while not self._stop.is_set():
            if pending is None:
                try:
                    pending = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
            try:
                self._send(pending)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:  # too big for a datagram: it never will fit
                    LOG.warning("audit message of %d bytes is too big for UDP", len(pending))
                    with self._lock:
                        self.dropped += 1
                    pending = None
                    continue
                self._disconnect()
                with self._lock:
                    if time.monotonic() - self._last_retry_warning >= WARN_EVERY_S:
                        self._last_retry_warning = time.monotonic()
                        LOG.warning(
                            "audit collector %s:%d: %s; retrying in %.1f s",
                            self.settings.host,
                            self.settings.resolved_port,
                            exc,
                            backoff,
                        )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_s)
                continue
            pending = None
            backoff = 0.5
            with self._lock:
                self.sent += 1

    def _send(self, data: bytes) -> None:
        sock = self._socket
        if sock is None:
            sock = self._socket = self._connect()
        if self.settings.transport == SyslogTransport.UDP:
            sock.send(data)
        else:
            sock.sendall(data)

    def _connect(self) -> socket.socket:
        settings = self.settings
        address = (settings.host, settings.resolved_port)
        if settings.transport == SyslogTransport.UDP:
            family = socket.getaddrinfo(*address, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family[0], socket.SOCK_DGRAM)
            sock.connect(family[4])
            return sock
        sock = socket.create_connection(address, timeout=SEND_TIMEOUT_S)
        if settings.transport == SyslogTransport.TLS:
            context = ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file else None
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.cert_file is not None and settings.key_file is not None:
                context.load_cert_chain(settings.cert_file, settings.key_file)
            try:
                sock = context.wrap_socket(sock, server_hostname=settings.host)
            except (OSError, ssl.SSLError):
                sock.close()
                raise
        sock.settimeout(SEND_TIMEOUT_S)  # a collector that stops reading fails the send
        return sock

    def _disconnect(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
