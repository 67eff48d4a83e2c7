"""Per-frame functional groups encoded once, so that writing a large SEG is not the slow part.

A SEG of 13 segments over 300 slices holds 3,900 Per-frame Functional Groups items of about
eight nested datasets each, and most of them are shared: highdicom hands every frame of a
source position the same plane position and source-image items. pydicom's writer encodes
each item afresh and re-runs its ambiguous-VR correction at every nesting level, which took
about 2 s for that SEG. ``preencode_frame_groups`` encodes the sequence once, shared items
once, into the bytes pydicom would write (explicit VR little endian, the same lengths and
delimiters), and leaves them in the dataset as a raw element: pydicom writes a raw element
as it is, and reading the attribute back decodes it to the same items.
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.pixels import pack_bits
from pydicom.tag import BaseTag
from pydicom.uid import UID

__all__ = ["decompress", "preencode_frame_groups"]

_PER_FRAME = BaseTag(0x52009230)
_CHARSET = BaseTag(0x00080005)
_ITEM = b"\xfe\xff\x00\xe0"
_ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF
_INTEGER_VRS = frozenset({"US", "UL", "SS", "SL", "UV", "SV"})


class _NotEncodable(Exception):
    """An element this encoder leaves to pydicom (an ambiguous or raw VR)."""


class _Encoder:
    """Explicit VR little endian encoding of items, each distinct item object once."""

    def __init__(self) -> None:
        self._items: dict[int, bytes] = {}
        # integer elements repeat across frames (e.g. Referenced Segment Number)
        self._integers: dict[tuple[object, ...], bytes] = {}

    def item(self, item: Dataset, encodings: object) -> bytes:
        cached = self._items.get(id(item))
        if cached is not None:
            return cached
        charset = item.get(_CHARSET)
        if charset is not None and charset.value:
            encodings = charset.value
        content = b"".join(
            self._element(item[tag], encodings)
            for tag in sorted(item.keys())
            if not (tag.element == 0 and tag.group > 6)  # group lengths: not written
        )
        if getattr(item, "is_undefined_length_sequence_item", False):
            encoded = _ITEM + struct.pack("<I", _UNDEFINED) + content + _ITEM_END
        else:
            encoded = _ITEM + struct.pack("<I", len(content)) + content
        self._items[id(item)] = encoded
        return encoded

    def sequence(self, items: list[Dataset], encodings: object) -> bytes:
        return b"".join(self.item(item, encodings) for item in items)

    def _element(self, element: DataElement, encodings: object) -> bytes:
        if element.is_raw or len(element.VR) != 2:
            raise _NotEncodable(element.tag)
        if element.VR != "SQ":
            key = None
            if element.VR in _INTEGER_VRS and type(element.value) is int:
                key = (element.tag, element.VR, element.value)
                cached = self._integers.get(key)
                if cached is not None:
                    return cached
            buffer = DicomBytesIO()
            buffer.is_little_endian, buffer.is_implicit_VR = True, False
            write_data_element(buffer, element, encodings)  # type: ignore[arg-type]
            encoded = buffer.getvalue()
            if key is not None:
                self._integers[key] = encoded
            return encoded
        value = self.sequence(element.value, encodings)
        tag = struct.pack("<HH", element.tag.group, element.tag.element) + b"SQ\x00\x00"
        if element.is_undefined_length:
            return tag + struct.pack("<I", _UNDEFINED) + value + _SEQUENCE_END
        return tag + struct.pack("<I", len(value)) + value


def _explicit_little_endian(uid: object) -> bool:
    """Whether data sets of this transfer syntax are written as explicit VR little endian:
    the native one, deflate (which compresses that encoded stream) and the compressed ones."""
    if not uid:
        return False
    syntax = UID(str(uid))
    return syntax.is_transfer_syntax and syntax.is_little_endian and not syntax.is_implicit_VR


def preencode_frame_groups(dataset: Dataset) -> bool:
    """Replace the Per-frame Functional Groups Sequence by its encoded bytes (in place).

    Only for datasets written as explicit VR little endian, natively or with encapsulated
    (compressed) pixel data; returns whether it did. The
    dataset is marked as encoded in that transfer syntax so that pydicom writes the raw
    element as it is; its own ambiguous VRs (e.g. Pixel Data's OB or OW) are resolved here,
    as pydicom would resolve them when writing. Elements added later must have a definite VR.
    """
    meta = getattr(dataset, "file_meta", None)
    if (
        _PER_FRAME not in dataset
        or dataset.get_item(_PER_FRAME).is_raw
        or meta is None
        or not _explicit_little_endian(meta.get("TransferSyntaxUID"))
    ):
        return False
    items = dataset[_PER_FRAME].value
    encodings = dataset.get("SpecificCharacterSet") or None
    try:
        value = _Encoder().sequence(items, encodings)
    except _NotEncodable:
        return False
    del dataset[_PER_FRAME]
    correct_ambiguous_vr(dataset, True)
    dataset[_PER_FRAME] = RawDataElement(
        _PER_FRAME, "SQ", len(value), value, 0, is_implicit_VR=False, is_little_endian=True
    )
    dataset.set_original_encoding(False, True, dataset._character_set)
    return True


def decompress(dataset: Dataset) -> None:
    """``Dataset.decompress`` (same SOP Instance UID), keeping 1-bit pixel data bit-packed.

    pydicom 3.0 decodes a compressed BINARY SEG (JPEG 2000, 1 bit allocated) into one byte
    per pixel but leaves Bits Allocated at 1, which no reader decodes; the bytes are packed
    back here (DICOM bit order, little-endian within a byte) so the result equals the SEG
    written uncompressed.
    """
    dataset.decompress(generate_instance_uid=False)
    if dataset.get("BitsAllocated") != 1:
        return
    pixels = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1))
    unpacked = np.frombuffer(dataset.PixelData, np.uint8)
    if unpacked.size >= pixels * int(dataset.get("NumberOfFrames", 1)):
        dataset.PixelData = pack_bits(unpacked)
