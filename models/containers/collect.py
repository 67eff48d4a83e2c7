"""What a product left in its output folder → ``Findings``.

* DICOM files (Part 10 ``DICM`` preamble, or any ``*.dcm``) become ``Findings.instances``,
  relayed as the job's results after these checks: readable, the source's patient and study,
  a SOP instance UID that is not a source instance, a series of its own.
* ``findings.json`` (``models.containers.findings_json``) becomes segments, findings and a
  report, which ainode's own builders turn into SEG and TID 1500 SR.
* Anything else (logs, PNG previews) is left alone. Nothing usable, a ``.dcm`` that is not
  DICOM, or more than ``MAX_OUTPUT_BYTES`` fails the job with ``OutputRefused``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from pydicom import Dataset, dcmread

from models.api import AlgorithmIdentification, Findings, PluginInput, ProductInstance
from models.containers.findings_json import FINDINGS_FILE, FindingsFileError, read_findings
from models.errors import PermanentPluginError

__all__ = ["MAX_OUTPUT_BYTES", "OutputRefused", "check_product_instance", "collect_outputs"]

MAX_OUTPUT_BYTES = 4 << 30
_PREAMBLE = 128


class OutputRefused(PermanentPluginError):
    """The product's output folder holds nothing usable, or something wrong."""


def _is_part10(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(_PREAMBLE)
        return handle.read(4) == b"DICM"


def check_product_instance(
    dataset: Dataset,
    name: str,
    *,
    study_uid: str,
    patient_id: str,
    series_uid: str,
    source_uids: Collection[str],
) -> None:
    """A product's DICOM belongs to the source's patient and study and has UIDs of its own
    (a container's output, or what a vendor's node sent back); OutputRefused says why not."""
    if str(dataset.get("StudyInstanceUID", "")) != study_uid:
        raise OutputRefused(
            f"{name} belongs to study {dataset.get('StudyInstanceUID')}, not the source study "
            f"{study_uid}"
        )
    if str(dataset.get("PatientID", "")) != patient_id:
        raise OutputRefused(f"{name} names another patient (Patient ID differs from the source)")
    if str(dataset.get("SeriesInstanceUID", "")) == series_uid:
        raise OutputRefused(f"{name} reuses the source's Series Instance UID")
    if str(dataset.get("SOPInstanceUID", "")) in source_uids:
        raise OutputRefused(f"{name} reuses a source SOP Instance UID ({dataset.SOPInstanceUID})")


def collect_outputs(
    folder: Path, series: PluginInput, algorithm: AlgorithmIdentification
) -> Findings:
    """Everything usable in ``folder``; OutputRefused when nothing is, or something is wrong."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    total = sum(p.stat().st_size for p in files)
    if total > MAX_OUTPUT_BYTES:
        raise OutputRefused(
            f"the product wrote {total / 2**30:.1f} GiB, more than the "
            f"{MAX_OUTPUT_BYTES / 2**30:.0f} GiB a job may return"
        )
    findings: Findings | None = None
    instances: list[ProductInstance] = []
    source_uids = {s.sop_instance_uid for s in series.sources}
    for path in files:
        name = str(path.relative_to(folder))
        if name == FINDINGS_FILE:
            try:
                findings = read_findings(folder, series)
            except FindingsFileError as exc:
                raise OutputRefused(str(exc)) from exc
            continue
        if not (path.suffix.lower() == ".dcm" or _is_part10(path)):
            continue
        try:
            dataset = dcmread(path)
            instance = ProductInstance(dataset, name)
        except Exception as exc:  # pydicom raises many kinds on garbage
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise OutputRefused(f"{name} is not readable DICOM: {reason}") from exc
        check_product_instance(
            dataset,
            name,
            study_uid=series.study_instance_uid,
            patient_id=str(series.headers[0].get("PatientID", "")) if series.headers else "",
            series_uid=series.series_instance_uid,
            source_uids=source_uids,
        )
        instances.append(instance)
    uids = [str(i.dataset.SOPInstanceUID) for i in instances]
    if len(uids) != len(set(uids)):
        raise OutputRefused("the product wrote two files with one SOP Instance UID")
    if findings is None and not instances:
        raise OutputRefused(
            f"the product wrote no DICOM and no {FINDINGS_FILE} into its output folder"
        )
    return replace(findings or Findings(algorithm=algorithm), instances=tuple(instances))
