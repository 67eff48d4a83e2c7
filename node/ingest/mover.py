"""The journal's two ends in the node: receiving into it, and the mover that empties it.

``JournalMover.receive`` (on an association's thread) appends a received instance to the
journal, hands it to the mover and returns once the journal's commit does: that is all a
Success waits for with ``storage.journal``. The mover's own thread takes what was received in
sequence order, files it in batches (``move.BatchFiler``: spool and index) and, once a whole
segment is filed, makes the spool and index durable (one sync) and retires the segment; on
an idle journal it rotates, so a crash replays seconds of records, not a segment's worth.
``replay`` files whatever the journal still holds at start-up, before serving.

Until the mover has filed an instance the journal is its only record: the index, and so the
assembler, routing and ``/status``, see it a batch later. The mover's backlog is bounded
(``backlog_bytes``): beyond it ``receive`` waits, so a mover that falls behind slows the
senders instead of growing the journal without end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from node.ingest.dataset_end import HeaderError
from node.ingest.index import Index
from node.ingest.journal import Journal, JournalError
from node.ingest.move import BatchFiler, Incoming, Journaled, from_record

LOGGER = logging.getLogger(__name__)

#: Received bytes the mover may be behind before ``receive`` waits for it.
BACKLOG_BYTES = 256 * 1024 * 1024
#: How long ``receive`` waits for the mover before the C-STORE is refused (0xA700).
BACKLOG_WAIT_S = 60.0
#: A batch is at most this many instances or bytes (one index transaction, one sync).
BATCH_INSTANCES = 512
BATCH_BYTES = 64 * 1024 * 1024
#: A batch smaller than this waits up to ``GATHER_S`` after its first instance arrived for
#: more: one index transaction for many instances, less back and forth with the receivers.
GATHER_INSTANCES = 64
GATHER_S = 0.02
#: Seconds without a new record after which the mover seals and retires the journal.
IDLE_ROTATE_S = 1.0
#: Seconds between tries of a batch the index refused.
RETRY_S = 1.0


@dataclass(frozen=True)
class Replayed:
    """What start-up replay found in the journal."""

    records: int
    filed: int
    held: int
    unreadable: int


def replay(journal: Journal, filer: BatchFiler) -> Replayed:
    """File every record of the journal's unretired segments, in order, then retire them all.

    Records already filed before the crash are found held (same instance, same bytes) and cost
    a comparison; nothing else of the spool is read.
    """
    records = filed = held = unreadable = 0
    batch: list[Journaled] = []
    size = 0
    for record in journal.read():
        records += 1
        try:
            item = from_record(record)
        except (HeaderError, KeyError, ValueError) as exc:
            unreadable += 1
            LOGGER.error("journal record %d cannot be filed: %s", record.sequence, exc)
            continue
        batch.append(item)
        size += item.size
        if len(batch) >= BATCH_INSTANCES or size >= BATCH_BYTES:
            done = filer.file(batch, replay=True)
            filed, held, batch, size = filed + done.filed, held + done.held, [], 0
    if batch:
        done = filer.file(batch, replay=True)
        filed, held = filed + done.filed, held + done.held
    journal.rotate()
    filer.sync()
    journal.retire_through(journal.last_sequence)
    return Replayed(records, filed, held, unreadable)


class Unfiled:
    """Instances received and not yet filed, as the Success path needs them: by UID (a
    re-send of one must be journaled again: the spool does not show it yet) and in bytes
    (bounded: beyond the limit a sender waits). Not locked itself: its owner calls it under
    its own condition, which ``wait_for_room`` waits on and the owner notifies on removal."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self._uids: Counter[str] = Counter()

    def add(self, sop_instance_uid: str, size: int) -> None:
        self._uids[sop_instance_uid] += 1
        self.bytes += size

    def remove(self, sop_instance_uid: str, size: int) -> None:
        self._uids[sop_instance_uid] -= 1
        if not self._uids[sop_instance_uid]:
            del self._uids[sop_instance_uid]
        self.bytes -= size

    def holds(self, sop_instance_uid: str) -> bool:
        return sop_instance_uid in self._uids

    def wait_for_room(
        self, cond: threading.Condition, size: int, stopped: Callable[[], bool], behind: str
    ) -> None:
        """Return once ``size`` more bytes fit (call holding ``cond``); raise ``JournalError``
        ("``behind`` is N MiB behind") after ``BACKLOG_WAIT_S`` or once ``stopped()``."""
        deadline = time.monotonic() + BACKLOG_WAIT_S
        while self.bytes and self.bytes + size > self.limit_bytes:
            left = deadline - time.monotonic()
            if stopped() or left <= 0:
                raise JournalError(f"{behind} is {self.bytes // (1024 * 1024)} MiB behind")
            cond.wait(min(left, 1.0))


def next_batch(pending: Mapping[int, Journaled], filed: int) -> list[Journaled]:
    """The received records that follow sequence ``filed`` without a gap, at most a batch
    (``BATCH_INSTANCES``, ``BATCH_BYTES``): what may be filed next, in order."""
    batch: list[Journaled] = []
    size = 0
    sequence = filed + 1
    while sequence in pending and len(batch) < BATCH_INSTANCES and size < BATCH_BYTES:
        item = pending[sequence]
        batch.append(item)
        size += item.size
        sequence += 1
    return batch


def seal_idle(journal: Journal) -> bool:
    """Seal a journal nothing was appended to for ``IDLE_ROTATE_S``, so that its filed records
    can retire; False (logged) if it could not be."""
    try:
        journal.rotate()
    except OSError as exc:
        LOGGER.error("cannot seal the idle journal: %s", exc)
        return False
    return True


class JournalMover:
    """Receives instances into the journal and files them into the spool and index."""

    name = "journal-mover"

    def __init__(
        self, journal: Journal, filer: BatchFiler, index: Index, backlog_bytes: int = BACKLOG_BYTES
    ) -> None:
        self._journal = journal
        self._filer = filer
        self._index = index
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[int, Journaled] = {}
        self._unfiled = Unfiled(backlog_bytes)
        self._filed = journal.last_sequence  # every record up to here is filed
        self._releases: list[tuple[int, list[str], float]] = []
        self._last_received = time.monotonic()
        self._unsealed = False  # records appended since the journal was last rotated
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def segment_size(self) -> int:
        """Disk a new journal segment takes: the watermark keeps this much in reserve."""
        return self._journal.segment_size

    # -- the receiving end (association threads) -------------------------------------------

    def receive(self, incoming: Incoming) -> None:
        """Journal one instance and return once it is committed (the Success may go).
        Raises ``JournalError`` (an ``OSError``) when the journal failed or the mover is too
        far behind for too long."""
        with self._cond:
            self._unfiled.wait_for_room(
                self._cond, incoming.size, lambda: self._stopping, "the journal mover"
            )
        ticket, item = incoming.append_to(self._journal)
        with self._cond:
            self._pending[ticket.sequence] = item
            self._unfiled.add(item.header.sop_instance_uid, item.size)
            self._last_received = time.monotonic()
            self._unsealed = True
            self._cond.notify_all()
        self._journal.commit(ticket)

    def pending(self) -> int:
        """Instances received and not yet filed (the index does not show them yet)."""
        with self._cond:
            return len(self._pending)

    def holds(self, sop_instance_uid: str) -> bool:
        """Whether an instance of this UID is received and not yet filed: a re-send of it must
        be journaled too (the spool does not show the pending copy yet)."""
        with self._cond:
            return self._unfiled.holds(sop_instance_uid)

    def mark_released(self, study_uids: Iterable[str], at: float) -> None:
        """Record an association's release once everything received before it is filed (a
        row filed after the mark would clear it)."""
        studies = list(study_uids)
        with self._cond:
            if self._pending:
                self._releases.append((max(self._pending), studies, at))
                return
        self._index.mark_released(studies, at)

    # -- the mover (its own thread) --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Clean stop: file everything received, seal and retire the journal, close it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self._journal.rotate()
            self._retire()
        finally:
            self._journal.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                while not self._stopping:
                    if batch:
                        age = time.time() - batch[0].received_at
                        if len(batch) >= GATHER_INSTANCES or age >= GATHER_S:
                            break
                        self._cond.wait(min(GATHER_S, GATHER_S - age))  # a clock set back
                    elif self._idle():
                        break
                    else:
                        self._cond.wait(IDLE_ROTATE_S / 2)
                    batch = self._next_batch()
                stopping = self._stopping
            if batch:
                if not self._file(batch) and stopping:
                    return  # left in the journal for the next start
            elif stopping:
                return
            else:
                self._rotate_idle()
            self._apply_releases()

    def _next_batch(self) -> list[Journaled]:
        """Received instances that follow the last filed one without a gap (under the lock)."""
        return next_batch(self._pending, self._filed)

    def _idle(self) -> bool:
        quiet = time.monotonic() - self._last_received >= IDLE_ROTATE_S
        return quiet and self._unsealed and not self._pending

    def _file(self, batch: list[Journaled]) -> bool:
        """File one batch and retire what it completes; False (logged) if it failed."""
        try:
            self._filer.file(batch)
        except Exception:
            LOGGER.exception(
                "filing journal records %d-%d failed; trying again in %.0f s",
                batch[0].sequence,
                batch[-1].sequence,
                RETRY_S,
            )
            with self._cond:
                self._cond.wait(RETRY_S)
            return False
        with self._cond:
            for item in batch:
                del self._pending[item.sequence]
                self._unfiled.remove(item.header.sop_instance_uid, item.size)
            self._filed = batch[-1].sequence
            self._cond.notify_all()
        self._retire()
        return True

    def _rotate_idle(self) -> None:
        with self._cond:
            self._unsealed = False
        if seal_idle(self._journal):
            self._retire()

    def _retire(self) -> None:
        """Retire the segments everything filed completes, once it is durable (one sync for
        the whole segment, not one per batch)."""
        if not self._journal.retirable(self._filed):
            return
        try:
            self._filer.sync()
            self._journal.retire_through(self._filed)
        except OSError as exc:
            LOGGER.error("journal segments not retired (%s): a restart replays them", exc)

    def _apply_releases(self) -> None:
        with self._cond:
            due = [entry for entry in self._releases if entry[0] <= self._filed]
            self._releases = [entry for entry in self._releases if entry[0] > self._filed]
        for _, studies, at in due:
            self._index.mark_released(studies, at)
