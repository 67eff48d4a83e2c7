"""The storage SCP: C-ECHO and C-STORE over pynetdicom, durable before it says Success.

Each C-STORE dataset is kept as the bytes the peer sent: its header is read up to the pixel
data, the file (File Meta + those bytes) is written durably to the spool, then the index row
is committed, and only then is Success returned. Anything that cannot be indexed is answered
with a failure status and an error comment, and leaves nothing behind.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from node.access import CallerAllowList, CallerPin, host_networks
from node.admission import REFUSAL_LOG_INTERVAL_S, Admission
from node.audit.events import Party
from node.audit.receiving import ReceiveAudit
from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.deliveries import OpenDeliveries
from node.direct_store import StoreReply, StoreRequest, StoreStatus
from node.index import (
    HeaderError,
    Index,
    InstanceHeader,
    MissingUidError,
    StoredInstance,
    parse_header,
)
from node.listener import (
    ConnectionCountingAE,
    ListeningServer,
    bound_address,
    peer_certificate,
)
from node.resend import already_held
from node.spool import OutOfSpace, Spool, encode_file_meta, instance_relpath
from node.tls import parse_subject, pem_fingerprint
from node.vendors.inbox import VendorInbox

LOGGER = logging.getLogger(__name__)

# Accept every storage SOP class, including private and ones newer than pynetdicom (the
# Label Map SEG, Philips 1.3.46.*, 2.25.*): we store bytes, we do not interpret them.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# pynetdicom's per-message logging handlers cost time on every PDU and log nothing we want.
_config.LOG_HANDLER_LEVEL = "none"
# pynetdicom logs every association at INFO; ours say what matters (refusals, failures).
logging.getLogger("pynetdicom").setLevel(logging.WARNING)


# A-ASSOCIATE-RJ reasons (rejected permanent, by the service user), PS3.8 9.3.4
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07


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
    ) -> None:
        self._config = config
        self._audit = ReceiveAudit(audit)
        self._spool = spool
        self._index = index
        # results from vendors' AI nodes go to their inbox, never into the studies
        self._vendor_inbox = vendor_inbox
        self._vendor_aes = vendor_inbox.result_aes if vendor_inbox is not None else frozenset()
        #: The plain listener, then the TLS one, each with its accepting thread.
        self._servers: list[tuple[ListeningServer, threading.Thread]] = []
        self._deliveries = OpenDeliveries()
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
        server = ae.make_server(
            (listener.host, port), evt_handlers=handlers, server_class=ListeningServer
        )
        server.store_handler = self.store
        server.association_request_timeout = listener.association_request_timeout_s
        server.admission = Admission(listener.pending_connection_limit, listener.max_associations)
        server.tls_context = tls
        server.on_tls_failure = self._on_tls_failure
        ae._servers.append(server)  # so AE/ server shutdown find it, as start_server does
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
        self._audit.ended(id(event.assoc), released=True)
        finished = self._deliveries.forget(id(event.assoc))
        if finished:
            self._index.mark_released(finished, time.time())

    def _on_closed(self, event: evt.Event) -> None:
        # pynetdicom sends the A-RELEASE-RP before it sets ``is_released``, so the peer's
        # close can be reported first: whichever event comes first claims the deliveries, and
        # a close after our release response (``_sent_release`` is set before it is sent) is
        # a release.
        assoc = event.assoc
        released = assoc.is_released or getattr(assoc, "_sent_release", False)
        self._audit.ended(id(assoc), released)
        finished = self._deliveries.forget(id(assoc))
        if finished and released:
            self._index.mark_released(finished, time.time())

    # -- C-STORE ------------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> int | Dataset:
        """A C-STORE that came through pynetdicom (one ``node.direct_store`` left to it)."""
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

    def _write(
        self, spool: Spool, header: InstanceHeader, data: Any, transfer_syntax: str, calling_ae: str
    ) -> tuple[str, int] | StoreReply:
        """Write the instance durably into ``spool``: (relative path, size), or the refusal."""
        relpath = instance_relpath(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        meta = encode_file_meta(
            header.sop_class_uid, header.sop_instance_uid, transfer_syntax, calling_ae
        )
        try:
            return relpath, spool.write(relpath, (meta, data))
        except OutOfSpace:
            LOGGER.error(
                "refused %s from %s: free disk below storage.min_free_mb",
                header.sop_instance_uid,
                calling_ae,
            )
            return StoreReply.failure(
                StoreStatus.OUT_OF_RESOURCES, "out of resources: disk nearly full"
            )
        except OSError as exc:
            LOGGER.error(
                "cannot write %s from %s: %s", header.sop_instance_uid, calling_ae, exc.strerror
            )
            return StoreReply.failure(StoreStatus.OUT_OF_RESOURCES, f"cannot write: {exc.strerror}")

    def _keep_vendor_result(self, header: InstanceHeader, relpath: str, calling_ae: str) -> None:
        """A vendor's result, written to its inbox: indexed there, never in the studies."""
        inbox = self._vendor_inbox
        assert inbox is not None
        replaced = inbox.add(
            sop_instance_uid=header.sop_instance_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_class_uid=header.sop_class_uid,
            path=relpath,
            calling_ae=calling_ae,
        )
        if replaced:
            inbox.spool.remove(replaced)
        LOGGER.info(
            "result %s for study %s from vendor %s kept in the vendor inbox",
            header.sop_instance_uid,
            header.study_instance_uid,
            calling_ae,
        )

    def store(self, assoc: Association, request: StoreRequest) -> StoreReply:
        """Store one received instance durably and index it; the reply says how it went.

        Never raises: the association goes on whatever happens to one instance.
        """
        calling_ae = str(assoc.requestor.ae_title).strip()
        try:
            reply = self._store(assoc, request, calling_ae)
        except Exception as exc:
            LOGGER.exception(
                "C-STORE of %s from %s failed unexpectedly", request.sop_instance_uid, calling_ae
            )
            reply = StoreReply.failure(
                StoreStatus.STORAGE_FAILED, f"storage failed: {type(exc).__name__}"
            )
        if reply.status != StoreStatus.SUCCESS:
            self._audit.failed(id(assoc))
        return reply

    def _store(self, assoc: Association, request: StoreRequest, calling_ae: str) -> StoreReply:
        data = request.dataset
        transfer_syntax = request.transfer_syntax
        sop_class = request.sop_class_uid
        sop_instance = request.sop_instance_uid

        try:
            header = parse_header(data, transfer_syntax, sop_class, sop_instance)
        except HeaderError as exc:
            LOGGER.warning(
                "refused %s (SOP class %s) from %s: %s", sop_instance, sop_class, calling_ae, exc
            )
            missing = isinstance(exc, MissingUidError)
            code = StoreStatus.MISSING_UID if missing else StoreStatus.CANNOT_UNDERSTAND
            return StoreReply.failure(code, str(exc))

        own_instance_uid = "SOPInstanceUID" not in header.derived_uids
        if (own_instance_uid and header.sop_instance_uid != sop_instance) or (
            header.sop_class_uid != sop_class
        ):
            LOGGER.warning(
                "refused %s from %s: dataset SOP Instance/Class UID %s/%s differ from request",
                sop_instance,
                calling_ae,
                header.sop_instance_uid,
                header.sop_class_uid,
            )
            return StoreReply.failure(
                StoreStatus.DATASET_MISMATCH, "dataset UIDs differ from the C-STORE request"
            )

        if header.derived_uids:
            LOGGER.warning(
                "%s from %s lacks %s; indexed as %s in study %s",
                sop_instance,
                calling_ae,
                "/".join(header.derived_uids),
                header.sop_instance_uid,
                header.study_instance_uid,
            )
        vendor_result = calling_ae in self._vendor_aes
        held = None
        if not vendor_result:
            held = already_held(self._index, self._spool, header, data, transfer_syntax)
        if held is not None:
            self._audit.stored(id(assoc), header.study_instance_uid, header.patient_id, sop_class)
            self._deliveries.remember(id(assoc), header.study_instance_uid)
            LOGGER.debug("%s from %s is %s: the study is unchanged", sop_instance, calling_ae, held)
            return StoreReply(StoreStatus.SUCCESS)
        spool = self._vendor_inbox.spool if vendor_result and self._vendor_inbox else self._spool
        written = self._write(spool, header, data, transfer_syntax, calling_ae)
        if isinstance(written, StoreReply):
            return written
        relpath, size = written
        self._audit.stored(id(assoc), header.study_instance_uid, header.patient_id, sop_class)
        if vendor_result:
            self._keep_vendor_result(header, relpath, calling_ae)
            return StoreReply(StoreStatus.SUCCESS)

        stored = StoredInstance(
            header=header,
            path=relpath,
            size_bytes=size,
            received_at=time.time(),
            calling_ae=calling_ae,
            called_ae=str(assoc.acceptor.ae_title).strip(),
            peer_address=str(assoc.requestor.address),
        )
        try:
            outcome = self._index.store(stored)
        except Exception:
            self._spool.remove(relpath)
            raise
        if outcome.replaced_path and outcome.replaced_path != relpath:
            self._spool.remove(outcome.replaced_path)
        self._deliveries.remember(id(assoc), header.study_instance_uid)
        LOGGER.debug(
            "stored %s of study %s (version %d) from %s%s",
            sop_instance,
            header.study_instance_uid,
            outcome.study_version,
            calling_ae,
            " replacing a duplicate" if outcome.replaced_path else "",
        )
        return StoreReply(StoreStatus.SUCCESS)
