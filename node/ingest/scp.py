"""The storage SCP: the listening AE, who may associate, and C-ECHO and C-STORE over it.

``StorageSCP`` binds the listeners (``listener``), decides each association request (called
AE, ``access.callers``, TLS certificate), keeps the audit trail's view of each association and
tells the index which studies a released association delivered (``deliveries``). Each C-STORE
goes to ``store.InstanceStore``, which says Success only once the instance is durable.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from node.access import CallerAllowList, CallerPin, host_networks
from node.audit.events import Party
from node.audit.receiving import ReceiveAudit
from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.ingest.admission import REFUSAL_LOG_INTERVAL_S, Admission
from node.ingest.association_slots import AssociationSlots
from node.ingest.c_store import StoreReply, StoreRequest
from node.ingest.deliveries import OpenDeliveries
from node.ingest.index import Index
from node.ingest.listener import (
    ConnectionCountingAE,
    ListeningServer,
    ReusePortServer,
    bound_address,
    peer_certificate,
)
from node.ingest.spool import Spool
from node.ingest.store import InstanceStore, JournalEnd
from node.pynetdicom_seam import release_sent, set_option
from node.tls import parse_subject, pem_fingerprint
from node.vendors.inbox import VendorInbox

LOGGER = logging.getLogger(__name__)

# Accept every storage SOP class, including private and ones newer than pynetdicom (the
# Label Map SEG, Philips 1.3.46.*, 2.25.*): we store bytes, we do not interpret them.
set_option("UNRESTRICTED_STORAGE_SERVICE", True)
# pynetdicom's per-message logging handlers cost time on every PDU and log nothing we want.
set_option("LOG_HANDLER_LEVEL", "none")
# pynetdicom logs every association at INFO; ours say what matters (refusals, failures).
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


# A-ASSOCIATE-RJ reasons (rejected permanent, by the service user), PS3.8 9.3.4
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07
# A-ASSOCIATE-RJ: rejected transient, by the service provider (presentation), local limit
# exceeded: what pynetdicom answers beyond ``maximum_associations``, PS3.8 9.3.4
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


def _refuse(assoc: Association, calling_ae: str, reason: int, why: str) -> None:
    """Reject the association permanently (service user, ``reason``), saying why in the log."""
    requestor = assoc.requestor
    LOGGER.warning(
        "refused association from calling AE %r at %s:%s: %s",
        calling_ae,
        requestor.address,
        requestor.port,
        why,
    )
    assoc.acse.send_reject(0x01, 0x01, reason)
    assoc.kill()


def _party(assoc: Association, calling_ae: str) -> Party:
    """The calling peer as the audit trail names it."""
    return Party(calling_ae, str(assoc.requestor.address), calling_ae)


class StorageSCP:
    """The listening AE: who may associate, and what happens to each received instance."""

    def __init__(
        self,
        config: NodeConfig,
        spool: Spool,
        index: Index,
        vendor_inbox: VendorInbox | None = None,
        audit: AuditTrail = DISABLED,
        mover: JournalEnd | None = None,
        slots: AssociationSlots | None = None,
    ) -> None:
        """``slots``: in a receiver process, the node-wide association count; its servers
        then join the node's SO_REUSEPORT group on the port."""
        self._config = config
        self._slots = slots
        self._audit = ReceiveAudit(audit)
        self._index = index
        #: The plain listener, then the TLS one, each with its accepting thread.
        self._servers: list[tuple[ListeningServer, threading.Thread]] = []
        self._deliveries = OpenDeliveries()
        self._instances = InstanceStore(
            spool, index, self._deliveries, self._audit, vendor_inbox, mover
        )
        #: pynetdicom's own refusals since the last log line (``_on_rejected``).
        self._lock = threading.Lock()
        self._rejections = 0
        self._rejection_logged_at = -REFUSAL_LOG_INTERVAL_S
        self._allowed = CallerAllowList(
            CallerPin(
                caller.ae_title,
                host_networks(caller.host) if caller.host else None,
                pem_fingerprint(caller.certificate) if caller.certificate else None,
                parse_subject(caller.subject) if caller.subject else None,
            )
            for caller in config.access.callers
        )
        self._called_titles = {config.listener.ae_title, *config.access.called_ae_aliases}

    @property
    def address(self) -> tuple[str, int]:
        """Where the first listener (the plain one, unless there is only TLS) is bound."""
        if not self._servers:
            raise RuntimeError("the SCP is not started")
        return bound_address(self._servers[0][0])

    @property
    def tls_address(self) -> tuple[str, int] | None:
        """Where the TLS listener is bound; None without one."""
        return next((bound_address(srv) for srv, _ in self._servers if srv.tls_context), None)

    def start(self) -> None:
        """Bind and serve in background threads; OSError if a port cannot be bound,
        ``TlsError`` if the TLS files cannot be used."""
        listener = self._config.listener
        ae = ConnectionCountingAE(ae_title=listener.ae_title)
        ae.maximum_associations = listener.max_associations
        ae.maximum_pdu_size = listener.max_pdu
        ae.acse_timeout = listener.acse_timeout_s
        ae.dimse_timeout = listener.dimse_timeout_s
        ae.network_timeout = listener.network_timeout_s
        ae.add_supported_context(Verification)
        ports: list[tuple[int, ssl.SSLContext | None]] = []
        if listener.plain:
            ports.append((listener.port, None))
        if listener.tls_port is not None:
            tls = self._config.tls.server_context(listener.require_client_certificate)
            ports.append((listener.tls_port, tls))
        try:
            for port, tls in ports:
                self._serve(ae, port, tls)
        except BaseException:
            self.stop()
            raise

    def _serve(self, ae: AE, port: int, tls: ssl.SSLContext | None) -> None:
        listener = self._config.listener
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        server_class = ListeningServer if self._slots is None else ReusePortServer
        server = ae.make_server(
            (listener.host, port), evt_handlers=handlers, server_class=server_class
        )
        server.store_handler = self.store
        server.association_request_timeout = listener.association_request_timeout_s
        server.admission = Admission(listener.pending_connection_limit, listener.max_associations)
        server.tls_context = tls
        server.on_tls_failure = self._on_tls_failure
        name = "scp-accept-tls" if tls else "scp-accept"
        thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
        thread.start()
        self._servers.append((server, thread))
        host, bound_port = bound_address(server)
        LOGGER.info(
            "listening as %s on %s:%d%s",
            listener.ae_title,
            host,
            bound_port,
            " (TLS)" if tls else "",
        )

    def stop(self) -> None:
        """Stop accepting, abort open associations and close the sockets."""
        while self._servers:
            server, thread = self._servers.pop()
            server.shutdown()
            for assoc in list(server.active_associations):
                assoc.abort()
            server.server_close()
            thread.join(timeout=10)

    def _on_tls_failure(self, peer: tuple[str, int], reason: str) -> None:
        """A failed handshake (already logged by the association): a node authentication
        failure for the audit trail."""
        caller = Party(str(peer[0]), str(peer[0]))
        why = f"TLS handshake failed: {reason}"
        self._audit.refused(caller, self._config.listener.ae_title, why)

    # -- association control -------------------------------------------------------------

    def _caller_refusal(self, assoc: Association, calling_ae: str) -> str | None:
        """Why the caller may not associate (None: it may): its AE title, address and, over
        TLS, the certificate it presented, against ``access.callers``."""
        if self._config.access.accept_any:
            return None
        return self._allowed.refusal(
            calling_ae, str(assoc.requestor.address), peer_certificate(assoc)
        )

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling_ae = str(assoc.requestor.primitive.calling_ae_title).strip()
        called_ae = str(assoc.requestor.primitive.called_ae_title).strip()
        if self._config.access.check_called_ae and called_ae not in self._called_titles:
            why = f"called AE {called_ae!r} is not ours"
            _refuse(assoc, calling_ae, CALLED_AE_NOT_RECOGNISED, why)
        elif (why := self._caller_refusal(assoc, calling_ae)) is not None:
            _refuse(assoc, calling_ae, CALLING_AE_NOT_RECOGNISED, why)
        elif self._slots is not None and not self._slots.take(id(assoc)):
            why = f"the node serves its max_associations ({self._config.listener.max_associations})"
            LOGGER.warning("refused association from calling AE %r: %s", calling_ae, why)
            assoc.acse.send_reject(*LOCAL_LIMIT_EXCEEDED)
            assoc.kill()
        else:
            return
        self._audit.refused(_party(assoc, calling_ae), called_ae, why)

    def _on_rejected(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling_ae = str(assoc.requestor.ae_title).strip()
        called = str(assoc.acceptor.ae_title).strip()
        reason = assoc.acceptor.primitive.reason_str if assoc.acceptor.primitive else "?"
        # A flood of association requests beyond max_associations is refused one by one:
        # logged as a count at most every REFUSAL_LOG_INTERVAL_S (the audit trail has each).
        with self._lock:
            self._rejections += 1
            now = time.monotonic()
            due = now - self._rejection_logged_at >= REFUSAL_LOG_INTERVAL_S
            if due:
                count, self._rejections, self._rejection_logged_at = self._rejections, 0, now
        if due:
            LOGGER.warning(
                "refused %d association(s), the latest from calling AE %r at %s:%s "
                "(result %s, reason %s)",
                count,
                calling_ae,
                assoc.requestor.address,
                assoc.requestor.port,
                assoc.acceptor.primitive.result_str if assoc.acceptor.primitive else "?",
                reason,
            )
        self._audit.refused(_party(assoc, calling_ae), called, reason)

    def _on_accepted(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling = _party(assoc, str(assoc.requestor.ae_title).strip())
        self._audit.accepted(id(assoc), calling, str(assoc.acceptor.ae_title).strip())

    @staticmethod
    def _on_echo(event: evt.Event) -> int:
        return 0x0000

    def _on_released(self, event: evt.Event) -> None:
        if self._slots is not None:
            self._slots.give(id(event.assoc))
        self._audit.ended(id(event.assoc), released=True)
        finished = self._deliveries.forget(id(event.assoc))
        if finished:
            self._instances.mark_released(finished, time.time())

    def _on_closed(self, event: evt.Event) -> None:
        # pynetdicom sends the A-RELEASE-RP before it sets ``is_released``, so the peer's
        # close can be reported first: whichever event comes first claims the deliveries, and
        # a close after our release response (``release_sent``) is a release.
        assoc = event.assoc
        if self._slots is not None:
            self._slots.give(id(assoc))
        released = assoc.is_released or release_sent(assoc)
        self._audit.ended(id(assoc), released)
        finished = self._deliveries.forget(id(assoc))
        if finished and released:
            self._instances.mark_released(finished, time.time())

    # -- C-STORE ------------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> int | Dataset:
        """A C-STORE that came through pynetdicom (one ``direct_store`` left to it)."""
        request = event.request
        reply = self.store(
            event.assoc,
            StoreRequest(
                context_id=event.context.context_id,
                transfer_syntax=str(event.context.transfer_syntax),
                message_id=request.MessageID,
                sop_class_uid=str(request.AffectedSOPClassUID or ""),
                sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                dataset=request.DataSet.getvalue(),
            ),
        )
        if reply.error_comment is None:
            return reply.status
        status = Dataset()
        status.Status = reply.status
        status.ErrorComment = reply.error_comment
        return status

    def store(self, assoc: Association, request: StoreRequest) -> StoreReply:
        """Store one received instance durably and index it (``InstanceStore.store``); the
        handler both receive paths call. Never raises."""
        return self._instances.store(assoc, request)
