"""Transports that deliver result files to one destination: C-STORE SCU, a folder, or
STOW-RS (``node.dispatch.stowrs``).

A transport gets a batch of outbox rows and answers, per row, whether the destination
acknowledged it. It never touches the database and never retries; the destination's sender
thread (``node.dispatch.dispatcher``) owns the rows, the backoff and the dead letter.

The DICOM transport opens one association per batch, proposes for every SOP class in the
batch the files' own transfer syntaxes plus the two uncompressed little-endian ones, sends a
file as stored when its syntax was accepted and otherwise transcodes it (decompressing if
needed) to an uncompressed syntax the peer accepted. A response that never comes (a down
peer, or pynetdicom's lost-response hazard) ends the association after ``timeout_s``; the
unacknowledged rows count one failed attempt and are sent again later. Associations come
from ``node.scu.associate``: Nagle off, and pynetdicom's lost-response race closed.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from node.destination_settings import (
    Destination,
    DicomDestination,
    FolderDestination,
    StowRsDestination,
)
from node.dispatch.outbox import OutboxRow
from node.dispatch.stowrs import StowRsTransport
from node.durable import fsync_dir
from node.outputs.encoding import decompress
from node.scu import MAX_CONTEXTS, AssociationFailed, Peer, associate
from node.tls import TlsSettings

__all__ = [
    "DicomTransport",
    "FolderTransport",
    "Transport",
    "transport_for",
]


UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# Warning statuses of the Storage service: stored, possibly with coercion.
STORE_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})


class Transport(Protocol):
    """Delivers a batch; returns row id -> None (acknowledged) or the reason it was not."""

    def deliver(self, rows: Sequence[OutboxRow]) -> Mapping[int, str | None]: ...


@dataclass(frozen=True)
class _Prepared:
    row: OutboxRow
    sop_class_uid: UID
    transfer_syntax_uid: UID


class DicomTransport:
    """C-STORE SCU to one peer: one association per batch, transcoding where refused."""

    def __init__(
        self,
        destination: DicomDestination,
        calling_ae_title: str,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.destination = destination
        self.calling_ae_title = calling_ae_title
        self.tls = tls

    def deliver(self, rows: Sequence[OutboxRow]) -> dict[int, str | None]:
        outcome: dict[int, str | None] = {}
        prepared: list[_Prepared] = []
        for row in rows:
            try:
                meta = read_file_meta_info(row.path)
                prepared.append(
                    _Prepared(row, UID(meta.MediaStorageSOPClassUID), UID(meta.TransferSyntaxUID))
                )
            except (OSError, AttributeError, ValueError) as exc:
                outcome[row.id] = f"cannot read result file {row.path}: {exc}"
        if not prepared:
            return outcome

        dest = self.destination
        peer = Peer(dest.ae_title, dest.host, dest.port)
        try:
            assoc = associate(
                peer, self._contexts(prepared), self.calling_ae_title, dest.timeout_s, tls=self.tls
            )
        except AssociationFailed as exc:
            outcome.update({item.row.id: str(exc) for item in prepared})
            return outcome
        try:
            for item in prepared:
                if not assoc.is_established:
                    outcome[item.row.id] = "association ended before this instance was sent"
                    continue
                outcome[item.row.id] = self._store(assoc, item)
        finally:
            if assoc.is_established:
                assoc.release()
        return outcome

    @staticmethod
    def _contexts(prepared: Sequence[_Prepared]) -> list[PresentationContext]:
        """For each SOP class: the files' own syntaxes, then the uncompressed ones to fall
        back to, each in its own context so the peer can accept them independently."""
        syntaxes: dict[UID, list[UID]] = {}
        for item in prepared:
            wanted = syntaxes.setdefault(item.sop_class_uid, [])
            for ts in (item.transfer_syntax_uid, *UNCOMPRESSED):
                if ts not in wanted:
                    wanted.append(ts)
        contexts = [build_context(sop, ts) for sop, wanted in syntaxes.items() for ts in wanted]
        if len(contexts) > MAX_CONTEXTS:
            raise ValueError(
                f"a batch needs {len(contexts)} presentation contexts; the limit is "
                f"{MAX_CONTEXTS}: send smaller batches"
            )
        return contexts

    def _store(self, assoc: Association, item: _Prepared) -> str | None:
        accepted = {
            cx.transfer_syntax[0]
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == item.sop_class_uid
        }
        if not accepted:
            return f"peer refused SOP class {item.sop_class_uid}"
        try:
            if item.transfer_syntax_uid in accepted:
                status = assoc.send_c_store(item.row.path)
            elif accepted & set(UNCOMPRESSED):
                status = assoc.send_c_store(_uncompressed(item.row.path))
            else:
                names = ", ".join(sorted(str(ts) for ts in accepted))
                return f"peer accepted {item.sop_class_uid} only as {names}; cannot transcode"
        except (OSError, ValueError, AttributeError, RuntimeError) as exc:
            return f"cannot send {item.row.path.name}: {exc}"
        if "Status" not in status:
            return "no C-STORE response within the timeout; association aborted"
        code = int(status.Status)
        if code == 0x0000 or code in STORE_WARNINGS:
            return None
        comment = status.get("ErrorComment", "")
        return f"C-STORE failed with status 0x{code:04X} {comment}".strip()


def _uncompressed(path: Path) -> Dataset:
    """The file's dataset decompressed if needed; pynetdicom re-encodes it to an accepted
    uncompressed syntax when it sends."""
    dataset = dcmread(path)
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        # The same instance in another encoding: it must keep its SOP Instance UID.
        decompress(dataset)
    return dataset


class FolderTransport:
    """Writes each result as ``<folder>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, atomically."""

    def __init__(self, destination: FolderDestination) -> None:
        self.folder = destination.path

    def deliver(self, rows: Sequence[OutboxRow]) -> dict[int, str | None]:
        outcome: dict[int, str | None] = {}
        for row in rows:
            try:
                self._copy(row)
                outcome[row.id] = None
            except (OSError, AttributeError) as exc:
                outcome[row.id] = f"cannot write to {self.folder}: {exc}"
        return outcome

    def _copy(self, row: OutboxRow) -> None:
        header = dcmread(row.path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        target_dir = self.folder / str(header.StudyInstanceUID)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / f"{row.sop_instance_uid}.dcm"
        temp = target_dir / f".{row.sop_instance_uid}.{os.getpid()}.tmp"
        data = row.path.read_bytes()
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
        fsync_dir(target_dir)


def transport_for(
    destination: Destination, calling_ae_title: str, tls: TlsSettings | None = None
) -> Transport:
    """The transport for a destination; a DICOM one with ``tls: true`` speaks DICOM TLS with
    the node's identity (``tls``)."""
    if isinstance(destination, FolderDestination):
        return FolderTransport(destination)
    if isinstance(destination, StowRsDestination):
        return StowRsTransport(destination)
    context = None
    if destination.tls:
        context = (tls or TlsSettings()).client_context(destination.verify_hostname)
    return DicomTransport(destination, calling_ae_title, context)
