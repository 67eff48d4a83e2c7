"""PS3.15 Annex E attribute actions, applied with Kitware's ``dicom-anonymizer``.

The library carries Table E.1-1 of the standard (release 2026c: 655 attributes with their
D/Z/X/K/C/U actions) and applies it to the top level of a dataset. Three things it does not do
are done here, on top of its table:

- UIDs: the library maps them through a process-wide dictionary of random UIDs, so they would
  neither survive a restart nor stay apart between jobs. ``node.pseudonym`` replaces every
  instance UID itself (anywhere, nested included) before the table runs, and every table rule
  that would touch a UID is turned into "keep".
- Sequences: K means "keep, cleaned for sequences", but the library leaves sequence items
  alone; ``apply_profile`` applies the table to every item of every sequence left.
- Options: the library knows only the Basic Profile; the retain options this node offers are
  the attributes their column of Table E.1-1 marks K, kept by overriding the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

from dicomanonymizer import simpledicomanonymizer as table
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.sequence import Sequence

__all__ = [
    "PROFILE_RELEASE",
    "ProfileOption",
    "apply_profile",
    "deidentification_codes",
    "retained_uid_keywords",
]

PROFILE_RELEASE = "dicomfields_2026c"  # the library's copy of Table E.1-1, DICOM 2026c

Rule = Callable[[Dataset, tuple[int, int]], None]


class ProfileOption(StrEnum):
    """The PS3.15 E.3 options a site may name; each is a column of Table E.1-1."""

    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_LONGITUDINAL_TEMPORAL_INFORMATION_FULL_DATES = "retain-full-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"


# CID 7050 codes (scheme DCM) for DeidentificationMethodCodeSequence.
_BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
_OPTION_CODES: Mapping[ProfileOption, tuple[str, str]] = {
    ProfileOption.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    ProfileOption.RETAIN_LONGITUDINAL_TEMPORAL_INFORMATION_FULL_DATES: (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    ProfileOption.RETAIN_PATIENT_CHARACTERISTICS: (
        "113108",
        "Retain Patient Characteristics Option",
    ),
}

# The attributes Table E.1-1 marks K in each option's column (C entries are not kept: the
# library has no cleaning of free text, and removing is what the Basic Profile does).
_KEPT_BY_OPTION: Mapping[ProfileOption, tuple[str, ...]] = {
    ProfileOption.RETAIN_DEVICE_IDENTITY: (
        "CassetteID",
        "DetectorID",
        "DeviceDescription",
        "DeviceLabel",
        "DeviceSerialNumber",
        "DeviceUID",
        "GantryID",
        "GeneratorID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PlateID",
        "ScheduledStationAETitle",
        "ScheduledStationName",
        "SourceSerialNumber",
        "StationName",
        "TreatmentMachineName",
    ),
    ProfileOption.RETAIN_PATIENT_CHARACTERISTICS: (
        "EthnicGroup",
        "PatientAge",
        "PatientSex",
        "PatientSexNeutered",
        "PatientSize",
        "PatientWeight",
        "PregnancyStatus",
        "SmokingStatus",
    ),
}

_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})
_NOT_LONGITUDINAL = frozenset({"PatientBirthDate", "PatientBirthTime"})  # Z whatever the option
# The library's actions that write a dummy value, which for a sequence means its random UIDs.
_REPLACING = frozenset(
    {
        table.replace,
        table.empty_or_replace,
        table.delete_or_replace,
        table.delete_or_empty_or_replace,
    }
)


def _keyword_tag(keyword: str) -> tuple[int, int]:
    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo in the tables above; caught by the tests
        raise ValueError(f"{keyword!r} is not a DICOM keyword")
    return tag >> 16, tag & 0xFFFF


def _vr(tag: tuple[int, ...]) -> str:
    if len(tag) != 2:  # a repeating-group mask (curves, overlays): never a UID
        return ""
    try:
        return dictionary_VR((tag[0] << 16) | tag[1])
    except KeyError:
        return ""


def _rules(options: frozenset[ProfileOption]) -> dict[tuple[int, ...], Rule]:
    rules: dict[tuple[int, ...], Rule] = table.initialize_actions(PROFILE_RELEASE)
    full_dates = ProfileOption.RETAIN_LONGITUDINAL_TEMPORAL_INFORMATION_FULL_DATES in options
    not_longitudinal = {_keyword_tag(k) for k in _NOT_LONGITUDINAL}
    for tag, action in rules.items():
        vr = _vr(tag)
        if vr == "UI" or action in (table.replace_UID, table.delete_or_empty_or_replace_UID):
            rules[tag] = table.keep  # UIDs are already pseudonyms; U* items get the table
        elif vr == "SQ" and action in _REPLACING:
            rules[tag] = table.delete  # a dummy sequence would carry the library's random UIDs
        elif vr == "SQ" and action in (table.empty, table.delete_or_empty):
            rules[tag] = _empty_sequence  # the library would keep items with emptied values
        elif full_dates and vr in _TEMPORAL_VRS and tag not in not_longitudinal:
            rules[tag] = table.keep
    for option in options:
        for keyword in _KEPT_BY_OPTION.get(option, ()):
            rules[_keyword_tag(keyword)] = table.keep
    return rules


def _empty_sequence(dataset: Dataset, tag: tuple[int, int]) -> None:
    """Z for a sequence: present with no items."""
    if tag in dataset:
        dataset[tag].value = Sequence()


def retained_uid_keywords(options: Iterable[ProfileOption]) -> frozenset[str]:
    """UID attributes an option keeps as they are (not pseudonymised)."""
    return frozenset(
        keyword
        for option in options
        for keyword in _KEPT_BY_OPTION.get(option, ())
        if dictionary_VR(tag_for_keyword(keyword)) == "UI"
    )


def apply_profile(dataset: Dataset, options: frozenset[ProfileOption]) -> None:
    """Apply Table E.1-1 (with ``options``) in place: top level, then every sequence item."""
    rules = _rules(options)
    _apply(dataset, rules)


def _apply(dataset: Dataset, rules: dict[tuple[int, ...], Rule]) -> None:
    table.anonymize_dataset(dataset, base_rules_gen=lambda: dict(rules), delete_private_tags=True)
    for element in list(dataset):
        if element.VR == "SQ" and isinstance(element.value, Sequence):
            for item in element.value:
                _apply(item, rules)


def deidentification_codes(options: Iterable[ProfileOption]) -> list[tuple[str, str]]:
    """(code value, meaning) of the profile and its options, for the CodeSequence."""
    chosen = sorted(set(options))
    return [_BASIC_PROFILE_CODE, *(_OPTION_CODES[option] for option in chosen)]
