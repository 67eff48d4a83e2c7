"""An event-driven receive path for pynetdicom's acceptor: no fixed 1 ms polling sleeps.

pynetdicom 3.0.4 runs two loops per association, the DUL reactor (socket <-> PDUs) and the
association reactor (DIMSE messages -> handlers), and each sleeps 1 ms whenever it finds
nothing to do. Every C-STORE crosses both loops twice (request in, response out), so on a
fast link most of an instance's time is spent asleep. Here the same loops wait on what they
are waiting for instead: the DUL on ``select`` over the socket and a wake-up socket that is
signalled whenever a primitive is queued for it; the association on an event set whenever a
DIMSE message or an ACSE primitive is queued for it. PDUs are read whole with ``recv_into``
(``node.pdu_socket``) instead of 4 KiB ``recv`` calls.

C-STORE and C-ECHO requests are served on the DUL thread as soon as their last P-DATA is
read, instead of being queued for the association thread (plain C-STOREs without pynetdicom's
PDU and DIMSE decoding at all: ``node.direct_store``): a sender waits for each response
anyway (no asynchronous operations are negotiated), and each of the two thread hand-offs per
instance (DUL -> association -> DUL) costs a context switch and a GIL transfer, which on a
busy two-core machine is most of a small instance's protocol time. Everything else (state
machine, ACSE, DIMSE, service classes, handlers, any other DIMSE service on the association
thread) is pynetdicom's own, except that responses are encoded by ``node.responses``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ

from node.direct_store import DirectStoreReceiver, StoreHandler
from node.pdu_socket import PduSocket
from node.responses import FastResponseDIMSE
from node.sockets import set_kernel_timeouts

LOGGER = logging.getLogger(__name__)

_PDU_HEADER = struct.Struct(">BBL")
_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04
_A_ASSOCIATE_RQ = 0x01

#: Longest a loop sleeps with nothing to do; only timers (ARTIM, idle) rely on it.
TIMER_RESOLUTION_S = 0.05
#: Largest PDU read before an association is established. An A-ASSOCIATE-RQ proposing a few
#: hundred presentation contexts is under 40 KiB; a longer one is hostile (with ``max_pdu: 0``
#: the declared length was otherwise taken at its word), so the connection is aborted.
MAX_PRE_ASSOCIATION_PDU = 64 * 1024
#: States of an acceptor before its association is established (PS3.8 9.2; Sta1 until the
#: DUL has taken its connection event, which a PDU already waiting can overtake).
_BEFORE_ASSOCIATION = frozenset({"Sta1", "Sta2", "Sta3"})


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after every ``put``."""

    def __init__(self, wake: Callable[[], object]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _EventDUL(DULServiceProvider):
    """pynetdicom's DUL reactor, waiting on the socket and a wake-up instead of sleeping, and
    handing the P-DATA of plain C-STOREs to ``node.direct_store`` when given a store handler."""

    def __init__(self, assoc: EventAssociation, store_handler: StoreHandler | None) -> None:
        super().__init__(assoc)
        self._direct_store = (
            DirectStoreReceiver(assoc, store_handler) if store_handler is not None else None
        )
        #: The last wait saw the peer's socket readable: the next read needs no ``select``.
        self._socket_readable = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.to_provider_queue = _WakingQueue(self.wake)
        self.event_queue = _WakingQueue(self.wake)

    def wake(self) -> None:
        if threading.current_thread() is self:
            return  # queued by the reactor itself: its loop looks at the queues before waiting
        # OSError: already signalled (buffer full), or the reactor has ended.
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def run_reactor(self) -> None:
        try:
            self._run_events()
        finally:
            if self._direct_store is not None:
                self._direct_store.close()
            self._wake_reader.close()
            self._wake_writer.close()
            # An association thread still waiting for the A-ASSOCIATE-RQ (one that could not
            # be decoded ended this reactor) takes this as "none came" instead of waiting out
            # its timeout, the full ACSE one once the request was read: 30 s of a thread and
            # an association slot per malformed request. Queued behind any real primitive,
            # and a later look at the queue sees neither an abort nor a release in it.
            self.to_user_queue.put(None)
            assoc_wake = getattr(self.assoc, "wake", None)
            if assoc_wake is not None:
                assoc_wake()  # the association notices the DUL has ended

    def _run_events(self) -> None:
        self._idle_timer.start()
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                return
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                self._abort_on(exc)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait_for_work()
                continue
            self.state_machine.do_action(event)

    def _read_pdu_data(self) -> None:
        """pynetdicom's PDU read (same events for the same failures), except that a P-DATA-TF
        PDU of a plain C-STORE in the established state goes to the direct store path."""
        socket_ = self.socket
        assert socket_ is not None
        try:
            header = socket_.recv(6)
            if len(header) != 6:
                self.event_queue.put("Evt17")  # transport closed
                return
            pdu_type, _, length = _PDU_HEADER.unpack(header)
            if pdu_type not in _PDU_TYPES:
                if self._closing():
                    return
                LOGGER.error("unknown PDU type 0x%02X received", pdu_type)
                self.event_queue.put("Evt19")  # unrecognised PDU
                return
            if (
                length > MAX_PRE_ASSOCIATION_PDU
                and self.state_machine.current_state in _BEFORE_ASSOCIATION
            ):
                LOGGER.warning(
                    "aborted a connection from %s: a %d-byte PDU (type 0x%02X) before "
                    "association, over %d",
                    self.assoc.requestor.address,
                    length,
                    pdu_type,
                    MAX_PRE_ASSOCIATION_PDU,
                )
                self._abort(reason=0x06)  # invalid PDU parameter value
                socket_.close()
                return
            body = socket_.recv(length)
        except (OSError, TimeoutError):
            LOGGER.error("connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            LOGGER.error("connection closed after %d of a PDU's %d bytes", len(body), length)
            self.event_queue.put("Evt17")
            return
        if pdu_type == _A_ASSOCIATE_RQ:
            self.assoc.association_requested()
        if (
            pdu_type == _P_DATA_TF
            and self._direct_store is not None
            and self.state_machine.current_state == "Sta6"
            # a new C-STORE only when pynetdicom has no event pending (its view is current)
            and self._direct_store.take(body, may_start=self.event_queue.empty())
        ):
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception as exc:
            if self._closing():
                return
            LOGGER.error("unable to decode the received PDU: %s", exc)
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _closing(self) -> bool:
        """After an abort (Sta13, waiting for the peer to close) a PDU that is not one closes
        the connection: pynetdicom answered each with another A-ABORT and a log line, so 60 KB
        of zeros made 10,000 error lines and 100 KB of aborts."""
        if self.state_machine.current_state != "Sta13" or self.socket is None:
            return False
        self.socket.close()  # queues Evt17: the connection is closed
        return True

    def _is_transport_event(self) -> bool:
        """pynetdicom's check, except that when the wait has just seen the socket readable
        it reads without asking ``select`` again (a system call per PDU)."""
        if self._socket_readable and self.state_machine.current_state != "Sta13":
            self._socket_readable = False
            self._read_pdu_data()
            return True
        return bool(super()._is_transport_event())

    def _wait_for_work(self) -> None:
        readers: list[Any] = [self._wake_reader]
        sock = self.socket.socket if self.socket is not None else None
        if sock is not None and sock.fileno() >= 0:
            readers.append(sock)
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            self._socket_readable = True  # decrypted bytes wait in OpenSSL, unseen by select
            return
        ready: list[Any] = []
        # OSError/ValueError: the socket closed under us; the loop will see it.
        with contextlib.suppress(OSError, ValueError):
            ready = select.select(readers, [], [], TIMER_RESOLUTION_S)[0]
        self._socket_readable = sock is not None and sock in ready
        if self._wake_reader in ready:
            try:
                while self._wake_reader.recv(4096):
                    pass
            except OSError:  # drained
                pass

    def _abort_on(self, exc: Exception) -> None:
        """What pynetdicom's reactor does on an unexpected error: A-ABORT and stop."""
        LOGGER.error("exception in the DUL reactor, aborting the association: %s", exc)
        self._abort(reason=0x00)

    def _abort(self, reason: int) -> None:
        """Send an A-ABORT (service provider, ``reason``) and stop."""
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = reason
        if self.socket is not None:
            self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class _InlineMessages(_WakingQueue):
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
                assoc._serve_request(message, context_id)
            finally:
                assoc.serving.release()
            return
        super().put(item, block, timeout)


class EventAssociation(Association):
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
        self.dul = _EventDUL(self, store_handler)
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
        self.dul.to_user_queue = _WakingQueue(self.wake)
        self.dimse = FastResponseDIMSE(self)
        self.dimse.msg_queue = _InlineMessages(self)
        #: Held while a DIMSE request is served, by whichever thread serves it.
        self.serving = threading.Lock()

    def serves_inline(self, message: Any, context_id: Any) -> bool:
        """A request the DUL thread may serve itself: a valid C-STORE or C-ECHO on an
        accepted context of an established association (anything unusual takes pynetdicom's
        own path, where a refusal may abort and wait for the DUL thread)."""
        return (
            isinstance(message, C_STORE | C_ECHO)
            and message.is_valid_request
            and context_id in self._accepted_cx
            and self.is_established
            and not self._sent_release
            and not self._kill
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
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
            reason = str(reason or exc.strerror or type(exc).__name__)
        peer = (str(self.requestor.address), int(self.requestor.port or 0))
        LOGGER.warning("TLS handshake with %s:%s failed: %s", *peer, reason)
        on_failure = getattr(self._server, "on_tls_failure", None)
        if on_failure is not None:
            on_failure(peer, reason)
        self.kill()
        if self._server is not None:
            self._server.shutdown_request(sock)
        return False

    def kill(self) -> None:
        self.wake()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop with the 1 ms sleep replaced by a wait on work."""
        self._is_paused = False
        idle = False
        while not self._kill:
            if idle:
                self._wake_event.wait(TIMER_RESOLUTION_S)
            self._wake_event.clear()
            idle = True

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            # The DUL thread may be serving a request itself, a direct C-STORE across several
            # PDUs: then go on to the checks below instead of waiting for it, so a release, an
            # abort or the idle timeout is still seen. What it queues meanwhile wakes this loop.
            if self.serving.acquire(blocking=False):
                try:
                    context_id, msg = self.dimse.get_msg(block=False)
                    if msg:
                        self._serve_request(msg, int(context_id or 0))
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
