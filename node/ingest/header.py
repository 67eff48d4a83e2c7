"""The header of a received dataset, read up to its pixel data, as the index keeps it.

``parse_header`` runs on every C-STORE before anything is written: it reads the dataset only
up to its pixel data (beyond it ``dataset_end`` walks element lengths, to refuse a truncated
dataset), so it never touches pixels, and returns an ``InstanceHeader``. Anything that cannot
be indexed raises ``HeaderError`` (``MissingUidError`` without a SOP Class or Instance UID).
``parse_file_header`` does the same for a Part-10 file already in the spool.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from io import BytesIO
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset, read_sequence_item
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import UID

from node.ingest.dataset_end import HeaderError, MissingUidError, check_dataset_end
from node.ingest.header_values import PIXEL_DATA_GROUP, ConvertedElements, attributes_json

#: Largest inflated header we accept from a deflated transfer syntax (zip-bomb guard).
MAX_INFLATED_BYTES = 1 << 30


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

    def __reduce__(self) -> tuple[object, tuple[dict[str, object]]]:
        """Pickled for a receiver process's pipe: the read-only ``attributes`` go as a dict."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["attributes"] = dict(self.attributes)
        return _unpickle_header, (values,)


def _unpickle_header(values: dict[str, object]) -> InstanceHeader:
    attributes = MappingProxyType(dict(values.pop("attributes")))  # type: ignore[call-overload]
    return InstanceHeader(**values, attributes=attributes)  # type: ignore[arg-type]


def derived_uid(keyword: str, sop_instance_uid: str) -> str:
    """A stable 2.25 UID standing in for a missing Study or Series Instance UID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, f'{keyword}:{sop_instance_uid}').int}"


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag >> 16 >= PIXEL_DATA_GROUP


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
    elements = ConvertedElements(ds)
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
        attributes=MappingProxyType(attributes_json(elements, ds)),
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
