"""The index: every stored instance's header attributes, written in one transaction each.

``Index.store`` records a ``StoredInstance`` (its ``header.InstanceHeader`` and where and when
it arrived) as study, series and instance rows in one ``BEGIN IMMEDIATE … COMMIT``. A study
that was stable and gets a new or replaced instance is re-opened as a new version for the
assembler. It also records the spool checkpoint as it commits (``node.ingest.checkpoint``),
which tells ``node.ingest.recovery`` where a crash can have left a file without its row.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.db import connect, transaction
from node.ingest.checkpoint import (
    MARGIN_S,
    RECORD_EVERY_S,
    SpoolWrites,
    read_checkpoint,
    write_checkpoint,
)
from node.ingest.header import InstanceHeader

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredInstance:
    """An instance whose file is in the spool: its header and how it arrived."""

    header: InstanceHeader
    path: str  # relative to the spool folder
    size_bytes: int
    received_at: float
    calling_ae: str | None = None
    called_ae: str | None = None
    peer_address: str | None = None


@dataclass(frozen=True)
class StoreOutcome:
    """What ``Index.store`` changed."""

    study_version: int
    replaced_path: str | None  # path of the instance it replaced, None if it was new
    reopened: bool  # the study was stable and is now collecting a new version


@dataclass
class _PendingStore:
    """One ``Index.store`` call waiting for a commit."""

    instance: StoredInstance
    outcome: StoreOutcome | None = None
    error: Exception | None = None
    done: bool = False


class Index:
    """Writes instance, series and study rows; one connection shared under a lock.

    SQLite serialises writers anyway, so one connection with a lock avoids busy-waiting
    between the association threads.

    New instances commit with ``synchronous=NORMAL``: the row is in the WAL when ``store``
    returns, so it survives a crash of the process, but the WAL is not flushed to the disk
    for it (a flush per instance was a third of a durable instance's disk waits). The spool
    file was fsynced before; after a power loss took the last rows with it, start-up indexes
    those files again (``recover_spool``), as it does for a crash between rename and commit.
    A batch that replaces a row commits with ``synchronous=FULL``: the spool cannot tell a
    stale row of a replaced file from a current one.

    With ``spool_writes`` (the node's spool's, ``Spool.track_writes``) a committed row closes
    its file's window, and a commit records the spool checkpoint every ``RECORD_EVERY_S``.
    """

    def __init__(self, database_path: Path, spool_writes: SpoolWrites | None = None) -> None:
        self._conn = connect(database_path)
        self._synchronous = "FULL"  # connect's
        self._synchronise(replacing=False)
        self._lock = threading.Lock()  # the connection, and the commit in progress
        self._queue_lock = threading.Lock()
        self._queue: list[_PendingStore] = []
        self._writes = spool_writes
        self._checkpoint_due = 0.0  # time.monotonic() of the next checkpoint to record

    def close(self, *, checkpoint: bool = True) -> bool:
        """Close the connection after a checkpoint, which flushes the WAL (rows committed
        without a flush included) and the database file. False when the checkpoint failed (a
        full disk) or another connection blocked it: the rows stay in the WAL, which the next
        start replays. A reader that wrote nothing (a receiver process) closes without one."""
        with self._lock:
            if not checkpoint:
                self._conn.close()
                return True
            try:
                busy = self._conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()[0]
            except sqlite3.OperationalError as exc:
                LOGGER.error("index checkpoint at stop failed (%s); the WAL is kept", exc)
                return False
            finally:
                self._conn.close()
            if busy:  # another connection (a CLI reader) held it back: not everything moved
                LOGGER.warning("index checkpoint at stop was blocked; the WAL is kept")
            return not busy

    def store(self, instance: StoredInstance) -> StoreOutcome:
        """Record a stored instance; a duplicate SOP Instance UID replaces the old row.

        Returns once the row is committed (see the class on how durably). Group commit:
        instances that arrive from other associations while a commit is in progress are
        committed together by the next caller to get the lock, so concurrent senders share
        one WAL fsync instead of queueing for one each.
        """
        pending = _PendingStore(instance)
        with self._queue_lock:
            self._queue.append(pending)
        with self._lock:
            if not pending.done:
                with self._queue_lock:
                    batch, self._queue = self._queue, []
                self._commit(batch)
        if pending.error is not None:
            raise pending.error  # the window stays open: see node.ingest.checkpoint
        assert pending.outcome is not None
        if self._writes is not None:
            self._writes.end((instance.path,))
        return pending.outcome

    def store_batch(self, instances: Sequence[StoredInstance]) -> list[StoreOutcome | Exception]:
        """Record several instances in one transaction (the journal mover's batch), in order;
        if it fails, each is committed alone, so each gets its own outcome or error."""
        batch = [_PendingStore(instance) for instance in instances]
        if batch:
            with self._lock:
                self._commit(batch)
        if self._writes is not None:
            self._writes.end(item.instance.path for item in batch if item.outcome is not None)
        return [item.outcome if item.outcome is not None else item.error for item in batch]

    def _commit(self, batch: list[_PendingStore]) -> None:
        """Commit ``batch`` in one transaction; if that fails, each alone (one bad row must
        not fail the others). Every item ends ``done``, with an outcome or an error."""
        try:
            try:
                uids = [item.instance.header.sop_instance_uid for item in batch]
                previous = self._previous_rows(uids)
                self._synchronise(replacing=bool(previous) or len(set(uids)) < len(uids))
                with transaction(self._conn) as conn:
                    outcomes = [self._store_one(conn, item.instance, previous) for item in batch]
                    self._record_checkpoint(conn)
            except Exception as exc:
                if len(batch) == 1:
                    batch[0].error = exc
                else:
                    for item in batch:
                        self._commit([item])
                return
            for item, outcome in zip(batch, outcomes, strict=True):
                item.outcome = outcome
        finally:
            for item in batch:
                if item.outcome is None and item.error is None:
                    item.error = RuntimeError("index commit interrupted")
                item.done = True

    def _record_checkpoint(self, conn: sqlite3.Connection) -> None:
        """Record the spool checkpoint in the open transaction, if one is due. This batch's
        windows are still open, so it lies before their files too."""
        if self._writes is None or time.monotonic() < self._checkpoint_due:
            return
        write_checkpoint(conn, self._writes.checkpoint())
        self._checkpoint_due = time.monotonic() + RECORD_EVERY_S

    def spool_checkpoint(self) -> float | None:
        """The recorded spool checkpoint (``node.ingest.checkpoint``), None if none is."""
        with self._lock:
            return read_checkpoint(self._conn)

    def spool_agrees(self) -> None:
        """Every spool file has its row now (``recover_spool`` is done): record a checkpoint
        at once."""
        at = self._writes.checkpoint() if self._writes is not None else time.time() - MARGIN_S
        with self._lock, transaction(self._conn) as conn:
            write_checkpoint(conn, at)

    def _previous_rows(self, uids: list[str]) -> dict[str, tuple[str, str]]:
        """(path, study UID) of the rows of these SOP Instance UIDs. Only this index writes
        instance rows, under ``_lock``, so they hold until the commit."""
        marks = ", ".join("?" * len(uids))
        rows = self._conn.execute(
            "SELECT sop_instance_uid, path, study_instance_uid FROM instances "
            f"WHERE sop_instance_uid IN ({marks})",
            uids,
        )
        return {uid: (path, study) for uid, path, study in rows}

    def _synchronise(self, *, replacing: bool) -> None:
        level = "FULL" if replacing else "NORMAL"
        if level != self._synchronous:
            self._conn.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    def _store_one(
        self,
        conn: sqlite3.Connection,
        instance: StoredInstance,
        previous_rows: dict[str, tuple[str, str]],
    ) -> StoreOutcome:
        """Write one instance's rows; ``previous_rows`` (the batch's replaced rows) gains
        this one, so a later instance of the batch with the same UID replaces it."""
        header = instance.header
        now = instance.received_at
        previous = previous_rows.get(header.sop_instance_uid)
        version, reopened = self._touch_study(conn, header, now, changed=previous is not None)
        if previous is not None and previous[1] != header.study_instance_uid:
            self._reopen_changed(conn, previous[1], now)
        self._upsert_series(conn, header)
        self._upsert_instance(conn, instance, version)
        previous_rows[header.sop_instance_uid] = (instance.path, header.study_instance_uid)
        replaced = previous[0] if previous is not None else None
        return StoreOutcome(study_version=version, replaced_path=replaced, reopened=reopened)

    def mark_released(self, study_uids: Iterable[str], at: float | None = None) -> None:
        """Record that the association delivering these studies was released.

        Only studies with nothing newer than the release are marked; the assembler may then
        make them stable after the shorter ``after_release_s``.
        """
        at = time.time() if at is None else at
        uids = list(study_uids)
        if not uids:
            return
        with self._lock, transaction(self._conn) as conn:
            conn.executemany(
                "UPDATE studies SET released_at = ? WHERE study_instance_uid = ? "
                "AND state = 'receiving' AND last_received_at <= ?",
                [(at, uid, at) for uid in uids],
            )

    def indexed_copy(self, sop_instance_uid: str) -> tuple[str, str] | None:
        """(spool path, transfer syntax) of the committed row of an instance, if any."""
        with self._lock:
            row = self._conn.execute(
                "SELECT path, transfer_syntax_uid FROM instances WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            ).fetchone()
        return (row[0], row[1]) if row is not None else None

    def received_at(self, sop_instance_uid: str) -> float | None:
        """When the indexed copy of an instance arrived (journal replay's ordering check)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT received_at FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
        return row[0] if row is not None else None

    def purged_at(self, study_instance_uid: str) -> float | None:
        """When retention purged this study (the journal files nothing received before)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT purged_at FROM purged_studies WHERE study_instance_uid = ?",
                (study_instance_uid,),
            ).fetchone()
        return row[0] if row is not None else None

    def is_result(self, sop_instance_uid: str) -> bool:
        """Whether the node itself made (or relayed) this instance: a ``results`` row."""
        with self._lock:
            return (
                self._conn.execute(
                    "SELECT 1 FROM results WHERE sop_instance_uid = ?", (sop_instance_uid,)
                ).fetchone()
                is not None
            )

    def indexed_paths(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT path FROM instances")}

    def paths_of(self, sop_instance_uids: Sequence[str]) -> set[str]:
        """The spool paths the rows of these SOP Instance UIDs name (a few hundred at once)."""
        if not sop_instance_uids:
            return set()
        with self._lock:
            return {path for path, _ in self._previous_rows(list(sop_instance_uids)).values()}

    @staticmethod
    def _touch_study(
        conn: sqlite3.Connection, header: InstanceHeader, now: float, *, changed: bool
    ) -> tuple[int, bool]:
        row = conn.execute(
            "SELECT state, version FROM studies WHERE study_instance_uid = ?",
            (header.study_instance_uid,),
        ).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO studies (study_instance_uid, patient_id, patient_name, study_date, "
                "study_description, accession_number, first_received_at, last_received_at, "
                "state, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'receiving', 1)",
                (
                    header.study_instance_uid,
                    header.patient_id,
                    header.patient_name,
                    header.study_date,
                    header.study_description,
                    header.accession_number,
                    now,
                    now,
                ),
            )
            return 1, False
        reopened = row["state"] == "stable"
        version = row["version"] + 1 if reopened else row["version"]
        conn.execute(
            "UPDATE studies SET state = 'receiving', version = ?, last_received_at = ?, "
            "released_at = NULL, changed_at = CASE WHEN ? THEN ? ELSE changed_at END, "
            "patient_id = COALESCE(patient_id, ?), patient_name = COALESCE(patient_name, ?), "
            "study_date = COALESCE(study_date, ?), "
            "study_description = COALESCE(study_description, ?), "
            "accession_number = COALESCE(accession_number, ?) "
            "WHERE study_instance_uid = ?",
            (
                version,
                now,
                changed,
                now,
                header.patient_id,
                header.patient_name,
                header.study_date,
                header.study_description,
                header.accession_number,
                header.study_instance_uid,
            ),
        )
        return version, reopened

    @staticmethod
    def _reopen_changed(conn: sqlite3.Connection, study_uid: str, now: float) -> None:
        """An instance moved to another study: its old study changed too."""
        conn.execute(
            "UPDATE studies SET version = version + (state = 'stable'), state = 'receiving', "
            "changed_at = ?, last_received_at = ?, released_at = NULL "
            "WHERE study_instance_uid = ?",
            (now, now, study_uid),
        )

    @staticmethod
    def _upsert_series(conn: sqlite3.Connection, header: InstanceHeader) -> None:
        conn.execute(
            "INSERT INTO series (series_instance_uid, study_instance_uid, modality, "
            "body_part_examined, series_description, protocol_name, series_number, "
            "frame_of_reference_uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (series_instance_uid) DO UPDATE SET "
            "study_instance_uid = excluded.study_instance_uid, "
            "modality = COALESCE(series.modality, excluded.modality), "
            "body_part_examined = COALESCE(series.body_part_examined, "
            "excluded.body_part_examined), "
            "series_description = COALESCE(series.series_description, "
            "excluded.series_description), "
            "protocol_name = COALESCE(series.protocol_name, excluded.protocol_name), "
            "series_number = COALESCE(series.series_number, excluded.series_number), "
            "frame_of_reference_uid = COALESCE(series.frame_of_reference_uid, "
            "excluded.frame_of_reference_uid)",
            (
                header.series_instance_uid,
                header.study_instance_uid,
                header.modality,
                header.body_part_examined,
                header.series_description,
                header.protocol_name,
                header.series_number,
                header.frame_of_reference_uid,
            ),
        )

    @staticmethod
    def _upsert_instance(conn: sqlite3.Connection, instance: StoredInstance, version: int) -> None:
        header = instance.header
        conn.execute(
            "INSERT OR REPLACE INTO instances (sop_instance_uid, series_instance_uid, "
            "study_instance_uid, sop_class_uid, transfer_syntax_uid, path, size_bytes, "
            "calling_ae, called_ae, peer_address, received_at, study_version, instance_number, "
            "image_type, image_orientation, image_position, slice_thickness, number_of_frames, "
            "rows, columns, attributes) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                header.sop_instance_uid,
                header.series_instance_uid,
                header.study_instance_uid,
                header.sop_class_uid,
                header.transfer_syntax_uid,
                instance.path,
                instance.size_bytes,
                instance.calling_ae,
                instance.called_ae,
                instance.peer_address,
                instance.received_at,
                version,
                header.instance_number,
                header.image_type,
                header.image_orientation,
                header.image_position,
                header.slice_thickness,
                header.number_of_frames,
                header.rows,
                header.columns,
                json.dumps(dict(header.attributes), ensure_ascii=False, default=str),
            ),
        )
