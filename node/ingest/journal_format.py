"""The ingest journal's on-disk format (segment names, record headers, the walk that finds a
segment's whole records) and the values its API hands out.

Kept apart from the writer (``node.ingest.journal``) so recovery, a reader in another process
and the bench share one definition of what a whole record is.

A segment ``seg-<16 digits>.wal`` is a preallocated file of records laid end to end:

    OPEN  (sequence = the first data sequence this segment will hold)
    DATA  sequence s, DATA s + 1, ...           (contiguous, no gaps)
    SEAL  (sequence = the next sequence; the segment is full or was rotated)

Every record is a 40-byte header then its payload (``meta`` JSON, then the dataset bytes):

    offset size field
    0      4    magic b"AIJR"
    4      2    format version (1)
    6      2    kind: 1 OPEN, 2 DATA, 3 SEAL
    8      4    meta length (bytes of UTF-8 JSON)
    12     8    data length
    20     8    segment number (the epoch: a reused file's old records carry an older one)
    28     8    sequence number
    36     4    CRC32 of the payload followed by bytes 0-35 of this header

A record is whole only if its header parses, names this segment, carries the sequence the
walk expects, fits in the file and its CRC matches; the first record that is not ends the
segment (a torn tail, zero-filled preallocated space, or a reused file's older records).
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

MAGIC = b"AIJR"
VERSION = 1
KIND_OPEN = 1
KIND_DATA = 2
KIND_SEAL = 3
_PREFIX = struct.Struct("<4sHHIQQQ")
_CRC = struct.Struct("<I")
HEADER_SIZE = _PREFIX.size + _CRC.size  # 40

SEGMENT_NAME = re.compile(r"seg-(\d{16})\.wal")
FREE_NAME = re.compile(r"free-(\d{16})\.wal")

Buffer = bytes | bytearray | memoryview
MetaValue = str | int


class Durability(StrEnum):
    """What ``commit`` waits for: ``fsync`` (on stable storage, survives power loss) or ``os``
    (in the page cache, survives a crash of the node but not of the machine)."""

    FSYNC = "fsync"
    OS = "os"


class JournalError(OSError):
    """The journal can no longer promise durability (an fdatasync failed: after that the
    page cache's state is unknown, so nothing more is acknowledged)."""


@dataclass(frozen=True)
class Ticket:
    """Where ``append`` put a record; ``commit`` takes it back."""

    sequence: int
    segment: int
    offset: int
    length: int


@dataclass(frozen=True)
class JournalStats:
    """Counters: ``syncs`` is every fdatasync of a segment, ``commit_syncs`` those a commit
    leader made (followers share them), ``segments_reused`` came from the free pool."""

    records: int
    bytes: int
    syncs: int
    commit_syncs: int
    segments_created: int
    segments_reused: int
    segments_retired: int


def segment_name(number: int) -> str:
    """A live segment's file name; its number is the epoch every record in it carries."""
    return f"seg-{number:016d}.wal"


def free_name(number: int) -> str:
    """A retired segment in the reuse pool keeps the last number it had, so numbering after a
    restart starts above every epoch still present in any file."""
    return f"free-{number:016d}.wal"


@dataclass(frozen=True)
class RecordHeader:
    """One parsed header; ``length`` is the whole record, header included."""

    kind: int
    meta_len: int
    data_len: int
    segment: int
    sequence: int
    crc: int
    offset: int

    @property
    def length(self) -> int:
        return HEADER_SIZE + self.meta_len + self.data_len


def encode_meta(meta: Mapping[str, MetaValue]) -> bytes:
    """The caller's metadata as compact JSON; only str and int values (bool is refused, as
    it would come back as a different type)."""
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TypeError(f"journal meta key {key!r} is not a str")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"journal meta {key!r}: {type(value).__name__} is not str or int")
    return json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()


def decode_meta(raw: Buffer) -> dict[str, MetaValue]:
    return json.loads(bytes(raw)) if len(raw) else {}


def payload_crc(meta: bytes, chunks: Sequence[Buffer]) -> int:
    """CRC of the payload alone, computed outside the journal's lock (zlib releases the GIL)."""
    crc = zlib.crc32(meta)
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return crc


def encode_header(
    kind: int, segment: int, sequence: int, meta_len: int, data_len: int, crc_of_payload: int
) -> bytes:
    """A header whose CRC chains the payload's CRC with the header fields."""
    prefix = _PREFIX.pack(MAGIC, VERSION, kind, meta_len, data_len, segment, sequence)
    return prefix + _CRC.pack(zlib.crc32(prefix, crc_of_payload))


def parse_header(raw: bytes, offset: int) -> RecordHeader | None:
    """The header at ``offset``, or None when it cannot be one (zeros, garbage, other version)."""
    if len(raw) < HEADER_SIZE:
        return None
    magic, version, kind, meta_len, data_len, segment, sequence = _PREFIX.unpack_from(raw)
    if magic != MAGIC or version != VERSION or kind not in (KIND_OPEN, KIND_DATA, KIND_SEAL):
        return None
    if kind != KIND_DATA and (meta_len or data_len):
        return None
    (crc,) = _CRC.unpack_from(raw, _PREFIX.size)
    return RecordHeader(kind, meta_len, data_len, segment, sequence, crc, offset)


def header_crc_ok(raw: bytes, header: RecordHeader, payload: Buffer) -> bool:
    return zlib.crc32(raw[: _PREFIX.size], zlib.crc32(payload)) == header.crc


def walk(
    fd: int,
    segment: int,
    *,
    offset: int = 0,
    sequence: int | None = None,
    end: int | None = None,
    verify: bool = True,
) -> Iterator[tuple[RecordHeader, bytearray | None]]:
    """Whole records of one segment from ``offset`` to its first record that is not whole.

    From offset 0 the OPEN record sets the first sequence; from a data record already known
    to be at ``offset``, ``sequence`` is the one it must carry.

    ``verify=False`` reads headers only (one small read per record, no CRC): the cheap walk
    the journal does at open to find sequences and offsets; ``read`` then checks every CRC.
    Yields OPEN and SEAL too; stops after a SEAL. ``end`` bounds the walk (the bytes the
    writer has finished); otherwise the file's size does.
    """
    limit = os.fstat(fd).st_size if end is None else end
    expect = sequence
    while offset + HEADER_SIZE <= limit:
        raw = os.pread(fd, HEADER_SIZE, offset)
        header = parse_header(raw, offset)
        if header is None or header.segment != segment or offset + header.length > limit:
            return
        if expect is None:  # the segment's first record
            if offset != 0 or header.kind != KIND_OPEN:
                return
            expect = header.sequence
        elif header.kind == KIND_OPEN or header.sequence != expect:
            return
        payload: bytearray | None = None
        if verify:
            payload = bytearray(header.meta_len + header.data_len)
            if payload and os.preadv(fd, [payload], offset + HEADER_SIZE) != len(payload):
                return
            if not header_crc_ok(raw, header, payload):
                return
        yield header, payload
        if header.kind == KIND_SEAL:
            return
        if header.kind == KIND_DATA:
            expect += 1
        offset += header.length


@dataclass(frozen=True)
class JournalRecord:
    """A whole record read back; ``data`` is a view into a buffer of its own."""

    sequence: int
    segment: int
    offset: int
    meta: Mapping[str, MetaValue]
    data: memoryview


def read_segment(
    path: Path, number: int, offset: int = 0, sequence: int | None = None, end: int | None = None
) -> Iterator[JournalRecord]:
    """The whole data records of one segment file, CRC-checked (see ``walk``); nothing when
    the file is gone (retired meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        for header, payload in walk(fd, number, offset=offset, sequence=sequence, end=end):
            if header.kind == KIND_DATA and payload is not None:
                view = memoryview(payload)
                meta = decode_meta(view[: header.meta_len])
                data = view[header.meta_len :]
                yield JournalRecord(header.sequence, number, header.offset, meta, data)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class HeaderScan:
    """What the cheap header-only walk of a segment found: its first sequence, where each
    data record starts, where the last whole-looking record ends."""

    size: int
    base: int
    offsets: array
    end: int


def scan_headers(path: Path, number: int) -> HeaderScan:
    """Walk a segment's headers without reading payloads (start-up reads only this much)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        base, offsets, end = 1, array("Q"), HEADER_SIZE
        for header, _ in walk(fd, number, verify=False):
            if header.kind == KIND_OPEN:
                base = header.sequence
            elif header.kind == KIND_DATA:
                offsets.append(header.offset)
            end = header.offset + header.length
        return HeaderScan(os.fstat(fd).st_size, base, offsets, end)
    finally:
        os.close(fd)


def write_all(fd: int, buffers: Sequence[Buffer], offset: int) -> int:
    """``pwritev`` every buffer at ``offset`` without joining them, across short writes and
    the IOV_MAX limit; returns the bytes written."""
    views = [view for view in (memoryview(b).cast("B") for b in buffers) if view.nbytes]
    iov_max = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
    first, written = 0, 0
    while first < len(views):
        count = os.pwritev(fd, views[first : first + iov_max], offset + written)
        if count <= 0:
            raise OSError(f"pwritev wrote nothing at offset {offset + written}")
        written += count
        while count and first < len(views):
            head = views[first]
            if count >= head.nbytes:
                count -= head.nbytes
                first += 1
            else:
                views[first] = head[count:]
                count = 0
    return written
