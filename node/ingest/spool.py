"""The spool: received instances as Part-10 files, written so that a crash leaves no half file.

A C-STORE Success promises the bytes are on disk. ``Spool.write`` therefore writes to a temp
file beside the spool, fsyncs it, renames it into place (atomic, so a duplicate replaces the
old file in one step) and fsyncs the folder that now names it. With ``storage.durability:
os`` both fsyncs are left out: the rename still makes the file whole or absent, and the data
is with the operating system (safe from a crash of the node, not from a power loss). The
dataset bytes are written exactly as the peer sent them; only the File Meta Information is
put in front.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node import __version__
from node.durable import fsync_dir
from node.ingest.checkpoint import SpoolWrites
from node.ingest.journal_format import Durability

#: Our Implementation Class UID (2.25 + a fixed UUID) and version name in every file's meta.
IMPLEMENTATION_CLASS_UID = "2.25.170283409371940934287398231640416298112"
IMPLEMENTATION_VERSION_NAME = f"AINODE_{__version__}"[:16]

TEMP_DIR_NAME = ".incoming"
#: How long a free-space reading is trusted: other programs write to the same disk.
FREE_SPACE_TRUSTED_S = 1.0
#: Temp file numbers, unique in the process (start-up clears what an earlier one left).
_TEMP_NAMES = itertools.count()
_UID_COMPONENT = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class OutOfSpace(Exception):
    """Free disk is below the configured watermark; nothing was written."""


def _element(group_element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of the file meta group."""
    if len(value) % 2:
        value += b"\x00"  # UI values pad with NUL, others are not used here
    tag = struct.pack("<HH", 0x0002, group_element)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<L", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str | None
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group for one received instance.

    Encoded by hand (a few hundred bytes) because building and encoding a pydicom
    ``FileMetaDataset`` for every instance is measurable on the receive path.
    """
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", sop_class_uid.encode("ascii", "replace")),
            _element(0x0003, b"UI", sop_instance_uid.encode("ascii", "replace")),
            _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii", "replace")),
            _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii", "replace")),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii", "replace")),
        )
    )
    if source_ae:
        ae = source_ae.strip().encode("ascii", "replace")
        body += _element(0x0016, b"AE", ae + (b" " if len(ae) % 2 else b""))
    group_length = struct.pack("<HH", 0x0002, 0x0000) + b"UL" + struct.pack("<HL", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


def uid_component(uid: str) -> str:
    """A safe folder/file name for a UID: the UID itself when it is well formed, else a hash.

    A malicious or broken UID (``..``, slashes, 200 characters) must never become a path.
    """
    if len(uid) <= 64 and _UID_COMPONENT.match(uid):
        return uid
    return "x" + hashlib.sha1(uid.encode("utf-8", "replace")).hexdigest()


def named_uid(relpath: str) -> str | None:
    """The SOP Instance UID a spool file's name spells (``instance_relpath``), or None for a
    hashed name (a UID that was not safe as a name): only its header says which it is."""
    name = relpath.rpartition("/")[2]
    if not name.endswith(".dcm") or name.startswith("x"):
        return None
    return name[: -len(".dcm")]


def instance_relpath(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """Where an instance lives, relative to the spool folder."""
    return (
        "/".join(
            (uid_component(study_uid), uid_component(series_uid), uid_component(sop_instance_uid))
        )
        + ".dcm"
    )


@dataclass
class _FolderSync:
    """Tickets for one folder: ``requested`` renames waiting, the last ticket ``synced``."""

    mutex: threading.Lock = field(default_factory=threading.Lock)
    requested: int = 0
    synced: int = 0
    users: int = 0


class _FolderSyncer:
    """fsync of a folder shared between threads that renamed into it at the same time.

    Four associations sending one series all rename into the same folder; one fsync started
    after a rename makes it durable, so a thread whose rename an fsync already in progress
    (or just finished) covers need not issue its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._folders: dict[Path, _FolderSync] = {}

    def sync(self, folder: Path) -> None:
        """Return once every rename into ``folder`` made before this call is durable."""
        with self._lock:
            entry = self._folders.setdefault(folder, _FolderSync())
            entry.users += 1
            entry.requested += 1
            ticket = entry.requested
        try:
            with entry.mutex:
                if entry.synced < ticket:
                    with self._lock:
                        covered = entry.requested  # every ticket up to here renamed already
                    fsync_dir(folder)
                    entry.synced = covered
        finally:
            with self._lock:
                entry.users -= 1
                if not entry.users:
                    del self._folders[folder]


class Spool:
    """The folder of received Part-10 files and its free-disk watermark; ``durability`` says
    whether a write waits for the disk (``fsync``) or only for the operating system (``os``)."""

    def __init__(
        self, root: Path, min_free_bytes: int, durability: Durability = Durability.FSYNC
    ) -> None:
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.durability = Durability(durability)
        self._sync = self.durability is Durability.FSYNC
        self._temp = self.root / TEMP_DIR_NAME
        self._temp.mkdir(parents=True, exist_ok=True)
        self._folder_syncer = _FolderSyncer()
        self._room_lock = threading.Lock()
        self._room_checked_at = -FREE_SPACE_TRUSTED_S
        self._unchecked_room = 0
        self._writes: SpoolWrites | None = None

    def track_writes(self) -> SpoolWrites:
        """From now on, note each file renamed in until its index row closes the window (the
        node's spool, for the checkpoint: ``node.ingest.checkpoint``); returns the notes."""
        if self._writes is None:
            self._writes = SpoolWrites()
        return self._writes

    def has_room(self, size: int, reserve: int = 0) -> bool:
        """True if writing ``size`` more bytes keeps free disk above the watermark, with
        ``reserve`` bytes to spare (what the journal may need for a new segment).

        ``statvfs`` is asked again once a second, or sooner once the bytes written since the
        last answer could have used half the room it reported above the watermark; asking
        for every instance cost a system call on every C-STORE.
        """
        with self._room_lock:
            now = time.monotonic()
            fresh = now < self._room_checked_at + FREE_SPACE_TRUSTED_S
            if fresh and size + reserve <= self._unchecked_room:
                self._unchecked_room -= size
                return True
            stats = os.statvfs(self.root)
            room = stats.f_bavail * stats.f_frsize - self.min_free_bytes - size - reserve
            self._room_checked_at = now
            self._unchecked_room = max(room // 2, 0)
            return room >= 0

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def write(self, relpath: str, chunks: Sequence[bytes | memoryview]) -> int:
        """Write ``chunks`` as the file ``relpath`` as durably as the spool's mode promises;
        return its size.

        Raises ``OutOfSpace`` (nothing written) below the watermark. On any error the temp
        file is removed, so the spool holds either the old file or the new one.
        """
        size = sum(len(chunk) for chunk in chunks)
        if not self.has_room(size):
            raise OutOfSpace(f"free disk below {self.min_free_bytes} bytes")
        target = self._place(relpath, chunks, sync=self._sync)
        if self._sync:
            self._folder_syncer.sync(target.parent)
        return size

    def place(self, relpath: str, chunks: Sequence[bytes | memoryview]) -> int:
        """Write ``chunks`` as ``relpath`` (temp file, rename) without any fsync or watermark
        check; return its size. For instances the journal already holds: the journal mover
        syncs a whole batch at once."""
        self._place(relpath, chunks, sync=False)
        return sum(len(chunk) for chunk in chunks)

    def _place(self, relpath: str, chunks: Sequence[bytes | memoryview], *, sync: bool) -> Path:
        target = self.root / relpath
        temp = self._temp / f"{os.getpid()}-{next(_TEMP_NAMES)}.part"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        writes = None
        try:
            try:
                _write_all(fd, chunks)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self._writes is not None:  # open until the index commits the row
                writes = self._writes
                writes.begin(relpath)
            try:
                os.replace(temp, target)
            except FileNotFoundError:  # the series' first instance: no folder yet
                self._ensure_dir(target.parent, sync=sync)
                os.replace(temp, target)
        except BaseException:
            if writes is not None:  # not renamed in (nothing after the rename raises)
                writes.end((relpath,))
            temp.unlink(missing_ok=True)
            raise
        return target

    def remove(self, relpath: str, *, sync: bool | None = None) -> None:
        """Delete a spooled file (a duplicate moved to another study) and, in ``fsync`` mode
        (or with ``sync=True``), sync its folder."""
        target = self.root / relpath
        try:
            target.unlink()
        except FileNotFoundError:
            return
        if self._sync if sync is None else sync:
            self._folder_syncer.sync(target.parent)

    def clear_temp(self) -> int:
        """Remove temp files a crash left behind; return how many. Run before serving."""
        count = 0
        for leftover in self._temp.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            count += 1
        if count:
            fsync_dir(self._temp)
        return count

    def files(self, changed_since: float | None = None) -> Iterator[str]:
        """Every spooled instance file, as a path relative to the spool folder; with
        ``changed_since``, only those in series folders modified at or after it (a rename or
        removal in a folder sets its mtime): a ``stat`` of each series folder, a listing of
        the recent ones."""
        for study in os.scandir(self.root):
            if not study.is_dir() or study.name.startswith("."):  # temp files, purge trash
                continue
            for series in os.scandir(study.path):
                if not series.is_dir():
                    continue
                if changed_since is not None and series.stat().st_mtime < changed_since:
                    continue
                for instance in os.scandir(series.path):
                    if instance.name.endswith(".dcm") and instance.is_file():
                        yield f"{study.name}/{series.name}/{instance.name}"

    def _ensure_dir(self, folder: Path, *, sync: bool) -> None:
        """Create ``folder`` (and parents); with ``sync`` make each new name durable in its
        parent."""
        missing: list[Path] = []
        current = folder
        while not current.is_dir():
            missing.append(current)
            current = current.parent
        for new_dir in reversed(missing):
            new_dir.mkdir(exist_ok=True)
            if sync:
                fsync_dir(new_dir.parent)


def _write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> None:
    pending = [memoryview(chunk) for chunk in chunks if len(chunk)]
    while pending:
        written = os.writev(fd, pending)
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending.pop(0)
        if pending and written:
            pending[0] = pending[0][written:]
