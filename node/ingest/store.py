"""What one received instance goes through before its Success: header, spool, index.

``InstanceStore.store`` is the store handler both receive paths call (``direct_store`` off the
PDUs, pynetdicom's own through ``scp``). It reads the header up to the pixel data
(``header``), checks the dataset's UIDs against the request, answers a re-send of what is
held without writing (``resend``), writes the file durably (``spool``) and commits its row
(``index``); only then is the answer Success. With ``storage.journal`` the last two steps are
the journal's instead (``mover``): the instance is appended to it and the Success waits for its
commit; the mover files it into the spool and index a batch later. A refusal is an exception
of a known type and its status is chosen by that type (``reply_for``), never by its text;
anything else is 0xC002, logged with its traceback. A refused instance leaves nothing behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Protocol

from pynetdicom.association import Association

from node.audit.receiving import ReceiveAudit
from node.ingest.c_store import StoreReply, StoreRequest, StoreStatus
from node.ingest.dataset_end import HeaderError, MissingUidError
from node.ingest.deliveries import OpenDeliveries
from node.ingest.header import InstanceHeader, parse_header
from node.ingest.index import Index, StoredInstance
from node.ingest.move import Incoming
from node.ingest.resend import already_held
from node.ingest.spool import OutOfSpace, Spool, encode_file_meta, instance_relpath
from node.vendors.inbox import VendorInbox

LOGGER = logging.getLogger(__name__)


class JournalEnd(Protocol):
    """Where a journaled instance goes before its Success: the journal mover in one process
    (``mover.JournalMover``), the pipe to the node in a receiver process
    (``receiver.ChannelMover``)."""

    @property
    def segment_size(self) -> int: ...

    def holds(self, sop_instance_uid: str) -> bool: ...

    def receive(self, incoming: Incoming) -> None: ...

    def mark_released(self, study_uids: Iterable[str], at: float) -> None: ...


class DatasetMismatch(Exception):
    """The dataset's SOP Instance or Class UID differs from the C-STORE request's."""


class CannotWrite(Exception):
    """The spool could not write the file (an ``OSError``: permissions, I/O, quota)."""

    def __init__(self, strerror: str | None) -> None:
        super().__init__(strerror)
        self.strerror = strerror


#: The refusals ``InstanceStore`` logs where it makes them; ``reply_for`` names their status.
_REFUSALS = (HeaderError, DatasetMismatch, OutOfSpace, CannotWrite)


def reply_for(exc: Exception) -> StoreReply:
    """The failure reply for an instance that ended in ``exc``, its status by the type."""
    match exc:
        case MissingUidError():
            return StoreReply.failure(StoreStatus.MISSING_UID, str(exc))
        case HeaderError():
            return StoreReply.failure(StoreStatus.CANNOT_UNDERSTAND, str(exc))
        case DatasetMismatch():
            comment = "dataset UIDs differ from the C-STORE request"
            return StoreReply.failure(StoreStatus.DATASET_MISMATCH, comment)
        case OutOfSpace():
            comment = "out of resources: disk nearly full"
            return StoreReply.failure(StoreStatus.OUT_OF_RESOURCES, comment)
        case CannotWrite():
            comment = f"cannot write: {exc.strerror}"
            return StoreReply.failure(StoreStatus.OUT_OF_RESOURCES, comment)
    comment = f"storage failed: {type(exc).__name__}"
    return StoreReply.failure(StoreStatus.STORAGE_FAILED, comment)


class InstanceStore:
    """Stores received instances durably and indexes them; one per SCP, shared by its
    associations (the spool and index take their own locks)."""

    def __init__(
        self,
        spool: Spool,
        index: Index,
        deliveries: OpenDeliveries,
        audit: ReceiveAudit,
        vendor_inbox: VendorInbox | None = None,
        mover: JournalEnd | None = None,
    ) -> None:
        self._spool = spool
        self._index = index
        self._mover = mover  # with storage.journal: the journal takes what the spool took
        self._deliveries = deliveries
        self._audit = audit
        # results from vendors' AI nodes go to their inbox, never into the studies
        self._vendor_inbox = vendor_inbox
        self._vendor_aes = vendor_inbox.result_aes if vendor_inbox is not None else frozenset()

    def store(self, assoc: Association, request: StoreRequest) -> StoreReply:
        """Store one received instance durably and index it; the reply says how it went.

        Never raises: the association goes on whatever happens to one instance.
        """
        calling_ae = str(assoc.requestor.ae_title).strip()
        try:
            reply = self._store(assoc, request, calling_ae)
        except _REFUSALS as exc:
            reply = reply_for(exc)
        except Exception as exc:
            LOGGER.exception(
                "C-STORE of %s from %s failed unexpectedly", request.sop_instance_uid, calling_ae
            )
            reply = reply_for(exc)
        if reply.status != StoreStatus.SUCCESS:
            self._audit.failed(id(assoc))
        return reply

    def _store(self, assoc: Association, request: StoreRequest, calling_ae: str) -> StoreReply:
        header = self._header(request, calling_ae)
        data = request.dataset
        vendor_result = calling_ae in self._vendor_aes
        held = None
        journaled = self._mover is not None and not vendor_result
        if not vendor_result and not (journaled and self._mover.holds(header.sop_instance_uid)):
            held = already_held(self._index, self._spool, header, data, request.transfer_syntax)
        if held is not None:
            self._audit.stored(
                id(assoc), header.study_instance_uid, header.patient_id, request.sop_class_uid
            )
            self._deliveries.remember(id(assoc), header.study_instance_uid)
            LOGGER.debug(
                "%s from %s is %s: the study is unchanged",
                request.sop_instance_uid,
                calling_ae,
                held,
            )
            return StoreReply(StoreStatus.SUCCESS)
        if journaled:
            self._journal(assoc, request, header, calling_ae)
            self._audit.stored(
                id(assoc), header.study_instance_uid, header.patient_id, request.sop_class_uid
            )
            self._deliveries.remember(id(assoc), header.study_instance_uid)
            return StoreReply(StoreStatus.SUCCESS)
        spool = self._vendor_inbox.spool if vendor_result and self._vendor_inbox else self._spool
        relpath, size = self._write(spool, header, request, calling_ae)
        self._audit.stored(
            id(assoc), header.study_instance_uid, header.patient_id, request.sop_class_uid
        )
        if vendor_result:
            self._keep_vendor_result(header, relpath, calling_ae)
            return StoreReply(StoreStatus.SUCCESS)
        self._index_instance(assoc, request, header, relpath, size, calling_ae)
        return StoreReply(StoreStatus.SUCCESS)

    @staticmethod
    def _header(request: StoreRequest, calling_ae: str) -> InstanceHeader:
        """The dataset's header, if it can be indexed and names what the request names;
        raises (and logs) ``HeaderError`` or ``DatasetMismatch``."""
        sop_class = request.sop_class_uid
        sop_instance = request.sop_instance_uid
        try:
            header = parse_header(request.dataset, request.transfer_syntax, sop_class, sop_instance)
        except HeaderError as exc:
            LOGGER.warning(
                "refused %s (SOP class %s) from %s: %s", sop_instance, sop_class, calling_ae, exc
            )
            raise
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
            raise DatasetMismatch(f"{header.sop_instance_uid}/{header.sop_class_uid}")
        if header.derived_uids:
            LOGGER.warning(
                "%s from %s lacks %s; indexed as %s in study %s",
                sop_instance,
                calling_ae,
                "/".join(header.derived_uids),
                header.sop_instance_uid,
                header.study_instance_uid,
            )
        return header

    @staticmethod
    def _write(
        spool: Spool, header: InstanceHeader, request: StoreRequest, calling_ae: str
    ) -> tuple[str, int]:
        """Write the instance durably into ``spool``: (relative path, size). Raises (and
        logs) ``OutOfSpace`` below the disk watermark, ``CannotWrite`` for any other failure."""
        relpath = instance_relpath(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        meta = encode_file_meta(
            header.sop_class_uid, header.sop_instance_uid, request.transfer_syntax, calling_ae
        )
        try:
            return relpath, spool.write(relpath, (meta, request.dataset))
        except OutOfSpace:
            LOGGER.error(
                "refused %s from %s: free disk below storage.min_free_mb",
                header.sop_instance_uid,
                calling_ae,
            )
            raise
        except OSError as exc:
            LOGGER.error(
                "cannot write %s from %s: %s", header.sop_instance_uid, calling_ae, exc.strerror
            )
            raise CannotWrite(exc.strerror) from exc

    def _journal(
        self, assoc: Association, request: StoreRequest, header: InstanceHeader, calling_ae: str
    ) -> None:
        """Append the instance to the journal and wait for its commit. Raises (and logs)
        ``OutOfSpace`` when the disk could not also take a new journal segment,
        ``CannotWrite`` when the journal failed or its mover stayed too far behind."""
        mover = self._mover
        assert mover is not None
        uid = header.sop_instance_uid
        meta = encode_file_meta(header.sop_class_uid, uid, request.transfer_syntax, calling_ae)
        if not self._spool.has_room(len(meta) + len(request.dataset), mover.segment_size):
            LOGGER.error(
                "refused %s from %s: free disk below storage.min_free_mb and a journal segment",
                uid,
                calling_ae,
            )
            raise OutOfSpace("free disk below the watermark and a journal segment")
        parties = (calling_ae, str(assoc.acceptor.ae_title).strip(), str(assoc.requestor.address))
        request_uids = (request.sop_class_uid, request.sop_instance_uid)
        try:
            mover.receive(
                Incoming(
                    header, request.transfer_syntax, request_uids, meta, request.dataset, parties
                )
            )
        except OSError as exc:
            LOGGER.error("cannot journal %s from %s: %s", uid, calling_ae, exc)
            raise CannotWrite(exc.strerror or str(exc)) from exc

    def mark_released(self, study_uids: Iterable[str], at: float) -> None:
        """An association that delivered these studies was released (see ``Index``); with the
        journal, once what it delivered is filed."""
        if self._mover is not None:
            self._mover.mark_released(study_uids, at)
        else:
            self._index.mark_released(study_uids, at)

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

    def _index_instance(
        self,
        assoc: Association,
        request: StoreRequest,
        header: InstanceHeader,
        relpath: str,
        size: int,
        calling_ae: str,
    ) -> None:
        """Commit the row of a file just written; a failed commit removes the file again."""
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
            request.sop_instance_uid,
            header.study_instance_uid,
            outcome.study_version,
            calling_ae,
            " replacing a duplicate" if outcome.replaced_path else "",
        )
