"""Pseudonymisation for products outside the hospital, and re-identification of their results.

What leaves for a vendor's node goes through PS3.15 Annex E's Basic Application Level
Confidentiality Profile (``node.pseudonym_profile``, Kitware's ``dicom-anonymizer``) with the
options the site names; the patient gets a pseudonym and every instance UID a new one. Each
replacement is a row of ``pseudonyms`` (owned here), per job: a retried send reuses the same
pseudonyms, so the vendor never sees the study twice, and a result that comes back is mapped
to the original UIDs and patient before it is relayed, so the PACS files it in the original
study. Nothing identifying is logged: only job keys and counts.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydicom import DataElement, Dataset
from pydicom.uid import generate_uid

from node.db import transaction
from node.pseudonym_profile import (
    ProfileOption,
    apply_profile,
    deidentification_codes,
    retained_uid_keywords,
)

__all__ = [
    "ProfileOption",
    "PseudonymKind",
    "PseudonymisationPolicy",
    "PseudonymisationRefused",
    "Pseudonymiser",
    "ReidentificationError",
]

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16
_DICOM_ROOT = "1.2.840.10008."  # UIDs the standard defines (classes, coding schemes): not data

# Patient, Clinical Trial Subject, General Study and Patient Study module attributes: what a
# re-identified result takes from the original source header.
PATIENT_AND_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "AdmittingDiagnosesDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "AdditionalPatientHistory",
)
_DEIDENTIFICATION_MARKS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)


class PseudonymKind(StrEnum):
    UID = "uid"
    PATIENT = "patient"  # original: the Patient ID (the name when there is none)


class PseudonymisationRefused(ValueError):
    """The instance cannot leave de-identified (identity may be burned into its pixels)."""


class ReidentificationError(ValueError):
    """A result does not belong to the job it came back for."""


@dataclass(frozen=True)
class PseudonymisationPolicy:
    """The options a site names and the secret its pseudonyms are derived from.

    The secret makes pseudonyms unguessable from the originals; it is never logged or shown
    (``repr`` leaves it out). The ``pseudonyms`` table, not the secret, is what keeps them
    stable: a changed secret changes only jobs sent after the change.
    """

    secret: bytes = field(repr=False)
    options: frozenset[ProfileOption] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the pseudonymisation secret needs at least {MIN_SECRET_BYTES} bytes; "
                "make one with: head -c 32 /dev/urandom > pseudonym.key"
            )
        options = frozenset(self.options)
        unknown = [o for o in options if not isinstance(o, ProfileOption)]
        if unknown:
            raise ValueError(
                f"unknown de-identification option(s) {sorted(map(str, unknown))}; "
                f"choose from {[o.value for o in ProfileOption]}"
            )
        object.__setattr__(self, "options", options)

    @classmethod
    def from_secret_file(
        cls, path: Path, options: Iterable[ProfileOption | str] = ()
    ) -> PseudonymisationPolicy:
        """The policy with the secret read from ``path`` and options by value or member."""
        try:
            secret = Path(path).read_bytes()
        except OSError as error:
            raise ValueError(f"cannot read the pseudonymisation secret {path}: {error}") from None
        try:
            chosen = frozenset(ProfileOption(option) for option in options)
        except ValueError as error:
            raise ValueError(f"{error}; choose from {[o.value for o in ProfileOption]}") from None
        return cls(secret=secret, options=chosen)


class Pseudonymiser:
    """De-identified copies for one node's database, and results mapped back."""

    def __init__(self, conn: sqlite3.Connection, policy: PseudonymisationPolicy) -> None:
        self._conn = conn
        self._policy = policy
        self._kept_uids = retained_uid_keywords(policy.options)

    def pseudonymise(self, dataset: Dataset, *, job_key: str) -> Dataset:
        """A de-identified copy of ``dataset``; the same originals get the same pseudonyms
        in every call for ``job_key``, across restarts."""
        _require_job_key(job_key)
        if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
            raise PseudonymisationRefused(
                "the instance says its pixels carry burned-in annotation "
                "(BurnedInAnnotation YES); it cannot leave de-identified"
            )
        result = copy.deepcopy(dataset)
        originals = set[str]()

        def collect(uid: str) -> str:
            originals.add(uid)
            return uid

        _walk_uids(result, self._kept_uids, collect)
        patient = str(dataset.get("PatientID", "") or dataset.get("PatientName", ""))
        wanted = {(PseudonymKind.UID, uid) for uid in originals}
        wanted.add((PseudonymKind.PATIENT, patient))
        mapping = self._resolve(job_key, wanted)
        uids = {uid: mapping[(PseudonymKind.UID, uid)] for uid in originals}
        _walk_uids(result, self._kept_uids, uids.__getitem__)
        apply_profile(result, self._policy.options)
        code = mapping[(PseudonymKind.PATIENT, patient)]
        result.PatientName = f"Pseudonym^{code}"  # family^given, as PN wants
        result.PatientID = code
        result.PatientBirthDate = ""
        _mark_deidentified(result, self._policy.options)
        log.debug("pseudonymised an instance for job %s: %d UIDs replaced", job_key, len(uids))
        return result

    def reidentify(self, dataset: Dataset, *, job_key: str, source: Dataset) -> Dataset:
        """``dataset`` (a result made from this job's pseudonymised instances) with the
        original UIDs it references and the patient and study of ``source``.

        The result's own new UIDs (its SOP Instance and Series Instance UIDs) are not
        pseudonyms and stay as they are.
        """
        _require_job_key(job_key)
        rows = self._conn.execute(
            "SELECT pseudonym, original FROM pseudonyms WHERE job_key = ? AND kind = ?",
            (job_key, PseudonymKind.UID.value),
        ).fetchall()
        originals = {row[0]: row[1] for row in rows}
        result = copy.deepcopy(dataset)
        restored = 0

        def restore(uid: str) -> str:
            nonlocal restored
            if uid in originals:
                restored += 1
                return originals[uid]
            return uid

        _walk_uids(result, frozenset(), restore)
        if result.get("StudyInstanceUID") != source.get("StudyInstanceUID"):
            raise ReidentificationError(
                f"the result's StudyInstanceUID is not a pseudonym job {job_key} sent for "
                "this study; it is not relayed"
            )
        for keyword in PATIENT_AND_STUDY_KEYWORDS:
            if keyword in source:
                result[keyword] = copy.deepcopy(source[keyword])
            elif keyword in result:
                del result[keyword]
        for keyword in _DEIDENTIFICATION_MARKS:
            if keyword in result:
                del result[keyword]
        log.info("re-identified a result for job %s: %d UIDs restored", job_key, restored)
        return result

    def _resolve(
        self, job_key: str, wanted: set[tuple[PseudonymKind, str]]
    ) -> dict[tuple[PseudonymKind, str], str]:
        """Stored pseudonyms for ``wanted``, storing new ones first; one transaction."""
        now = time.time()
        rows = [
            (job_key, kind.value, original, self._derive(job_key, kind, original), now)
            for kind, original in sorted(wanted)
        ]
        with transaction(self._conn):
            self._conn.executemany(
                "INSERT INTO pseudonyms (job_key, kind, original, pseudonym, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_key, kind, original) DO NOTHING",
                rows,
            )
            stored = self._conn.execute(
                "SELECT kind, original, pseudonym FROM pseudonyms WHERE job_key = ?", (job_key,)
            ).fetchall()
        return {
            (PseudonymKind(row[0]), row[1]): row[2]
            for row in stored
            if (PseudonymKind(row[0]), row[1]) in wanted
        }

    def _derive(self, job_key: str, kind: PseudonymKind, original: str) -> str:
        message = "\0".join((kind.value, job_key, original)).encode()
        digest = hmac.new(self._policy.secret, message, hashlib.sha256).hexdigest()
        if kind is PseudonymKind.UID:
            return generate_uid(None, entropy_srcs=[digest])  # 2.25.<UUID from the digest>
        return f"PSN{digest[:16].upper()}"


def _require_job_key(job_key: str) -> None:
    if not job_key:
        raise ValueError("job_key must name the sending job (e.g. 'job-42'); got an empty one")


def _walk_uids(dataset: Dataset, kept: frozenset[str], change: Callable[[str], str]) -> None:
    """Pass every instance UID in ``dataset`` (file meta and sequences included) through
    ``change``: not class UIDs, the transfer syntax, the standard's own, or ``kept``."""

    def visit(_: Dataset, element: DataElement) -> None:
        keyword = element.keyword
        if (
            element.VR != "UI"
            or not element.value
            or keyword.endswith("ClassUID")
            or keyword in ("TransferSyntaxUID", *kept)
        ):
            return
        values = element.value if element.VM > 1 else [element.value]
        changed = [v if str(v).startswith(_DICOM_ROOT) else change(str(v)) for v in values]
        element.value = changed if element.VM > 1 else changed[0]

    file_meta = getattr(dataset, "file_meta", None)
    if file_meta is not None:
        file_meta.walk(visit)
    dataset.walk(visit)


def _mark_deidentified(dataset: Dataset, options: frozenset[ProfileOption]) -> None:
    """PatientIdentityRemoved, DeidentificationMethod(CodeSequence), as PS3.15 E.1.1 says."""
    codes = deidentification_codes(options)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = [meaning for _, meaning in codes]  # LO, 1-n
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    dataset.DeidentificationMethodCodeSequence = items
    full = ProfileOption.RETAIN_LONGITUDINAL_TEMPORAL_INFORMATION_FULL_DATES in options
    dataset.LongitudinalTemporalInformationModified = "UNMODIFIED" if full else "REMOVED"
