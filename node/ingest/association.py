"""The association reactor of an accepted connection: DIMSE messages -> handlers, woken by work.

pynetdicom 3.0.4 runs two loops per association, the DUL reactor (socket <-> PDUs, here
``dul``) and the association reactor (DIMSE messages -> handlers), and each sleeps 1 ms
whenever it finds nothing to do. Every C-STORE crosses both loops twice (request in, response
out), so on a fast link most of an instance's time is spent asleep. Here the association
waits on an event set whenever a DIMSE message or an ACSE primitive is queued for it.

C-STORE and C-ECHO requests are served on the DUL thread as soon as their last P-DATA is
read, instead of being queued for the association thread (plain C-STOREs without pynetdicom's
PDU and DIMSE decoding at all: ``direct_store``): a sender waits for each response anyway
(no asynchronous operations are negotiated), and each of the two thread hand-offs per
instance (DUL -> association -> DUL) costs a context switch and a GIL transfer, which on a
busy two-core machine is most of a small instance's protocol time. Everything else (state
machine, ACSE, DIMSE, service classes, handlers, any other DIMSE service on the association
thread) is pynetdicom's own, except that responses are encoded by ``responses``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_ECHO, C_STORE

from node.ingest.c_store import StoreHandler
from node.ingest.direct_store import DirectStoreReceiver
from node.ingest.dul import TIMER_RESOLUTION_S, EventDUL, WakingQueue
from node.ingest.pdu_socket import PduSocket, set_kernel_timeouts
from node.ingest.responses import FastResponseDIMSE
from node.pynetdicom_seam import (
    HookedAssociation,
    accepted_context,
    is_killed,
    release_sent,
    server_of,
)

LOGGER = logging.getLogger(__name__)


def handshake_failure(exc: OSError) -> str:
    """Why a TLS handshake failed, as the log and the audit trail say it."""
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    return str(reason or exc.strerror or type(exc).__name__)


class _InlineMessages(WakingQueue):
    """The DIMSE message queue: C-STORE and C-ECHO requests are served right away on the
    thread that decoded them (the DUL's), anything else is queued for the association."""

    def __init__(self, assoc: EventAssociation) -> None:
        super().__init__(assoc.wake)
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        context_id, message = item
        assoc = self._assoc
        # Never beside or ahead of a message the association thread holds: it serves under
        # ``serving``, taken before it looks at the queue, so requests keep their order.
        if (
            self.empty()
            and assoc.serves_inline(message, context_id)
            and assoc.serving.acquire(blocking=False)
        ):
            try:
                assoc.serve_request(message, context_id)
            finally:
                assoc.serving.release()
            return
        super().put(item, block, timeout)


class EventAssociation(HookedAssociation):
    """An acceptor association whose reactor sleeps only until there is something to do."""

    def __init__(
        self,
        ae: Any,
        mode: str,
        store_handler: StoreHandler | None = None,
        request_timeout: float | None = None,
    ) -> None:
        super().__init__(ae, mode)
        self._wake_event = threading.Event()
        #: Held while a DIMSE request is served, by whichever thread serves it.
        self.serving = threading.Lock()
        direct_store = (
            DirectStoreReceiver(self, self.serving, store_handler)
            if store_handler is not None
            else None
        )
        self.dul = EventDUL(
            self,
            direct_store,
            on_request=self.association_requested,
            wake_association=self.wake,
        )
        #: Whether the A-ASSOCIATE-RQ has arrived; until then the connection does not count
        #: against the AE's association limit (``ConnectionCountingAE``).
        self.requested = False
        self._full_acse_timeout = self.acse_timeout
        # pynetdicom applied the AE's timeouts to the DUL it made itself; give them to ours
        # (the ARTIM timer runs on the ACSE timeout, the idle timer on the network timeout).
        # Until the A-ASSOCIATE-RQ arrives both the ARTIM timer and pynetdicom's wait for it
        # run on the shorter request timeout: a bare connect must not hold a thread for long.
        self.acse_timeout = request_timeout or self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dul.to_user_queue = WakingQueue(self.wake)
        self.dimse = FastResponseDIMSE(self)
        self.dimse.msg_queue = _InlineMessages(self)

    def serves_inline(self, message: Any, context_id: Any) -> bool:
        """A request the DUL thread may serve itself: a valid C-STORE or C-ECHO on an
        accepted context of an established association (anything unusual takes pynetdicom's
        own path, where a refusal may abort and wait for the DUL thread)."""
        return (
            isinstance(message, C_STORE | C_ECHO)
            and message.is_valid_request
            and accepted_context(self, context_id) is not None
            and self.is_established
            and not release_sent(self)
            and not is_killed(self)
        )

    def association_requested(self) -> None:
        """The A-ASSOCIATE-RQ has been read: the connection counts as an association from
        now on, with the full ACSE and network timeouts."""
        self.requested = True
        self.acse_timeout = self._full_acse_timeout
        sock = self.dul.socket
        if isinstance(sock, PduSocket):
            sock.deadline = None
            if sock.socket is not None:
                set_kernel_timeouts(sock.socket, self.network_timeout)

    def wake(self) -> None:
        self._wake_event.set()

    def run_reactor(self) -> None:
        """pynetdicom's, after the TLS handshake of a TLS connection: done here, on the
        connection's own thread, so a slow or hostile handshake never holds the listener."""
        if self.is_acceptor and not self._tls_handshake():
            return
        try:
            super().run_reactor()
        except Exception as exc:
            self._abort_after(exc)

    def _abort_after(self, exc: Exception) -> None:
        """pynetdicom's association code failed (a presentation context without an abstract
        syntax made ``negotiate_unrestricted`` raise AttributeError): abort and close, where
        the dead thread had left the connection open, and counted against the association
        limit, for as long as the peer kept it."""
        LOGGER.error(
            "association from %s:%s failed, aborting it: %s: %s",
            self.requestor.address,
            self.requestor.port,
            type(exc).__name__,
            exc,
        )
        self.abort()
        self.kill()

    def _tls_handshake(self) -> bool:
        """Complete the handshake (bounded by the request timeout in the kernel); a failure is
        logged with the peer and the reason, reported to the server and closes the
        connection. True for a plain connection."""
        sock = self.dul.socket.socket if self.dul.socket is not None else None
        if not isinstance(sock, ssl.SSLSocket):
            return True
        try:
            sock.do_handshake()
            return True
        except OSError as exc:  # ssl.SSLError included
            reason = handshake_failure(exc)
        peer = (str(self.requestor.address), int(self.requestor.port or 0))
        LOGGER.warning("TLS handshake with %s:%s failed: %s", *peer, reason)
        server = server_of(self)
        on_failure = getattr(server, "on_tls_failure", None)
        if on_failure is not None:
            on_failure(peer, reason)
        self.kill()
        if server is not None:
            server.shutdown_request(sock)
        return False

    def kill(self) -> None:
        self.wake()
        super().kill()

    def serve_loop(self) -> None:
        """pynetdicom's acceptor loop with the 1 ms sleep replaced by a wait on work."""
        idle = False
        while not is_killed(self):
            if idle:
                self._wake_event.wait(TIMER_RESOLUTION_S)
            self._wake_event.clear()
            idle = True

            self.checkpoint()

            # The DUL thread may be serving a request itself, a direct C-STORE across several
            # PDUs: then go on to the checks below instead of waiting for it, so a release, an
            # abort or the idle timeout is still seen. What it queues meanwhile wakes this loop.
            if self.serving.acquire(blocking=False):
                try:
                    context_id, msg = self.dimse.get_msg(block=False)
                    if msg:
                        self.serve_request(msg, int(context_id or 0))
                        idle = False
                finally:
                    self.serving.release()

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("network timeout reached, aborting the association")
                if not self._end_trickling_read():
                    self.abort()
                self.kill()
                return

    def _end_trickling_read(self) -> bool:
        """A peer that sends a PDU a byte at a time keeps each ``recv`` within the kernel
        timeout, so the DUL thread never gets back to send the A-ABORT, and ``abort`` waited
        as long as the peer went on. Ending the read instead closes the connection (the
        plain socket's shutdown: an ``SSLSocket``'s own would drop its state under the read)."""
        sock = self.dul.socket
        if not isinstance(sock, PduSocket) or not sock.reading or sock.socket is None:
            return False
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock.socket, socket.SHUT_RD)
        return True
