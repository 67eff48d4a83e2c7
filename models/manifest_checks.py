"""``ainode plugins check``: what a manifest's schema cannot see.

``models.manifest`` reads and validates ``plugin.yaml``; this module checks the things around
it: the model file exists and matches its sha256, the entry module exists, the codes are known
to pydicom's code dictionaries (SNOMED CT identifiers by their check digit), and an isolated
interpreter is executable. It imports ``models.manifest``, never the other way round: import
these names from here.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.manifest import CodeSpec, PluginManifest

__all__ = [
    "KNOWN_SCHEMES",
    "CheckProblem",
    "Severity",
    "check_manifest",
    "is_snomed_identifier",
    "model_file_problem",
    "sha256_of",
]


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"  # what a check found, for the operator (an image's engine, a MAP's paths)


@dataclass(frozen=True)
class CheckProblem:
    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.message}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Coding schemes a result SEG/SR may carry without a Coding Scheme Identification entry;
# private schemes start with "99" (PS3.3 C.12.1.1.2 / PS3.16 Section 8).
KNOWN_SCHEMES = frozenset({"SCT", "DCM", "LN", "UCUM", "RADLEX", "NCIt", "FMA", "SRT", "UMLS"})

_VERHOEFF_MULT = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_PERM = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def is_snomed_identifier(value: str) -> bool:
    """A SNOMED CT concept id: 6-18 digits whose last is a Verhoeff check digit."""
    if not value.isdigit() or not 6 <= len(value) <= 18:
        return False
    check = 0
    for position, digit in enumerate(reversed(value)):
        check = _VERHOEFF_MULT[check][_VERHOEFF_PERM[position % 8][int(digit)]]
    return check == 0


def _dcm_meanings(value: str) -> set[str]:
    from pydicom.sr import _concepts_dict

    return {
        meaning
        for by_value in _concepts_dict.concepts["DCM"].values()
        for code_value, (meaning, _cids) in by_value.items()
        if code_value == value
    }


def _check_code(where: str, spec: CodeSpec) -> list[CheckProblem]:
    label = f"{where}: {spec.scheme} {spec.value} ({spec.meaning!r})"
    if spec.scheme not in KNOWN_SCHEMES and not spec.scheme.startswith("99"):
        return [CheckProblem(Severity.ERROR, f"{label}: unknown coding scheme {spec.scheme!r}")]
    if spec.scheme == "SCT" and not is_snomed_identifier(spec.value):
        return [
            CheckProblem(Severity.ERROR, f"{label}: unknown code, not a valid SNOMED CT identifier")
        ]
    if spec.scheme == "DCM":
        meanings = _dcm_meanings(spec.value)
        if not meanings:
            return [CheckProblem(Severity.ERROR, f"{label}: unknown code, not in PS3.16 DCM")]
        if spec.meaning not in meanings:
            return [
                CheckProblem(Severity.WARNING, f"{label}: PS3.16 calls it {sorted(meanings)[0]!r}")
            ]
    return []


def model_file_problem(manifest: PluginManifest) -> str | None:
    """Why the model file cannot be trusted (missing, or not the file the manifest names)."""
    if manifest.model is None:
        return None
    model_path = manifest.model_path
    assert model_path is not None
    if not model_path.is_file():
        return f"model file {manifest.model.file} is missing"
    actual = sha256_of(model_path)
    if actual != manifest.model.sha256:
        return (
            f"model file {manifest.model.file}: sha256 mismatch "
            f"(manifest {manifest.model.sha256[:12]}…, file {actual[:12]}…)"
        )
    return None


def check_manifest(manifest: PluginManifest) -> list[CheckProblem]:
    """Problems the schema cannot see: files, checksums, codes, the isolated interpreter."""
    problems: list[CheckProblem] = []
    model_problem = model_file_problem(manifest)
    if model_problem is not None:
        problems.append(CheckProblem(Severity.ERROR, model_problem))
    if manifest.entry is not None:
        module = manifest.entry.split(":", 1)[0]
        module_file = manifest.directory / (module.replace(".", "/") + ".py")
        if not module_file.is_file():
            problems.append(
                CheckProblem(Severity.ERROR, f"entry module {module_file.name} is missing")
            )
    for segment in manifest.outputs.segments:
        where = f"outputs.segments[label {segment.label}]"
        problems += _check_code(f"{where}.category", segment.category)
        problems += _check_code(f"{where}.type", segment.type)
        if segment.anatomic_site is not None:
            problems += _check_code(f"{where}.anatomic_site", segment.anatomic_site)
    if manifest.python is not None and not os.access(manifest.python, os.X_OK):
        problems.append(
            CheckProblem(Severity.ERROR, f"python interpreter {manifest.python} is not executable")
        )
    return problems
