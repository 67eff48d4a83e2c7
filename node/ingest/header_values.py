"""Header element values, converted once and fast, and the ``attributes`` JSON they make.

pydicom's conversion of a raw element costs tens of microseconds (hooks, validation, value
classes); a received header has dozens of elements and the index keeps most of them, so the
common cases (ASCII text, little binary numbers) are decoded here directly and only the rest
is left to pydicom. ``header`` reads its columns from ``ConvertedElements``; the rest of
what is small and public becomes the instance's ``attributes`` (routing reads them).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

#: Elements larger than this (raw bytes) stay out of the ``attributes`` JSON column.
MAX_ATTRIBUTE_BYTES = 1024
#: Value representations that are binary, nested or unknown: never in ``attributes``.
_SKIPPED_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW"})
#: Code sequences routing reads (body part from AnatomicRegionSequence), kept as code maps.
_CODE_SEQUENCES = ("AnatomicRegionSequence",)
_CODE_KEYWORDS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
#: The pixel data's group: a header read stops there.
PIXEL_DATA_GROUP = 0x7FE0

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


class ConvertedElements:
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
            if tag.is_private or tag.group == 0x0002 or tag.group >= PIXEL_DATA_GROUP:
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


def attributes_json(elements: ConvertedElements, ds: Dataset) -> dict[str, object]:
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
