"""Whether a received dataset ends where its elements say it does.

The header is read only up to its pixel data (``header.parse_header``), so a dataset cut
inside the pixel data, or in anything after it, parsed cleanly and was stored with part of
its pixels. ``check_dataset_end`` walks the top-level elements from there to the
end by their declared lengths, without reading or decoding any value: each must fit in the
bytes received, and an undefined-length value (encapsulated pixel data, a sequence) must end
with its sequence delimiter.
"""

from __future__ import annotations

import struct

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_ITEM_GROUP = 0xFFFE
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})


class HeaderError(ValueError):
    """The dataset cannot be indexed: unreadable, truncated, or missing a UID the index keys
    on."""


class MissingUidError(HeaderError):
    """The dataset lacks its SOP Class or SOP Instance UID (DIMSE status 0xC001, not 0xC000)."""


class _Layout:
    """The element header encoding of one dataset."""

    def __init__(self, implicit: bool, little: bool) -> None:
        order = "<" if little else ">"
        self.implicit = implicit
        self.tag_length = struct.Struct(f"{order}HHL")
        self.short = struct.Struct(f"{order}HH2sH")
        self.long = struct.Struct(f"{order}HH2s2xL")


def check_dataset_end(data: bytes, offset: int, implicit: bool, little: bool) -> None:
    """Raise ``HeaderError`` unless the top-level elements from ``offset`` (the start of the
    pixel data, where the header parse stopped) to the end of ``data`` are all whole."""
    layout = _Layout(implicit, little)
    _walk(data, offset, layout, in_item=False)


def _walk(data: bytes, offset: int, layout: _Layout, *, in_item: bool) -> int:
    """Skip the elements of a dataset; return where it ends (after its item delimiter when
    it is an undefined-length item)."""
    end = len(data)
    while offset < end:
        tag, vr, length, value = _element_header(data, offset, layout)
        if tag == _ITEM_DELIMITER and in_item:
            return value
        if length != _UNDEFINED:
            offset = _fits(data, value, length, tag)
        else:
            # An undefined-length UN holds Implicit VR Little Endian (PS3.5 6.2.2).
            inner = _Layout(True, True) if vr == b"UN" else layout
            offset = _skip_items(data, value, inner, tag)
    if in_item:
        raise HeaderError("dataset is truncated: it ends before an item delimiter")
    return offset


def _skip_items(data: bytes, offset: int, layout: _Layout, owner: int) -> int:
    """Skip the items of an undefined-length value (sequence items or pixel data fragments)
    up to and including its sequence delimiter."""
    end = len(data)
    while offset + 8 <= end:
        tag, _, length, value = _element_header(data, offset, layout)
        if tag == _SEQUENCE_DELIMITER:
            return value
        if tag != _ITEM:
            raise HeaderError(f"element {owner:08X} holds {tag:08X} where an item should be")
        if length == _UNDEFINED:
            offset = _walk(data, value, layout, in_item=True)
        else:
            offset = _fits(data, value, length, owner)
    raise HeaderError(f"dataset is truncated: it ends before element {owner:08X}'s delimiter")


def _fits(data: bytes, value: int, length: int, tag: int) -> int:
    if value + length > len(data):
        raise HeaderError(
            f"dataset is truncated: element {tag:08X} declares {length} bytes, "
            f"{max(len(data) - value, 0)} received"
        )
    return value + length


def _element_header(data: bytes, offset: int, layout: _Layout) -> tuple[int, bytes, int, int]:
    """(tag, explicit VR or b"", value length, where the value starts)."""
    if offset + 8 > len(data):
        raise HeaderError("dataset is truncated: it ends inside an element header")
    group, element, length = layout.tag_length.unpack_from(data, offset)
    if layout.implicit or group == _ITEM_GROUP:
        return group << 16 | element, b"", length, offset + 8
    _, _, vr, length = layout.short.unpack_from(data, offset)
    if vr not in _LONG_VRS:
        return group << 16 | element, vr, length, offset + 8
    if offset + 12 > len(data):
        raise HeaderError("dataset is truncated: it ends inside an element header")
    _, _, vr, length = layout.long.unpack_from(data, offset)
    return group << 16 | element, vr, length, offset + 12
