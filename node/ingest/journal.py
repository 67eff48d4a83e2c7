"""A write-ahead journal for received datasets: one fdatasync per group of Successes.

Writing a file per instance costs a create, an fsync, a rename and a folder fsync before every
Success. Here a received dataset is appended to a preallocated segment with one ``pwritev``,
and ``commit`` waits for one ``fdatasync`` that covers it, shared by every association that
commits at the same moment (group commit). A mover stage later copies the records into the
spool and the index and calls ``retire_through``; only segments not yet retired are read at
start-up, so recovery is bounded by the journal, never by the spool.

The format (headers, CRC, what ends a segment) is in ``node.ingest.journal_format``.
"""

from __future__ import annotations

import fcntl
import os
import threading
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node.durable import fsync_dir
from node.ingest.journal_format import (
    FREE_NAME,
    HEADER_SIZE,
    KIND_DATA,
    KIND_OPEN,
    KIND_SEAL,
    SEGMENT_NAME,
    Buffer,
    Durability,
    JournalError,
    JournalRecord,
    JournalStats,
    MetaValue,
    Ticket,
    encode_header,
    encode_meta,
    free_name,
    payload_crc,
    read_segment,
    scan_headers,
    segment_name,
    write_all,
)

__all__ = ["Durability", "Journal", "JournalError", "JournalRecord", "JournalStats", "Ticket"]

DEFAULT_SEGMENT_SIZE = 256 * 1024 * 1024
DEFAULT_POOL_SIZE = 4


@dataclass(slots=True, eq=False)
class _Segment:
    """A segment not yet retired: mutable bookkeeping, touched only under the journal's lock.
    ``offsets[i]`` is where data record ``base + i`` starts; ``recovered``: found at open,
    never written again."""

    number: int
    path: Path
    size: int
    base: int
    recovered: bool
    offsets: array = field(default_factory=lambda: array("Q"))
    end: int = HEADER_SIZE
    fd: int = -1

    @property
    def last(self) -> int:
        """The last data sequence it holds (``base - 1`` when it holds none)."""
        return self.base + len(self.offsets) - 1


class Journal:
    """Append, group-commit, read back and retire records in one folder of segments.

    Thread-safe. One writer per folder: receiver processes each get a folder of their own.
    """

    def __init__(
        self, folder: Path, durability: Durability, segment_size: int, pool_size: int
    ) -> None:
        if segment_size < 4 * HEADER_SIZE or segment_size % 4096:
            raise ValueError(f"segment size {segment_size} is not a positive multiple of 4096")
        self.folder = folder
        self.durability = Durability(durability)
        self.segment_size = segment_size
        self.pool_size = pool_size
        self._cond = threading.Condition(threading.Lock())
        self._segments: list[_Segment] = []
        self._pool: list[tuple[int, Path]] = []
        self._active: _Segment | None = None
        self._next_number = 1
        self._next_sequence = 1
        self._written = 0  # every record up to this sequence has been pwritten
        self._synced = 0  # ... and up to this one fdatasynced
        self._syncing = False
        self._failed: OSError | None = None
        self._counts = dict.fromkeys(JournalStats.__dataclass_fields__, 0)
        self._lock_fd = -1

    @classmethod
    def open(
        cls,
        folder: Path | str,
        *,
        durability: Durability | str = Durability.FSYNC,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> Journal:
        """Open (or create) the journal in ``folder``: walk the headers of the segments not yet
        retired (nothing else is read) and continue numbering above every file present.
        The first append opens a new segment; ``read()`` gives back what was there."""
        journal = cls(Path(folder), Durability(durability), segment_size, pool_size)
        journal.folder.mkdir(parents=True, exist_ok=True)
        journal._lock_fd = os.open(journal.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:  # one writer per folder, released when the process dies (a restarted receiver)
            fcntl.flock(journal._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            journal._recover()
        except BaseException as exc:
            os.close(journal._lock_fd)
            if isinstance(exc, BlockingIOError):
                raise JournalError(f"journal {journal.folder} is open elsewhere") from exc
            raise
        return journal

    def _recover(self) -> None:
        numbers: list[int] = []
        pool: list[tuple[int, Path]] = []
        for entry in os.scandir(self.folder):
            if match := SEGMENT_NAME.fullmatch(entry.name):
                numbers.append(int(match[1]))
            elif match := FREE_NAME.fullmatch(entry.name):
                pool.append((int(match[1]), Path(entry.path)))
        highest = max([*numbers, *(number for number, _ in pool)], default=0)
        self._next_number = highest + 1
        for number in sorted(numbers):
            path = self.folder / segment_name(number)
            found = scan_headers(path, number)
            segment = _Segment(number, path, found.size, found.base, True)
            segment.offsets, segment.end = found.offsets, found.end
            self._segments.append(segment)
            self._next_sequence = max(self._next_sequence, segment.last + 1)
        self._written = self._synced = self._next_sequence - 1
        pool.sort()
        for number, path in pool:  # other sizes (a changed setting) or beyond the pool go
            if len(self._pool) < self.pool_size and path.stat().st_size == self.segment_size:
                self._pool.append((number, path))
            else:
                path.unlink()
        if len(pool) != len(self._pool):
            fsync_dir(self.folder)

    # -- writing -------------------------------------------------------------------------

    def append(self, meta: Mapping[str, MetaValue], chunks: Sequence[Buffer]) -> Ticket:
        """Write one record (``meta`` as JSON, then the chunks, uncopied) with one pwritev.

        Returns at once; the record is durable only once ``commit`` returns."""
        meta_bytes = encode_meta(meta)
        data_len = sum(memoryview(chunk).nbytes for chunk in chunks)
        crc = payload_crc(meta_bytes, chunks)
        length = HEADER_SIZE + len(meta_bytes) + data_len
        with self._cond:
            self._check()
            segment = self._active
            if segment is None or segment.end + length + HEADER_SIZE > segment.size:
                segment = self._roll(length)
            sequence = self._next_sequence
            header = encode_header(
                KIND_DATA, segment.number, sequence, len(meta_bytes), data_len, crc
            )
            try:
                write_all(segment.fd, [header, meta_bytes, *chunks], segment.end)
            except OSError as exc:  # what reached the page cache is unknown: stop here
                raise self._fail(exc, "write") from exc
            ticket = Ticket(sequence, segment.number, segment.end, length)
            segment.offsets.append(segment.end)
            segment.end += length
            self._written, self._next_sequence = sequence, sequence + 1
            self._counts["records"] += 1
            self._counts["bytes"] += length
        return ticket

    def commit(self, ticket: Ticket) -> None:
        """Return once ``ticket``'s record is as durable as the journal's mode promises.

        ``fsync``: the first caller to find no sync in flight becomes the leader and
        fdatasyncs everything written so far; callers whose record that covered return
        without a sync of their own; the rest wait for the next leader."""
        if self.durability is Durability.OS:
            return
        with self._cond:
            while True:
                if self._synced >= ticket.sequence:
                    return
                self._check()
                if not self._syncing:
                    break
                self._cond.wait()
            assert self._active is not None  # a written, unsynced record is in the active one
            self._syncing = True
            target = self._written
            fd = os.dup(self._active.fd)  # the active segment may roll while this syncs
        error: OSError | None = None
        try:
            os.fdatasync(fd)
        except OSError as exc:
            error = exc
        finally:
            os.close(fd)
        with self._cond:
            self._syncing = False
            if error is None:
                self._synced = max(self._synced, target)
                self._counts["syncs"] += 1
                self._counts["commit_syncs"] += 1
                self._cond.notify_all()
            else:
                raise self._fail(error, "fdatasync") from error

    def rotate(self) -> None:
        """Seal the active segment (if it holds records) so that ``retire_through`` can retire
        it; the next append opens a new one. For a clean stop, or an idle journal."""
        with self._cond:
            self._check()
            if self._active is not None and len(self._active.offsets):
                self._seal()

    def close(self) -> None:
        """Seal the active segment (made durable in ``fsync`` mode) and release it."""
        with self._cond:
            try:
                if self._active is not None and self._failed is None:
                    self._seal()
            finally:
                if self._active is not None:
                    os.close(self._active.fd)
                    self._active.fd = -1
                    self._active = None
                if self._lock_fd >= 0:
                    os.close(self._lock_fd)
                    self._lock_fd = -1
                self._failed = self._failed or JournalError("journal closed")
                self._cond.notify_all()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, exc: OSError, what: str) -> JournalError:
        """Stop the journal (under the lock): waiters wake to the error, nothing more is
        appended or acknowledged."""
        self._failed = exc
        self._cond.notify_all()
        return JournalError(f"journal {what} failed: {exc}")

    def _check(self) -> None:
        if self._failed is not None:
            raise JournalError(str(self._failed)) from self._failed

    def _seal(self) -> None:
        """Close the active segment with a SEAL record; in ``fsync`` mode make it durable, so
        a commit leader only ever has the active segment to sync."""
        segment = self._active
        assert segment is not None
        seal = encode_header(KIND_SEAL, segment.number, self._next_sequence, 0, 0, 0)
        write_all(segment.fd, [seal], segment.end)
        segment.end += HEADER_SIZE
        if self.durability is Durability.FSYNC:
            self._sync_locked(segment.fd)
            self._synced = max(self._synced, segment.last)
        os.close(segment.fd)
        segment.fd = -1
        self._active = None

    def _sync_locked(self, fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise self._fail(exc, "fdatasync") from exc
        self._counts["syncs"] += 1

    def _roll(self, record_length: int) -> _Segment:
        """Seal the active segment and open the next: a pooled file renamed to the next number
        when one fits, else a new preallocated one (larger than usual for an oversized
        record). Its name is made durable before any record in it can be acknowledged."""
        if self._active is not None:
            self._seal()
        number = self._next_number
        size = max(self.segment_size, -(-(2 * HEADER_SIZE + record_length) // 4096) * 4096)
        path = self.folder / segment_name(number)
        if size == self.segment_size and self._pool:
            _, free_path = self._pool.pop(0)
            os.rename(free_path, path)
            fd = os.open(path, os.O_RDWR)
            self._counts["segments_reused"] += 1
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:
                os.close(fd)
                path.unlink()
                raise
            self._counts["segments_created"] += 1
        self._next_number = number + 1
        segment = _Segment(number, path, size, self._next_sequence, False)
        segment.fd = fd
        # OPEN over offset 0: the old OPEN (an older epoch) no longer starts this file.
        write_all(fd, [encode_header(KIND_OPEN, number, self._next_sequence, 0, 0, 0)], 0)
        fsync_dir(self.folder)
        self._segments.append(segment)
        self._active = segment
        return segment

    # -- reading back and retiring -------------------------------------------------------

    def read(self, after: int = 0) -> Iterator[JournalRecord]:
        """Every whole record with a sequence above ``after`` in the segments not yet retired,
        in sequence order, each CRC-checked. In a segment found at open, the first record that
        is not whole ends it (torn tail) and what follows is never returned. Records still
        being appended after the call began may or may not be included."""
        with self._cond:
            plan = [
                (seg, *self._start(seg, after), seg.end if seg is self._active else None)
                for seg in self._segments
                if seg.last > after
            ]
        for segment, offset, sequence, end in plan:
            last = after
            for record in read_segment(segment.path, segment.number, offset, sequence, end):
                if record.sequence > after:
                    last = record.sequence
                    yield record
            if segment.recovered and last < segment.last:
                self._drop_torn(segment, max(last, segment.base - 1))

    @staticmethod
    def _start(segment: _Segment, after: int) -> tuple[int, int | None]:
        """Where to begin reading for sequences above ``after``: that record, or the OPEN."""
        index = after + 1 - segment.base
        return (segment.offsets[index], after + 1) if index > 0 else (0, None)

    def _drop_torn(self, segment: _Segment, last: int) -> None:
        """A recovered segment's walk found a record whose header was whole but whose payload
        was not: forget it and what followed, so retirement waits for nothing that is lost."""
        with self._cond:
            del segment.offsets[last + 1 - segment.base :]

    def retirable(self, sequence: int) -> bool:
        """Whether ``retire_through(sequence)`` would retire a segment now: a caller that
        must make its copies durable first (one flush) need do so only then."""
        with self._cond:
            oldest = self._segments[0] if self._segments else None
            return oldest is not None and oldest is not self._active and oldest.last <= sequence

    def retire_through(self, sequence: int) -> int:
        """Retire every segment (not the active one) whose records are all at or below
        ``sequence``: renamed into the free pool (or removed beyond it), then the folder is
        fsynced, so recovery never reads them again. Returns how many were retired.

        Call it only for records already safe in the spool and the index."""
        retired = 0
        with self._cond:
            while self._segments:
                segment = self._segments[0]
                if segment is self._active or segment.last > sequence:
                    break
                self._segments.pop(0)
                if len(self._pool) < self.pool_size and segment.size == self.segment_size:
                    free_path = self.folder / free_name(segment.number)
                    os.rename(segment.path, free_path)
                    self._pool.append((segment.number, free_path))
                else:
                    segment.path.unlink()
                retired += 1
            self._counts["segments_retired"] += retired
            if retired and not self._segments and self._active is None:
                self._keep_high_water()
        if retired:
            fsync_dir(self.folder)
        return retired

    def _keep_high_water(self) -> None:
        """Everything is retired: open the next segment now, so that its OPEN record keeps the
        sequence (and the folder a segment) across a restart."""
        segment = self._roll(0)
        if self.durability is Durability.FSYNC:
            self._sync_locked(segment.fd)

    # -- observing -----------------------------------------------------------------------

    def stats(self) -> JournalStats:
        with self._cond:
            return JournalStats(**self._counts)

    @property
    def last_sequence(self) -> int:
        """The sequence of the last record appended (or recovered)."""
        with self._cond:
            return self._next_sequence - 1

    def segments(self) -> list[int]:
        """Numbers of the segments not yet retired, oldest first."""
        with self._cond:
            return [segment.number for segment in self._segments]
