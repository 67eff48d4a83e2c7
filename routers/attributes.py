"""The study/series view that route conditions and series selection read.

Built either from the node's index (``instances.attributes`` holds each instance's top-level
header keyword -> value map, written at ingest) or from files on disk (``routes explain PATH``).
Both give the same shape: per series, the attributes of one representative instance plus the
per-instance facts selection needs (SOP class, ImageType, orientation, thickness, frames).
Patient identifiers are never copied into the view, so nothing downstream can print them.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict

logger = logging.getLogger(__name__)

# Never in the view: patient identity (the CLI prints attribute values).
EXCLUDED_KEYWORDS = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "OtherPatientIDs",
        "OtherPatientNames",
        "OtherPatientIDsSequence",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "IssuerOfPatientID",
    }
)


def is_identifying(keyword: str) -> bool:
    """Patient identity, or any person name: never routed on, never shown."""
    if keyword in EXCLUDED_KEYWORDS:
        return True
    return keyword in keyword_dict and dictionary_VR(keyword) == "PN"


_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_CODE_SEQUENCES = frozenset({"AnatomicRegionSequence"})


@dataclass(frozen=True)
class InstanceFacts:
    """What series selection needs from each instance."""

    sop_instance_uid: str
    sop_class_uid: str
    image_type: tuple[str, ...] = ()
    orientation: tuple[float, ...] | None = None
    slice_thickness: float | None = None
    instance_number: int | None = None
    frames: int = 1
    received_at: float | None = None


@dataclass(frozen=True)
class SeriesView:
    """One series: representative attributes, its instances, and who sent it."""

    series_instance_uid: str
    attributes: Mapping[str, Any]
    instances: tuple[InstanceFacts, ...]
    calling_ae_titles: frozenset[str] = frozenset()
    called_ae_titles: frozenset[str] = frozenset()

    @property
    def image_count(self) -> int:
        """Instances, counting each frame of a multi-frame instance."""
        return sum(max(1, i.frames) for i in self.instances)

    @property
    def image_types(self) -> frozenset[str]:
        return frozenset(v.upper() for i in self.instances for v in i.image_type)

    @property
    def sop_classes(self) -> frozenset[str]:
        return frozenset(i.sop_class_uid for i in self.instances)

    @property
    def orientation(self) -> tuple[float, ...] | None:
        for instance in self.instances:
            if instance.orientation is not None:
                return instance.orientation
        return None

    @property
    def slice_thickness(self) -> float | None:
        """Median thickness over the instances that state one."""
        values = sorted(
            i.slice_thickness
            for i in self.instances
            if i.slice_thickness is not None and math.isfinite(i.slice_thickness)
        )
        return values[len(values) // 2] if values else None

    @property
    def description(self) -> str:
        value = self.attributes.get("SeriesDescription")
        return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class StudyView:
    """A study (one stable version of it, when built from the index)."""

    study_instance_uid: str
    series: tuple[SeriesView, ...]
    version: int | None = None


# --- from pydicom datasets (files on disk) -------------------------------------------------


def _plain(value: Any) -> Any:
    """A JSON-like value from a pydicom element value (numbers stay numbers)."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import IS, DSdecimal, DSfloat

    if isinstance(value, (MultiValue, list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, (DSfloat, DSdecimal)):
        return float(value)
    if isinstance(value, (str, int, float)):
        return value
    return str(value)


def dataset_attributes(dataset: Any) -> dict[str, Any]:
    """Top-level, public, non-binary attributes of a dataset, by keyword (never raises)."""
    attributes: dict[str, Any] = {}
    for tag in list(dataset.keys()):
        try:
            element = dataset[tag]
            keyword = element.keyword
            if not keyword or tag.is_private or is_identifying(keyword):
                continue
            if element.VR in _BINARY_VRS or element.VR == "PN":
                continue
            if element.VR == "SQ":
                if keyword in _CODE_SEQUENCES:
                    attributes[keyword] = [
                        {
                            k: str(item.get(k, ""))
                            for k in ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
                        }
                        for item in element.value
                    ]
                continue
            attributes[keyword] = _plain(element.value)
        except Exception as exc:  # an unreadable element is absent, never an error
            logger.debug("skipping unreadable element %s: %s", tag, exc)
    return attributes


def _float_tuple(value: Any) -> tuple[float, ...] | None:
    try:
        if isinstance(value, str):
            value = value.split("\\")
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(numbers) != 6 or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def _float(value: Any) -> float | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None else None


def _text_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in value.split("\\"))
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return (str(value),)


def _functional_group_value(dataset: Any, sequence: str, keyword: str) -> Any:
    """A value from the shared functional groups of an enhanced multi-frame instance."""
    try:
        shared = dataset.SharedFunctionalGroupsSequence[0]
        return getattr(getattr(shared, sequence)[0], keyword)
    except (AttributeError, IndexError, KeyError, TypeError):
        pass
    try:
        first = dataset.PerFrameFunctionalGroupsSequence[0]
        return getattr(getattr(first, sequence)[0], keyword)
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def _facts_from_dataset(dataset: Any, attributes: Mapping[str, Any]) -> InstanceFacts:
    orientation = _float_tuple(attributes.get("ImageOrientationPatient"))
    if orientation is None:
        orientation = _float_tuple(
            _functional_group_value(dataset, "PlaneOrientationSequence", "ImageOrientationPatient")
        )
    thickness = _float(attributes.get("SliceThickness"))
    if thickness is None:
        thickness = _float(
            _functional_group_value(dataset, "PixelMeasuresSequence", "SliceThickness")
        )
    return InstanceFacts(
        sop_instance_uid=str(attributes.get("SOPInstanceUID", "")),
        sop_class_uid=str(attributes.get("SOPClassUID", "")),
        image_type=_text_tuple(attributes.get("ImageType")),
        orientation=orientation,
        slice_thickness=thickness,
        instance_number=_int(attributes.get("InstanceNumber")),
        frames=_int(attributes.get("NumberOfFrames")) or 1,
    )


def _representative(rows: list[tuple[InstanceFacts, Mapping[str, Any]]]) -> Mapping[str, Any]:
    """Attributes of the instance with the lowest InstanceNumber (unnumbered last)."""
    rows = sorted(
        rows,
        key=lambda r: (
            r[0].instance_number is None,
            r[0].instance_number or 0,
            r[0].sop_instance_uid,
        ),
    )
    return rows[0][1]


def study_views_from_paths(paths: Iterable[Path]) -> list[StudyView]:
    """Read the headers of files (folders are walked) and group them into studies.

    Files that are not DICOM, or lack Study/Series UIDs or a SOP class (DICOMDIR, media
    directory files), are skipped: they cannot be routed.
    """
    import pydicom

    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    studies: dict[str, dict[str, list[tuple[InstanceFacts, Mapping[str, Any]]]]] = {}
    for file in files:
        try:
            dataset = pydicom.dcmread(file, stop_before_pixels=True, force=True)
            attributes = dataset_attributes(dataset)
            facts = _facts_from_dataset(dataset, attributes)
        except Exception as exc:  # not DICOM, truncated, recursion bombs: not routable
            logger.debug("not routable: %s: %s", file, exc)
            continue
        study_uid = attributes.get("StudyInstanceUID")
        series_uid = attributes.get("SeriesInstanceUID")
        if not isinstance(study_uid, str) or not isinstance(series_uid, str):
            continue
        if not study_uid or not series_uid or not facts.sop_class_uid:
            continue
        studies.setdefault(study_uid, {}).setdefault(series_uid, []).append((facts, attributes))
    return [
        StudyView(
            study_instance_uid=study_uid,
            series=tuple(
                SeriesView(
                    series_instance_uid=series_uid,
                    attributes=MappingProxyType(dict(_representative(rows))),
                    instances=tuple(f for f, _ in rows),
                )
                for series_uid, rows in sorted(series.items())
            ),
        )
        for study_uid, series in sorted(studies.items())
    ]


# --- from the index ----------------------------------------------------------------------

_INDEX_QUERY = """
SELECT i.sop_instance_uid, i.series_instance_uid, i.sop_class_uid, i.calling_ae, i.called_ae,
       i.received_at, i.instance_number, i.image_type, i.image_orientation, i.slice_thickness,
       i.number_of_frames, i.attributes,
       s.modality, s.body_part_examined, s.series_description, s.protocol_name, s.series_number,
       st.study_description
FROM instances i
JOIN series s ON s.series_instance_uid = i.series_instance_uid
JOIN studies st ON st.study_instance_uid = i.study_instance_uid
WHERE i.study_instance_uid = ? AND i.study_version <= ?
"""

# Index columns that stand in for a keyword when the attributes JSON lacks it.
_COLUMN_KEYWORDS = {
    "modality": "Modality",
    "body_part_examined": "BodyPartExamined",
    "series_description": "SeriesDescription",
    "protocol_name": "ProtocolName",
    "series_number": "SeriesNumber",
    "study_description": "StudyDescription",
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
}


def _json_value(value: Any) -> Any:
    if isinstance(value, list):
        return (
            tuple(_json_value(v) for v in value)
            if not any(isinstance(v, dict) for v in value)
            else value
        )
    return value


def _load_attributes(text: str | None) -> dict[str, Any]:
    try:
        raw = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): _json_value(v) for k, v in raw.items() if not is_identifying(str(k))}


def _titles(rows: list[sqlite3.Row], column: str) -> frozenset[str]:
    return frozenset(r[column] for r in rows if r[column])


def study_view_from_index(
    conn: sqlite3.Connection, study_instance_uid: str, version: int | None = None
) -> StudyView | None:
    """The study as indexed up to ``version`` (default: its current version); None if absent."""
    if version is None:
        row = conn.execute(
            "SELECT version FROM studies WHERE study_instance_uid = ?", (study_instance_uid,)
        ).fetchone()
        if row is None:
            return None
        version = int(row[0])
    rows = conn.execute(_INDEX_QUERY, (study_instance_uid, version)).fetchall()
    if not rows:
        return None
    by_series: dict[str, list[sqlite3.Row]] = {}
    for row in rows:
        by_series.setdefault(row["series_instance_uid"], []).append(row)
    series_views = []
    for series_uid, series_rows in sorted(by_series.items()):
        facts = tuple(
            InstanceFacts(
                sop_instance_uid=r["sop_instance_uid"],
                sop_class_uid=r["sop_class_uid"],
                image_type=_text_tuple(r["image_type"]),
                orientation=_float_tuple(r["image_orientation"]),
                slice_thickness=_float(r["slice_thickness"]),
                instance_number=r["instance_number"],
                frames=r["number_of_frames"] or 1,
                received_at=r["received_at"],
            )
            for r in series_rows
        )
        first = min(
            series_rows,
            key=lambda r: (
                r["instance_number"] is None,
                r["instance_number"] or 0,
                r["received_at"],
                r["sop_instance_uid"],
            ),
        )
        attributes = _load_attributes(first["attributes"])
        for column, keyword in _COLUMN_KEYWORDS.items():
            if keyword not in attributes and first[column] is not None:
                attributes[keyword] = first[column]
        series_views.append(
            SeriesView(
                series_instance_uid=series_uid,
                attributes=MappingProxyType(attributes),
                instances=facts,
                calling_ae_titles=_titles(series_rows, "calling_ae"),
                called_ae_titles=_titles(series_rows, "called_ae"),
            )
        )
    return StudyView(study_instance_uid, tuple(series_views), version)
