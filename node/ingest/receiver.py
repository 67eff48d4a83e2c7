"""One receiver process (``listener.processes`` > 1): an SCP on the shared port, its own journal.

The node's process starts N of these (``node.ingest.receivers``). Each binds the listening
port(s) with SO_REUSEPORT, so the kernel spreads new connections over them and four
associations are four interpreters, not four threads under one. A received instance goes
through the same ``InstanceStore`` as in a single process; its journal end here is a
``ChannelMover``: the instance is appended to this process's own journal folder
(``journal/receiver-<n>``, no lock shared with any other process), sent to the node over the
pipe, and its Success waits for the journal's commit. The node files it into the spool and
the index, so SQLite keeps one writer. ``max_associations`` counts across the processes
(``association_slots``); the access list, the disk watermark and the audit trail (one file,
appended with ``O_APPEND``) work per process as they do in one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, MutableSequence
from multiprocessing.connection import Connection
from pathlib import Path

from pydicom import config as pydicom_config

from node.audit.trail import AuditTrail
from node.config import NodeConfig
from node.ingest import receiver_channel as channel
from node.ingest.association_slots import AssociationSlots
from node.ingest.index import Index
from node.ingest.journal import Journal, JournalError
from node.ingest.move import Incoming
from node.ingest.mover import BACKLOG_BYTES, IDLE_ROTATE_S, Unfiled, seal_idle
from node.ingest.receiver_channel import Mark, MarkKind
from node.ingest.scp import StorageSCP
from node.ingest.spool import Spool
from node.vendors.inbox import VendorInbox, vendor_result_aes

LOGGER = logging.getLogger(__name__)

#: How long a stopping receiver waits for the node to file and sync what it sent.
STOP_WAIT_S = 30.0


def receiver_journal_dir(data_dir: Path, number: int) -> Path:
    """Receiver ``number``'s journal folder."""
    return data_dir / "journal" / f"receiver-{number}"


class ChannelMover:
    """The journal end of ``InstanceStore`` in a receiver process: journal, send, commit."""

    def __init__(
        self, journal: Journal, conn: Connection, backlog_bytes: int = BACKLOG_BYTES
    ) -> None:
        self._journal = journal
        self._conn = conn
        self._send_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._sent: dict[int, tuple[str, int]] = {}  # sequence: (SOP Instance UID, size)
        self._unfiled = Unfiled(backlog_bytes)
        self._filed = journal.last_sequence  # the node replayed the journal before we started
        self._sync_asked = self._filed
        self._last_received = time.monotonic()
        self._unsealed = False
        self._closed = threading.Event()  # the node said stop, or the pipe broke
        self._synced_stop = threading.Event()

    @property
    def segment_size(self) -> int:
        return self._journal.segment_size

    @property
    def stop_requested(self) -> threading.Event:
        """Set when the node asks this receiver to stop, or can no longer be reached."""
        return self._closed

    def send(self, message: object) -> None:
        with self._send_lock:
            self._conn.send(message)

    # -- association threads ---------------------------------------------------------------

    def receive(self, incoming: Incoming) -> None:
        """Journal one instance, hand it to the node and return once the journal committed
        it. Raises ``JournalError`` when the journal failed, the node is gone, or it stayed
        too far behind for too long."""
        with self._cond:
            self._unfiled.wait_for_room(
                self._cond, incoming.size, self._closed.is_set, "the node's process"
            )
        ticket, item = incoming.append_to(self._journal)
        with self._cond:
            self._sent[ticket.sequence] = (item.header.sop_instance_uid, item.size)
            self._unfiled.add(item.header.sop_instance_uid, item.size)
            self._last_received = time.monotonic()
            self._unsealed = True
        try:
            length = len(item.dataset)  # the record ends with the dataset: read it there
            at = ticket.offset + ticket.length - length
            bare = dataclasses.replace(item, dataset=b"")
            self.send(channel.Received(bare, ticket.segment, at, length))
        except OSError as exc:
            self._closed.set()
            raise JournalError(f"the node's process is gone: {exc}") from exc
        self._journal.commit(ticket)

    def holds(self, sop_instance_uid: str) -> bool:
        """Whether this process sent an instance of this UID the node has not filed yet."""
        with self._cond:
            return self._unfiled.holds(sop_instance_uid)

    def mark_released(self, study_uids: Iterable[str], at: float) -> None:
        try:
            self.send(channel.Released(tuple(study_uids), at, self._journal.last_sequence))
        except OSError:
            self._closed.set()  # the node replays the journal; the release mark is lost

    # -- the node's answers (their own thread) ---------------------------------------------

    def listen(self) -> None:
        """Take the node's answers until it says stop or the pipe breaks; rotate and retire
        the journal when it is idle."""
        while not self._synced_stop.is_set():
            try:
                if not self._conn.poll(IDLE_ROTATE_S / 2):
                    self._rotate_if_idle()
                    continue
                message = self._conn.recv()
            except (EOFError, OSError):
                LOGGER.error("the node's process is gone: this receiver stops")
                self._closed.set()
                self._synced_stop.set()  # nothing more will come: do not wait at stop
                with self._cond:
                    self._cond.notify_all()
                return
            self._answer(message)

    def _answer(self, message: object) -> None:
        match message:
            case Mark(MarkKind.FILED, through):
                self._filed_through(through)
            case Mark(MarkKind.SYNCED, through):
                try:
                    self._journal.retire_through(through)
                except OSError as exc:  # kept: the node's next replay finds them held
                    LOGGER.error("journal segments not retired (%s): a restart replays them", exc)
                if self._closed.is_set() and through >= self._journal.last_sequence:
                    self._synced_stop.set()
            case channel.Stop():
                self._closed.set()
            case _:
                LOGGER.error("unexpected message from the node: %r", message)

    def _filed_through(self, through: int) -> None:
        with self._cond:
            for sequence in [s for s in self._sent if s <= through]:
                self._unfiled.remove(*self._sent.pop(sequence))
            self._filed = max(self._filed, through)
            self._cond.notify_all()
        self._ask_sync()

    def _ask_sync(self) -> None:
        """Ask the node to make what completes a segment durable, once per segment."""
        filed = self._filed
        if filed > self._sync_asked and self._journal.retirable(filed):
            self._sync_asked = filed
            self.send(Mark(MarkKind.SYNC_WANTED, filed))

    def _rotate_if_idle(self) -> None:
        with self._cond:
            quiet = time.monotonic() - self._last_received >= IDLE_ROTATE_S
            if not (quiet and self._unsealed and not self._sent):
                return
            self._unsealed = False
        if seal_idle(self._journal):
            self._ask_sync()

    # -- stopping --------------------------------------------------------------------------

    def finish(self) -> None:
        """After the SCP stopped: tell the node the last record, wait (bounded) until it has
        filed and synced everything, retire the journal and close it. Whatever is not
        retired by then, the node's next replay files."""
        self._closed.set()
        try:
            self._journal.rotate()
            self.send(Mark(MarkKind.STOPPED, self._journal.last_sequence))
        except OSError as exc:
            LOGGER.error("cannot hand the journal over at stop (%s): it is replayed", exc)
        self._synced_stop.wait(STOP_WAIT_S)
        self._journal.close()


def serve(
    config: NodeConfig,
    number: int,
    conn: Connection,
    counts: MutableSequence[int],
    lock_path: Path,
    log_level: int = logging.INFO,
) -> None:
    """A receiver process's life: the target of the node's ``multiprocessing`` start."""
    logging.basicConfig(
        level=log_level,
        format=f"%(asctime)s %(levelname)s receiver-{number} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node's process decides on Ctrl-C
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    storage = config.storage
    try:
        journal = Journal.open(
            receiver_journal_dir(storage.data_dir, number),
            durability=storage.durability,
            segment_size=storage.journal_segment_mb << 20,
        )
    except OSError as exc:
        conn.send(channel.Failed(f"journal: {exc}"))
        return
    mover = ChannelMover(journal, conn)
    signal.signal(signal.SIGTERM, lambda *_: mover.stop_requested.set())
    spool = Spool(storage.spool_dir, storage.min_free_mb * 1024 * 1024, storage.durability)
    index = Index(storage.database_path)
    result_aes = vendor_result_aes(config)
    inbox = VendorInbox(config, result_aes) if result_aes else None
    audit = AuditTrail.from_settings(config.audit, storage.data_dir, config.listener.ae_title)
    slots = AssociationSlots(counts, number - 1, lock_path, config.listener.max_associations)
    scp = StorageSCP(config, spool, index, inbox, audit, mover, slots=slots)
    try:
        scp.start()
    except Exception as exc:  # a port, a TLS file
        conn.send(channel.Failed(f"{type(exc).__name__}: {exc}"))
        journal.close()
        return
    listener = threading.Thread(target=mover.listen, name="receiver-answers", daemon=True)
    listener.start()
    try:
        mover.send(channel.Listening(os.getpid(), journal.last_sequence))
    except OSError:
        mover.stop_requested.set()  # the node's process is gone already
    mover.stop_requested.wait()
    scp.stop()
    mover.finish()
    if inbox is not None:
        inbox.close()
    index.close(checkpoint=False)
    audit.close()
    slots.close()
