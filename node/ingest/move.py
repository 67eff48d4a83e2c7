"""Journaled instances filed into the spool and the index, a batch at a time.

With ``storage.journal`` a C-STORE's Success waits only for the journal; the journal mover
(``node.ingest.mover``) and start-up replay then hand batches of journaled instances to
``BatchFiler.file``. In order: an instance the node already holds byte for byte is skipped
(``resend``), the others are written into the spool layout (temp file and rename, no fsync of
their own) and indexed in one transaction. Nothing is flushed per batch: the journal keeps
every record until ``BatchFiler.sync`` (in ``fsync`` mode one ``syncfs`` per file system:
the files, their folders and the index's WAL together) has run, so the mover syncs only when
a segment can be retired, and a power loss before that is repaired by replay.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.durable import sync_filesystem
from node.ingest.header import InstanceHeader, parse_header
from node.ingest.index import Index, StoredInstance, StoreOutcome
from node.ingest.journal import Journal
from node.ingest.journal_format import Durability, JournalRecord, MetaValue, Ticket
from node.ingest.resend import already_held
from node.ingest.spool import Spool, instance_relpath

LOGGER = logging.getLogger(__name__)

Bytes = bytes | memoryview


@dataclass(frozen=True)
class Journaled:
    """A received instance as the journal holds it: what the mover needs to file it."""

    sequence: int
    header: InstanceHeader
    transfer_syntax: str
    file_meta: Bytes
    dataset: Bytes
    received_us: int  # microseconds since the epoch: the same float live and after replay
    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None

    @functools.cached_property
    def relpath(self) -> str:
        header = self.header
        return instance_relpath(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )

    @property
    def size(self) -> int:
        return len(self.file_meta) + len(self.dataset)

    @property
    def received_at(self) -> float:
        return self.received_us / 1e6

    def stored(self) -> StoredInstance:
        """Its index row's content (``StoredInstance``'s fields, in order)."""
        parties = (self.calling_ae, self.called_ae, self.peer_address)
        return StoredInstance(self.header, self.relpath, self.size, self.received_at, *parties)


def journal_meta(
    request_class: str,
    request_instance: str,
    transfer_syntax: str,
    file_meta_length: int,
    received_us: int,
    parties: tuple[str | None, str | None, str | None],
) -> dict[str, MetaValue]:
    """A record's metadata: what parsing the header again needs at replay (the request's
    UIDs stand in for missing ones), and who sent it when."""
    calling, called, peer = parties
    return {
        "ts": transfer_syntax,
        "class": request_class,
        "inst": request_instance,
        "meta": file_meta_length,
        "at": received_us,
        "calling": calling or "",
        "called": called or "",
        "peer": peer or "",
    }


@dataclass(frozen=True)
class Incoming:
    """A received instance on its way into the journal: what the store path hands over.

    ``request_uids``: the C-STORE's SOP Class and Instance UIDs, which replay needs to parse
    the header again; ``parties``: calling AE, called AE, peer address."""

    header: InstanceHeader
    transfer_syntax: str
    request_uids: tuple[str, str]
    file_meta: bytes
    dataset: Bytes
    parties: tuple[str | None, str | None, str | None]

    @property
    def size(self) -> int:
        return len(self.file_meta) + len(self.dataset)

    def append_to(self, journal: Journal) -> tuple[Ticket, Journaled]:
        """Append it to ``journal`` (not yet committed): the ticket and what the mover files."""
        received_us = time.time_ns() // 1000
        meta = journal_meta(
            *self.request_uids,
            self.transfer_syntax,
            len(self.file_meta),
            received_us,
            self.parties,
        )
        ticket = journal.append(meta, (self.file_meta, self.dataset))
        item = Journaled(
            ticket.sequence,
            self.header,
            self.transfer_syntax,
            self.file_meta,
            self.dataset,
            received_us,
            *self.parties,
        )
        return ticket, item


def from_record(record: JournalRecord) -> Journaled:
    """A record read back at start-up: its header parsed again (``HeaderError`` if it cannot
    be, which only a change of the parser between runs could cause)."""
    meta: Mapping[str, MetaValue] = record.meta
    cut = int(meta["meta"])
    dataset = record.data[cut:]
    ts, request_class, request_instance = str(meta["ts"]), str(meta["class"]), str(meta["inst"])
    header = parse_header(bytes(dataset), ts, request_class, request_instance)
    return Journaled(
        sequence=record.sequence,
        header=header,
        transfer_syntax=ts,
        file_meta=record.data[:cut],
        dataset=dataset,
        received_us=int(meta["at"]),
        calling_ae=str(meta["calling"]) or None,
        called_ae=str(meta["called"]) or None,
        peer_address=str(meta["peer"]) or None,
    )


@dataclass(frozen=True)
class FiledBatch:
    """What ``BatchFiler.file`` did: instances written and indexed, instances already held."""

    filed: int
    held: int


class BatchFiler:
    """Files batches of journaled instances into one spool and index."""

    def __init__(
        self, spool: Spool, index: Index, durability: Durability, database_path: Path
    ) -> None:
        self._spool = spool
        self._index = index
        self._sync = Durability(durability) is Durability.FSYNC
        #: one folder per file system to ``syncfs``: the spool's, and the index's if apart
        devices: dict[int, Path] = {}
        for folder in (spool.root, database_path.parent):
            devices.setdefault(os.stat(folder).st_dev, folder)
        self._sync_folders = tuple(devices.values())

    def file(self, batch: Sequence[Journaled], *, replay: bool = False) -> FiledBatch:
        """File ``batch`` in order (not yet durably: see ``sync``); raise if the index refused
        any of it (filing the batch again is safe: what did land is found held).

        ``replay``: records read back at start-up, some filed before the crash. One whose
        instance the index holds from a later C-STORE (a re-send that changed it) is skipped,
        so replay never puts an older version back or re-opens a study for it. A record
        received before its study was purged (``purged_studies``) is skipped too, live or
        replayed: the purge took it with the study, and a crash must not bring it back.
        """
        latest: dict[str, Journaled] = {}  # this batch's last copy of each instance
        to_index: list[StoredInstance] = []
        held = 0
        for item in batch:
            if self._held(item, latest.get(item.header.sop_instance_uid), replay=replay):
                held += 1
                continue
            self._spool.place(item.relpath, (item.file_meta, item.dataset))
            latest[item.header.sop_instance_uid] = item
            to_index.append(item.stored())
        outcomes = self._index.store_batch(to_index)
        failed = [outcome for outcome in outcomes if not isinstance(outcome, StoreOutcome)]
        for stored, outcome in zip(to_index, outcomes, strict=True):
            if isinstance(outcome, StoreOutcome) and outcome.replaced_path not in (
                None,
                stored.path,
            ):
                self._spool.remove(outcome.replaced_path, sync=False)
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(to_index)} index rows failed: {failed[0]}")
        return FiledBatch(len(to_index), held)

    def sync(self) -> None:
        """Make everything filed so far durable (``fsync`` mode): call before the journal
        retires it."""
        if self._sync:
            for folder in self._sync_folders:
                sync_filesystem(folder)

    def _held(self, item: Journaled, earlier: Journaled | None, *, replay: bool) -> bool:
        """Whether filing ``item`` would change nothing: the same bytes are already filed (in
        this batch or before it), or, at replay, a later C-STORE of it is."""
        if earlier is not None:
            return (earlier.relpath, earlier.transfer_syntax) == (
                item.relpath,
                item.transfer_syntax,
            ) and earlier.dataset == item.dataset
        header = item.header
        purged_at = self._index.purged_at(header.study_instance_uid)
        if purged_at is not None and purged_at >= item.received_at:
            return True  # received before its study was purged: it went with the study
        if replay:
            indexed_at = self._index.received_at(header.sop_instance_uid)
            if indexed_at is not None and indexed_at > item.received_at:
                return True
        found = already_held(self._index, self._spool, header, item.dataset, item.transfer_syntax)
        return found is not None
