"""The listening side of the SCP: sockets, who gets a connection, and the association each
connection becomes.

``ListeningServer`` is pynetdicom's threaded server with Nagle off, kernel timeouts on every
accepted socket, the pending-connection bound of ``admission``, DICOM TLS (the socket
wrapped as accepted, the handshake left to the connection's own thread) and the event-driven
``EventAssociation`` instead of the 1 ms polling one. With Nagle on, each small C-STORE
response waits for the peer's delayed ACK and loopback throughput drops to tens of instances
per second.

On a pynetdicom version ``node.pynetdicom_seam`` does not know (``FAST_PATH`` False) the
server keeps what needs only socketserver's hooks (Nagle off, kernel timeouts, admission,
the backlog) and takes pynetdicom's own request handler, so its own ``Association`` and DUL;
the TLS handshake is then made as pynetdicom's server makes it, on the accepting thread.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from node.access import PeerCertificate
from node.ingest.admission import Admission
from node.ingest.association import EventAssociation, handshake_failure
from node.ingest.c_store import StoreHandler
from node.ingest.pdu_socket import PduSocket, set_kernel_timeouts
from node.pynetdicom_seam import FAST_PATH, HookedRequestHandler
from node.tls import subject_of

__all__ = [
    "ConnectionCountingAE",
    "EventRequestHandler",
    "ListeningServer",
    "ReusePortServer",
    "bound_address",
    "peer_certificate",
]


LOGGER = logging.getLogger(__name__)


class EventRequestHandler(HookedRequestHandler):
    """pynetdicom's request handler building an ``EventAssociation`` and a fast socket."""

    def new_association(self, mode: str) -> Association:
        return EventAssociation(
            self.ae,
            mode,
            getattr(self.server, "store_handler", None),
            getattr(self.server, "association_request_timeout", None),
        )

    def new_socket(self, assoc: Association) -> AssociationSocket:
        sock = PduSocket(assoc, client_socket=self.request)
        request_timeout = getattr(self.server, "association_request_timeout", None)
        if request_timeout is not None:
            sock.deadline = time.monotonic() + request_timeout
        return sock


class ConnectionCountingAE(AE):
    """pynetdicom's AE, whose association limit (``maximum_associations``, checked as an
    A-ASSOCIATE-RQ is negotiated) counts only connections that have sent one: idle or
    trickling connections cannot make an allowed caller's association *local limit
    exceeded*; the request timeout bounds them instead."""

    @property
    def active_associations(self) -> list[Association]:
        return [a for a in super().active_associations if getattr(a, "requested", True)]


class ListeningServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with Nagle off and the network timeout on every accepted
    connection, and the event-driven ``EventAssociation`` instead of the 1 ms polling one.

    With Nagle on, each small C-STORE response waits for the peer's delayed ACK and loopback
    throughput drops to tens of instances per second.
    """

    #: The listen backlog (socketserver's is 5): a burst of connects beyond it has its SYNs
    #: dropped, and each such caller waits a second or more for its retry.
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", EventRequestHandler if FAST_PATH else RequestHandler)
        super().__init__(*args, **kwargs)
        #: Serves plain C-STOREs straight off their PDUs (``direct_store``).
        self.store_handler: StoreHandler | None = None
        #: How long a new connection may take to send its whole A-ASSOCIATE-RQ.
        self.association_request_timeout: float | None = None
        #: Bounds the connections that have not sent an A-ASSOCIATE-RQ yet.
        self.admission: Admission | None = None
        #: Set for a DICOM TLS listener: accepted sockets are wrapped, and the handshake is
        #: made on the connection's thread (``EventAssociation``), never on the accepting one.
        self.tls_context: ssl.SSLContext | None = None
        #: Told of each failed handshake: (peer host, port), the reason.
        self.on_tls_failure: Callable[[tuple[str, int], str], None] | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A peer that stops in the middle of a PDU must not hold the receiving thread in
        # ``recv`` for ever (the association's idle timeout cannot reach it there); until its
        # A-ASSOCIATE-RQ is read the shorter request timeout applies (``EventAssociation``;
        # pynetdicom's own association could not lift it once the request is read).
        timeouts = [self.ae.network_timeout]
        if FAST_PATH:
            timeouts.append(self.association_request_timeout)
        set_kernel_timeouts(client, min((t for t in timeouts if t is not None), default=None))
        if self.tls_context is not None:
            client = self.tls_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
            if not FAST_PATH:
                self._handshake(client, address)
        return client, address

    def _handshake(self, client: ssl.SSLSocket, address: Any) -> None:
        """The stock path's TLS handshake, on the accepting thread as pynetdicom's server
        makes it (bounded by the kernel timeouts). A failure is logged, reported and
        raised: socketserver drops a connection whose ``get_request`` raises OSError."""
        try:
            client.do_handshake()
        except OSError as exc:  # ssl.SSLError included
            peer = (str(address[0]), int(address[1]))
            reason = handshake_failure(exc)
            LOGGER.warning("TLS handshake with %s:%s failed: %s", *peer, reason)
            if self.on_tls_failure is not None:
                self.on_tls_failure(peer, reason)
            client.close()
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Take the connection unless ``admission`` refuses it; refused, it is closed at once
        (``shutdown_request``) without a thread (``admission``)."""
        if self.admission is None:
            return True
        return self.admission.admit(self.active_associations, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Set the association up on the accepting thread (it starts its own threads):
        ``ThreadingMixIn``'s extra thread per connection would cost a thread more each and
        keep a new connection out of ``active_associations``, so out of the count above,
        until it ran."""
        self.finish_request(request, client_address)

    def shutdown(self) -> None:
        """Stop serving and close the socket. pynetdicom's own shutdown also takes the
        server off its AE's private list, which only ``AE.start_server`` puts it on; this
        node starts its servers itself (``StorageSCP``) and stops them here."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class ReusePortServer(ListeningServer):
    """A receiver process's server (``listener.processes`` > 1): it joins the node's
    SO_REUSEPORT group on the port, and the kernel spreads new connections over the group."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def bound_address(server: ThreadedAssociationServer) -> tuple[str, int]:
    host, port = server.server_address[:2]
    return str(host), int(port)


def peer_certificate(assoc: Association) -> PeerCertificate | None:
    """The verified certificate a TLS caller presented; None over plain DICOM or without one."""
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    return PeerCertificate(der, subject_of(sock.getpeercert() or {}))
