"""pynetdicom's DUL reactor (socket <-> PDUs), woken by work instead of polling every 1 ms.

pynetdicom 3.0.4's DUL loop sleeps 1 ms whenever it finds nothing to do, and every C-STORE
crosses it twice (request in, response out). ``EventDUL`` waits on ``select`` over the socket
and a wake-up socket that is signalled whenever a primitive is queued for it, reads PDUs
whole (``pdu_socket``) and hands the P-DATA of plain C-STOREs to ``direct_store``. A PDU
header's length is not trusted before the association is established.
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

from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ

from node.ingest.direct_store import DirectStoreReceiver
from node.pynetdicom_seam import HookedDUL, stop_association_reactor

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


class WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after every ``put``."""

    def __init__(self, wake: Callable[[], object]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class EventDUL(HookedDUL):
    """pynetdicom's DUL reactor, waiting on the socket and a wake-up instead of sleeping, and
    handing the P-DATA of plain C-STOREs to ``direct_store`` when given a receiver.

    It is told of its association's events by callbacks (``on_request``: the A-ASSOCIATE-RQ
    has been read; ``wake_association``: the DUL has ended), so it needs nothing of
    ``association`` but pynetdicom's ``Association``.
    """

    def __init__(
        self,
        assoc: Association,
        direct_store: DirectStoreReceiver | None,
        *,
        on_request: Callable[[], None],
        wake_association: Callable[[], None],
    ) -> None:
        super().__init__(assoc)
        self._direct_store = direct_store
        self._on_request = on_request
        self._wake_association = wake_association
        #: The last wait saw the peer's socket readable: the next read needs no ``select``.
        self._socket_readable = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self.to_provider_queue = WakingQueue(self.wake)
        self.event_queue = WakingQueue(self.wake)

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
            self._wake_association()  # the association notices the DUL has ended

    def _run_events(self) -> None:
        self.start_idle_timer()
        while True:
            self.signal_ready()
            if self.stop_requested:
                return
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self.send_next_primitive():
                    pass
                elif self.transport_event():
                    self.restart_idle_timer()
            except Exception as exc:
                self._abort_on(exc)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait_for_work()
                continue
            self.state_machine.do_action(event)

    def read_pdu(self) -> None:
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
            self._on_request()
        if (
            pdu_type == _P_DATA_TF
            and self._direct_store is not None
            and self.state_machine.current_state == "Sta6"
            # a new C-STORE only when pynetdicom has no event pending (its view is current)
            and self._direct_store.take(body, may_start=self.event_queue.empty())
        ):
            return
        try:
            pdu, event = self.decode_pdu(header + body)
        except Exception as exc:
            if self._closing():
                return
            LOGGER.error("unable to decode the received PDU: %s", exc)
            self.event_queue.put("Evt19")
            return
        self.deliver_pdu(pdu, event)

    def _closing(self) -> bool:
        """After an abort (Sta13, waiting for the peer to close) a PDU that is not one closes
        the connection: pynetdicom answered each with another A-ABORT and a log line, so 60 KB
        of zeros made 10,000 error lines and 100 KB of aborts."""
        if self.state_machine.current_state != "Sta13" or self.socket is None:
            return False
        self.socket.close()  # queues Evt17: the connection is closed
        return True

    def transport_event(self) -> bool:
        """pynetdicom's check, except that when the wait has just seen the socket readable
        it reads without asking ``select`` again (a system call per PDU)."""
        if self._socket_readable and self.state_machine.current_state != "Sta13":
            self._socket_readable = False
            self.read_pdu()
            return True
        return super().transport_event()

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
        stop_association_reactor(self.assoc)
        self.kill_dul()
