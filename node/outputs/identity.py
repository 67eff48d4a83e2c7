"""Patient and study identity of result objects, copied from the source as it came.

Results join the source study: the Patient, General Study and Patient Study module values are
the source's, including empty Type 2 values and the character set, so a PACS files them under
the same patient and study. Sources are often incomplete (Type 2 attributes missing, names in
a character set that is not declared); none of that may stop a result from being built.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

from highdicom._standard_utils import get_module_attribute_map
from pydicom import config
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName, validate_value

log = logging.getLogger(__name__)

# Type 2 attributes of the Patient and General Study modules. highdicom's constructors read
# the first six directly (AttributeError when absent) and dciodvfy flags each missing one.
TYPE2_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)

# Modules whose values every result shares with its source (root-level attributes only).
IDENTITY_MODULES = (
    "patient",
    "clinical-trial-subject",
    "general-study",
    "patient-study",
    "clinical-trial-study",
)


def _identity_attributes() -> dict[str, str]:
    """Keyword -> DICOM attribute type ("1", "1C", "2", "2C", "3") from highdicom's tables of
    the standard, so the list follows the standard edition highdicom ships."""
    table = get_module_attribute_map()
    return {
        str(item["keyword"]): str(item["type"])
        for module in IDENTITY_MODULES
        for item in table.get(module, [])
        if len(item["path"]) == 0
    }


IDENTITY_ATTRIBUTES = _identity_attributes()

TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
LATIN1 = "ISO_IR 100"
UTF8 = "ISO_IR 192"
UNSPECIFIED_METHOD = "unspecified by the source"


def shallow_copy(header: Dataset) -> Dataset:
    """A new mapping over the same elements: adding or replacing elements leaves ``header``
    alone (copy.copy and Dataset(header) share the mapping itself). Never assign to the
    shared elements' values."""
    copied = Dataset()
    copied.update(header)
    return copied


def prepared_header(header: Dataset) -> Dataset:
    """A copy of a source header that highdicom and the validators accept.

    Missing Type 2 identity attributes become present and empty; nothing else changes, so the
    copy still says what the source said. A complete header is returned as it is.
    """
    if all(keyword in header for keyword in TYPE2_IDENTITY):
        return header
    prepared = shallow_copy(header)
    for keyword in TYPE2_IDENTITY:
        if keyword not in prepared:
            setattr(prepared, keyword, None)
    return prepared


def copy_identity(target: Dataset, source: Dataset) -> None:
    """Give ``target`` the source's patient and study identity, then a character set that
    can encode every text value ``target`` now holds.

    Attributes are copied as they are (absent Type 2 ones made present and empty), except
    values that would make the result invalid: empty Type 1 and 1C values are left out, and a
    value malformed for its VR (a PatientAge of "81", a date "1999.05.24") is left out, or
    left empty where the attribute is Type 2. The source keeps its own values.
    """
    for keyword, attribute_type in IDENTITY_ATTRIBUTES.items():
        # the element, not its value (Dataset.get returns the value)
        element = source[keyword] if keyword in source else None  # noqa: SIM401
        usable = element is not None and _valid(element)
        if usable and not (element.is_empty and attribute_type in ("1", "1C")):
            target[keyword] = copy.deepcopy(element)
        elif keyword in TYPE2_IDENTITY or (element is not None and attribute_type == "2"):
            setattr(target, keyword, None)
        elif keyword in target:
            del target[keyword]
    if (
        target.get("PatientIdentityRemoved") == "YES"
        and "DeidentificationMethod" not in target
        and "DeidentificationMethodCodeSequence" not in target
    ):
        # Type 1C once identity is removed; sources that leave it empty would make every
        # result fail validation, so say plainly that the source did not tell.
        target.DeidentificationMethod = UNSPECIFIED_METHOD
    target.SpecificCharacterSet = character_set_for(target, source.get("SpecificCharacterSet"))
    if target.SpecificCharacterSet is None:
        del target.SpecificCharacterSet


def _valid(element: DataElement) -> bool:
    if element.VR == "SQ" or element.is_empty:
        return True
    values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
    try:
        for value in values:
            validate_value(element.VR, value, config.RAISE)
    except (ValueError, TypeError):
        log.debug("not copying %s: its value is invalid for VR %s", element.keyword, element.VR)
        return False
    return True


def character_set_for(
    dataset: Dataset, preferred: str | Iterable[str] | None
) -> str | list[str] | None:
    """The source's character set if it encodes all of ``dataset``'s text, else a fallback.

    A source without SpecificCharacterSet whose names hold non-ASCII characters was decoded as
    Latin-1 (pydicom's fallback), so ISO_IR 100 writes the same bytes back; text that Latin-1
    cannot hold (e.g. report text in another script) forces UTF-8.
    """
    texts = [text for text in _text_values(dataset) if not text.isascii()]
    if isinstance(preferred, str):
        preferred = preferred or None
    elif preferred is not None:
        preferred = [value for value in preferred if value] or None
    if not texts:
        return preferred if preferred is None or isinstance(preferred, str) else list(preferred)
    candidates: list[str | list[str]] = []
    if preferred is not None:
        candidates.append(preferred if isinstance(preferred, str) else list(preferred))
    candidates += [LATIN1, UTF8]
    for candidate in candidates:
        codecs = convert_encodings([candidate] if isinstance(candidate, str) else candidate)
        if all(_encodes(text, codecs) for text in texts):
            return candidate
    return UTF8


def _encodes(text: str, codecs: list[str]) -> bool:
    for codec in codecs:
        try:
            text.encode(codec)
        except (UnicodeEncodeError, LookupError):
            continue
        return True
    return False


# Functional groups hold UIDs, numbers and highdicom's own codes, never source text, and on a
# long SEG they are most of the dataset: not walked.
NOT_WALKED = frozenset({"PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"})


def _text_values(dataset: Dataset) -> Iterable[str]:
    for element in dataset:
        if element.VR == "SQ":
            if element.keyword not in NOT_WALKED:
                for item in element.value:
                    yield from _text_values(item)
            continue
        if element.VR not in TEXT_VRS or element.value is None:
            continue
        values = element.value if isinstance(element.value, MultiValue | list) else [element.value]
        for value in values:
            if isinstance(value, PersonName):
                yield str(value)
            elif isinstance(value, str):
                yield value
