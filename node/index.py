"""The index: header attributes of every stored instance, written in one transaction each.

``parse_header`` reads a received dataset only up to its pixel data and returns an
``InstanceHeader``; ``Index.store`` records a ``StoredInstance`` (header + where and when it
arrived) as study, series and instance rows in one ``BEGIN IMMEDIATE … COMMIT``. A study that
was stable and gets a new or replaced instance is re-opened as a new version for the assembler.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from pydicom import dcmread
from pydicom.datadict import (
    dictionary_has_tag,
    dictionary_VR,
    keyword_for_tag,
    tag_for_keyword,
)
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_sequence_item
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID

from node.dataset_end import HeaderError, MissingUidError, check_dataset_end
from node.db import connect, transaction
from node.spool import Spool

LOGGER = logging.getLogger(__name__)

#: Elements larger than this (raw bytes) stay out of the ``attributes`` JSON column.
MAX_ATTRIBUTE_BYTES = 1024
#: Value representations that are binary, nested or unknown: never in ``attributes``.
_SKIPPED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW"})
#: Code sequences routing reads (body part from AnatomicRegionSequence), kept as code maps.
_CODE_SEQUENCES = ("AnatomicRegionSequence",)
_CODE_KEYWORDS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
#: Largest inflated header we accept from a deflated transfer syntax (zip-bomb guard).
MAX_INFLATED_BYTES = 1 << 30
_PIXEL_DATA_GROUP = 0x7FE0


@dataclass(frozen=True)
class InstanceHeader:
    """What the index keeps of one instance's header (read without touching pixels)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    protocol_name: str | None = None
    series_number: int | None = None
    frame_of_reference_uid: str | None = None
    instance_number: int | None = None
    image_type: str | None = None
    image_orientation: str | None = None
    image_position: str | None = None
    slice_thickness: float | None = None
    number_of_frames: int | None = None
    rows: int | None = None
    columns: int | None = None
    #: Keywords of the UIDs the dataset lacked and the index derived (``derived_uid``).
    derived_uids: tuple[str, ...] = ()
    #: Top-level keyword -> value for small, non-binary, non-sequence public elements.
    attributes: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


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


def derived_uid(keyword: str, sop_instance_uid: str) -> str:
    """A stable 2.25 UID standing in for a missing Study or Series Instance UID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{keyword}:{sop_instance_uid}').int}"


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 >= _PIXEL_DATA_GROUP


def _transfer_syntax_encoding(transfer_syntax_uid: str) -> tuple[bool, bool, bool]:
    """(implicit VR, little endian, deflated); unknown syntaxes are explicit little endian."""
    uid = UID(transfer_syntax_uid)
    try:
        return uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated
    except ValueError:
        return False, True, False


def parse_header(
    dataset: bytes,
    transfer_syntax_uid: str,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> InstanceHeader:
    """Read a C-STORE dataset (no file meta) up to its pixel data.

    ``sop_class_uid``/``sop_instance_uid`` (from the C-STORE request) stand in when the
    dataset itself lacks them, as some media-directory objects do. Raises ``HeaderError`` for
    anything that cannot be indexed (``MissingUidError`` when no SOP Class or Instance UID is
    known), including pydicom's own failures on hostile input (a
    RecursionError from a deeply nested sequence, say).
    """
    implicit, little, deflated = _transfer_syntax_encoding(transfer_syntax_uid)
    try:
        whole = True
        if deflated:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            dataset = inflater.decompress(dataset, MAX_INFLATED_BYTES)
            whole = not inflater.unconsumed_tail  # beyond the cap: the end cannot be seen
        reader = _TruncationCheckingReader(dataset)
        ds = read_dataset(reader, implicit, little, stop_when=_stop_at_pixels)
        if reader.short_read:
            raise HeaderError("dataset is truncated: it ends inside a data element")
        _check_structure(ds)
        if whole:
            check_dataset_end(dataset, reader.tell(), implicit, little)
    except HeaderError:
        raise
    except (Exception, RecursionError) as exc:
        raise HeaderError(f"unreadable dataset: {type(exc).__name__}: {exc}"[:200]) from exc
    return header_from_dataset(ds, transfer_syntax_uid, sop_class_uid, sop_instance_uid)


class _TruncationCheckingReader(BytesIO):
    """Notes a read that got some but not all of its bytes: a dataset cut short.

    pydicom ends a dataset quietly when fewer than 8 bytes of an element header are left.
    """

    short_read = False

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and 0 < len(data) < size:
            self.short_read = True
        return data


def _check_structure(ds: Dataset) -> None:
    """Refuse what only looks like a dataset: nothing in it, or a value cut short.

    pydicom reads junk (a gzip file, say) as an empty or truncated dataset without raising.
    """
    if not len(ds):
        raise HeaderError("no data elements before the pixel data: not a DICOM dataset")
    for tag in ds.keys():  # noqa: SIM118 - raw elements, not converted values
        raw = ds.get_item(tag)
        value = getattr(raw, "value", None)
        length = getattr(raw, "length", 0)
        if isinstance(value, bytes) and length != 0xFFFFFFFF and len(value) < length:
            raise HeaderError(f"element {tag} is truncated: {len(value)} of {length} bytes")


def parse_file_header(path: Path) -> InstanceHeader:
    """``parse_header`` for a Part-10 file already in the spool (crash recovery)."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        transfer_syntax = str(meta.TransferSyntaxUID)
        sop_class = str(meta.get("MediaStorageSOPClassUID") or "") or None
        sop_instance = str(meta.get("MediaStorageSOPInstanceUID") or "") or None
    except (Exception, RecursionError) as exc:
        raise HeaderError(f"unreadable file: {type(exc).__name__}: {exc}"[:200]) from exc
    return header_from_dataset(ds, transfer_syntax, sop_class, sop_instance)


def header_from_dataset(
    ds: Dataset,
    transfer_syntax_uid: str,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> InstanceHeader:
    """Pull the indexed attributes out of a (header-only) dataset."""
    try:
        return _header_from_dataset(ds, transfer_syntax_uid, sop_class_uid, sop_instance_uid)
    except HeaderError:
        raise
    except (Exception, RecursionError) as exc:
        raise HeaderError(f"unreadable header: {type(exc).__name__}: {exc}"[:200]) from exc


def _header_from_dataset(
    ds: Dataset,
    transfer_syntax_uid: str,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
) -> InstanceHeader:
    elements = _ConvertedElements(ds)
    uids: dict[str, str] = {}
    derived: list[str] = []
    sop_class = _text(elements, "SOPClassUID") or sop_class_uid
    sop_instance = _text(elements, "SOPInstanceUID")
    if not sop_instance and sop_instance_uid:
        # Media-directory objects and broken senders omit it, and the request's UID may be
        # one borrowed from inside the dataset: never let such a file take a real
        # instance's place, file it under a UID derived from the request's.
        sop_instance = derived_uid("SOPInstanceUID", sop_instance_uid)
        derived.append("SOPInstanceUID")
    for keyword, value in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_instance)):
        if not value:
            raise MissingUidError(f"dataset has no {keyword}")
        uids[keyword] = value
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(elements, keyword)
        if not value:
            # The file is kept as sent; the index files it under a UID derived from the
            # instance's own, so a re-send lands in the same place.
            value = derived_uid(keyword, uids["SOPInstanceUID"])
            derived.append(keyword)
        uids[keyword] = value
    orientation = _text(elements, "ImageOrientationPatient")
    if orientation is None:  # enhanced multi-frame: in the functional groups
        orientation = _functional_group_text(
            ds, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
    thickness = _float(elements, "SliceThickness")
    if thickness is None:
        thickness = _functional_group_float(ds, "PixelMeasuresSequence", "SliceThickness")
    return InstanceHeader(
        derived_uids=tuple(derived),
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        patient_id=_text(elements, "PatientID"),
        patient_name=_text(elements, "PatientName"),
        study_date=_text(elements, "StudyDate"),
        study_description=_text(elements, "StudyDescription"),
        accession_number=_text(elements, "AccessionNumber"),
        modality=_text(elements, "Modality"),
        body_part_examined=_text(elements, "BodyPartExamined"),
        series_description=_text(elements, "SeriesDescription"),
        protocol_name=_text(elements, "ProtocolName"),
        series_number=_int(elements, "SeriesNumber"),
        frame_of_reference_uid=_text(elements, "FrameOfReferenceUID"),
        instance_number=_int(elements, "InstanceNumber"),
        image_type=_text(elements, "ImageType"),
        image_orientation=orientation,
        image_position=_text(elements, "ImagePositionPatient"),
        slice_thickness=thickness,
        number_of_frames=_int(elements, "NumberOfFrames"),
        rows=_int(elements, "Rows"),
        columns=_int(elements, "Columns"),
        attributes=MappingProxyType(_attributes(elements, ds)),
    )


class _ValueSource(Protocol):
    def get(self, keyword: str) -> object: ...


def _value(ds: _ValueSource, keyword: str) -> object:
    try:
        return ds.get(keyword)
    except Exception:  # a malformed value must not stop indexing the rest
        return None


def _text(ds: _ValueSource, keyword: str) -> str | None:
    value = _value(ds, keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue | list | tuple):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip().strip("\x00").strip()
    return text or None


def _int(ds: _ValueSource, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _float(ds: _ValueSource, keyword: str) -> float | None:
    value = _value(ds, keyword)
    try:
        return float(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    """The first item of a sequence, parsing none of the others.

    A defined-length sequence is still raw bytes after a header-only read; a per-frame
    functional group sequence has one item per frame (thousands), and only the first is
    needed. An undefined-length sequence was parsed by the reader already.
    """
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    try:
        value = ds.get_item(tag).value
        if isinstance(value, bytes):
            implicit, little = ds.original_encoding
            return read_sequence_item(
                BytesIO(value), bool(implicit), bool(little), ds.original_character_set
            )
        return value[0] if value else None
    except (Exception, RecursionError):  # an unreadable group is an absent one
        return None


def _functional_group(ds: Dataset, group: str) -> Dataset | None:
    """``group``'s item for an enhanced multi-frame instance: the shared one, else the first
    frame's (the same order routing reads files in, so both views agree)."""
    for container in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        functional_groups = _first_item(ds, container)
        if functional_groups is not None:
            item = _first_item(functional_groups, group)
            if item is not None:
                return item
    return None


def _functional_group_text(ds: Dataset, group: str, keyword: str) -> str | None:
    item = _functional_group(ds, group)
    return _text(item, keyword) if item is not None else None


def _functional_group_float(ds: Dataset, group: str, keyword: str) -> float | None:
    item = _functional_group(ds, group)
    return _float(item, keyword) if item is not None else None


def _code_items(ds: Dataset, keyword: str) -> list[dict[str, str]] | None:
    """A code sequence as routing reads it: one {CodeValue, CodingSchemeDesignator,
    CodeMeaning} map per item (``routers.attributes.dataset_attributes`` does the same)."""
    try:
        sequence = ds.get(keyword)
        if sequence is None:
            return None
        return [{k: str(item.get(k, "")) for k in _CODE_KEYWORDS} for item in sequence]
    except (Exception, RecursionError):
        return None


#: Text VRs whose value is split at backslashes (PS3.5 6.4), and those never split.
_MULTI_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM"})
_MULTI_TEXT_VRS |= frozenset({"UC", "UI"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d"}
_BINARY_FORMATS |= {"UV": "Q", "SV": "q"}
_NUMBER_STRINGS: dict[str, Callable[[str], object]] = {"DS": float, "IS": int}
#: Keywords the header columns read even when their value is too long for ``attributes``.
_HEADER_KEYWORDS = frozenset(
    {
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "Modality",
        "BodyPartExamined",
        "SeriesDescription",
        "ProtocolName",
        "SeriesNumber",
        "FrameOfReferenceUID",
        "InstanceNumber",
        "ImageType",
        "ImageOrientationPatient",
        "ImagePositionPatient",
        "SliceThickness",
        "NumberOfFrames",
        "Rows",
        "Columns",
    }
)


class _ConvertedElements:
    """The top-level public elements of a header-only dataset, each converted once.

    pydicom's conversion of a raw element costs tens of microseconds (hooks, validation,
    value classes); most header elements are ASCII text or little binary numbers, which are
    decoded here directly into what pydicom's values print as (``str``, ``int``, ``float``,
    lists of them). Anything else (another character set, an escape sequence, an ambiguous
    or unusual VR, a value that does not parse) is left to pydicom.
    """

    def __init__(self, ds: Dataset) -> None:
        self._elements: dict[str, tuple[object, str, int]] = {}
        for tag in list(ds.keys()):
            if tag.is_private or tag.group == 0x0002 or tag.group >= _PIXEL_DATA_GROUP:
                continue
            if not dictionary_has_tag(tag):  # unknown, or a repeating group (overlays)
                continue
            keyword = keyword_for_tag(tag)
            raw = ds.get_item(tag)
            length = getattr(raw, "length", 0) or 0
            # UN is worth converting: pydicom reads it with the dictionary's VR.
            binary = getattr(raw, "VR", None) in _SKIPPED_VRS - {"UN"}
            if (binary or length > MAX_ATTRIBUTE_BYTES) and keyword not in _HEADER_KEYWORDS:
                continue
            converted = _fast_value(raw, tag) if isinstance(raw, RawDataElement) else None
            if converted is None:
                converted = _pydicom_value(ds, tag)
            if converted is not None:
                self._elements[keyword] = (converted[0], converted[1], length)

    def get(self, keyword: str) -> object:
        element = self._elements.get(keyword)
        return element[0] if element is not None else None

    def items(self) -> Iterable[tuple[str, tuple[object, str, int]]]:
        return self._elements.items()


def _fast_value(raw: RawDataElement, tag: BaseTag) -> tuple[object, str] | None:
    """(value, VR) of a raw element in the common cases, None for pydicom to convert."""
    vr = raw.VR
    if vr is None:  # implicit VR: the dictionary's, unless it is ambiguous or unknown
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
    data = raw.value
    if not isinstance(data, bytes):
        return None
    if not data:
        return None, vr
    number_format = _BINARY_FORMATS.get(vr)
    if number_format is not None:
        size = struct.calcsize(number_format)
        if len(data) % size:
            return None
        order = "<" if raw.is_little_endian else ">"
        numbers = struct.unpack(f"{order}{len(data) // size}{number_format}", data)
        return (numbers[0] if len(numbers) == 1 else list(numbers)), vr
    if vr not in _MULTI_TEXT_VRS and vr not in _SINGLE_TEXT_VRS:
        return None
    if not data.isascii() or b"\x1b" in data:
        return None  # another character set or an escape sequence: pydicom decodes it
    text = data.decode("ascii")
    text = text.rstrip("\x00 ") if vr == "UI" else text.rstrip(" ")
    if "\x00" in text:
        return None  # NUL padding where none belongs: pydicom decides
    values = [text] if vr in _SINGLE_TEXT_VRS else text.split("\\")
    number = _NUMBER_STRINGS.get(vr)
    if number is not None:
        values = [v.strip() for v in values]
        try:
            for v in values:
                number(v)
        except ValueError:
            return None  # pydicom decides what an invalid number reads as
    return (values[0] if len(values) == 1 else values), vr


def _pydicom_value(ds: Dataset, tag: BaseTag) -> tuple[object, str] | None:
    try:
        element = ds[tag]
        return element.value, element.VR
    except (Exception, RecursionError):  # a malformed value must not stop the rest
        return None


def _json_value(value: object, vr: str) -> object:
    if isinstance(value, MultiValue | list | tuple):
        return [_json_value(v, vr) for v in value]
    if vr in _NUMERIC_VRS:
        return value if isinstance(value, int | float) else None
    if vr == "DS":
        return float(value)  # type: ignore[arg-type]
    if vr == "IS":
        return int(value)  # type: ignore[call-overload]
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return str(value).strip()


def _attributes(elements: _ConvertedElements, ds: Dataset) -> dict[str, object]:
    """Top-level public elements small enough to route on, keyword -> JSON value."""
    attributes: dict[str, object] = {}
    for keyword, (value, vr, length) in elements.items():
        if vr in _SKIPPED_VRS or length > MAX_ATTRIBUTE_BYTES:
            continue
        if value is None or value == "":
            attributes[keyword] = None
            continue
        try:
            attributes[keyword] = _json_value(value, vr)
        except Exception:  # one bad value must not cost the whole instance
            continue
    for keyword in _CODE_SEQUENCES:
        codes = _code_items(ds, keyword)
        if codes:
            attributes[keyword] = codes
    return attributes


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
    """

    def __init__(self, database_path: Path) -> None:
        self._conn = connect(database_path)
        self._synchronous = "FULL"  # connect's
        self._synchronise(replacing=False)
        self._lock = threading.Lock()  # the connection, and the commit in progress
        self._queue_lock = threading.Lock()
        self._queue: list[_PendingStore] = []

    def close(self) -> bool:
        """Close the connection after a checkpoint, which flushes the WAL (rows committed
        without a flush included) and the database file. False when the checkpoint failed (a
        full disk) or another connection blocked it: the rows stay in the WAL, which the next
        start replays."""
        with self._lock:
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
            raise pending.error
        assert pending.outcome is not None
        return pending.outcome

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


def recover_spool(spool: Spool, index: Index) -> int:
    """Index complete spool files whose row a crash prevented; return how many.

    A ``kill -9`` between the rename into the spool and the index commit leaves a whole,
    fsynced file that was never acknowledged. Indexing it keeps the index and the spool
    equal; a file that cannot be parsed is removed (it can only be ours if it is whole).
    """
    known = index.indexed_paths()
    recovered = 0
    for relpath in spool.files():
        if relpath in known:
            continue
        path = spool.path(relpath)
        try:
            header = parse_file_header(path)
        except HeaderError:
            spool.remove(relpath)
            continue
        stat = path.stat()
        index.store(
            StoredInstance(
                header=header, path=relpath, size_bytes=stat.st_size, received_at=stat.st_mtime
            )
        )
        recovered += 1
    return recovered
