"""In a job's worker: send the selected series to the vendor's AI node.

The series goes by C-STORE or STOW-RS (the destination transport: token from a file or the
environment) as stored or, for an external product (``deidentify: true``),
pseudonymised first (``node.pseudonym``: the mapping stays in this node's database, keyed by
the job key, so a retry sends the same pseudonyms). A vendor that refuses the association,
is down or refuses an instance fails the attempt with a retryable error (backoff, then
FAILED); once everything is acknowledged the job waits for the vendor's results
(``WorkResult.vendor``), which ``node.vendors.stage`` takes from there. Either way the
WorkResult carries the audit events of the transfer (begun, then sent or failed), under the
original study and patient, for the node process to record.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from pydicom import dcmread

from models.manifest import PluginManifest
from models.vendor_spec import VendorNodeSpec
from node.audit.events import AuditEvent, InstancesSent, Outcome, Party, StudyRef, TransferBegun
from node.config import NodeConfig
from node.db import connect
from node.destination_settings import StowRsDestination
from node.dispatch.stowrs import SeriesFile, StowRsTransport
from node.jobs.work import VendorSent, WorkItem, WorkResult
from node.scu import AssociationFailed, Peer, send

__all__ = ["send_to_vendor"]

LOG = logging.getLogger(__name__)


def _pseudonymised(item: WorkItem, config: NodeConfig, folder: Path) -> tuple[list[Path], str, str]:
    """The series' pseudonymised copies in ``folder``, and the study and series UIDs they
    carry."""
    from node.pseudonym import Pseudonymiser
    from node.pseudonym_settings import site_policy

    policy = site_policy(config.pseudonymisation, config.storage.data_dir)
    conn = connect(config.storage.database_path)
    try:
        pseudonymiser = Pseudonymiser(conn, policy)
        paths, study, series = [], "", ""
        for index, path in enumerate(item.files):
            copy = pseudonymiser.pseudonymise(dcmread(path), job_key=item.job_key)
            study, series = str(copy.StudyInstanceUID), str(copy.SeriesInstanceUID)
            target = folder / f"{index:05d}.dcm"
            copy.save_as(target, enforce_file_format=True)
            paths.append(target)
        return paths, study, series
    finally:
        conn.close()


def _deliver(paths: list[Path], spec: VendorNodeSpec, config: NodeConfig) -> tuple[int, str | None]:
    """Send every file; (how many the vendor took, why not all, or None)."""
    if spec.stowrs_url is not None:
        return _stow(paths, spec)
    peer = Peer(spec.ae_title or "", spec.host or "", spec.port or 104)
    try:
        tls = config.tls.client_context(spec.verify_hostname) if spec.tls else None
        report = send(
            paths,
            peer,
            calling_ae=config.listener.ae_title,
            timeout_s=spec.network_timeout_s,
            tls=tls,
        )
    except (AssociationFailed, OSError) as exc:
        return 0, f"vendor {peer.ae_title} at {peer.host}:{peer.port} unreachable: {exc}"
    if report.ok:
        return report.sent, None
    return report.sent, (
        f"vendor {peer.ae_title} took {report.sent} of {len(paths)} instances; "
        f"{len(report.failed)} refused, e.g. {report.failed[0].reason}"
    )


def _stow(paths: list[Path], spec: VendorNodeSpec) -> tuple[int, str | None]:
    """STOW-RS through the destination transport (same token handling, same answers)."""
    assert spec.stowrs_url is not None
    transport = StowRsTransport(
        StowRsDestination(
            url=spec.stowrs_url,
            token_file=spec.token_file,
            token_env=spec.token_env,
            timeout_s=spec.network_timeout_s,
        )
    )
    rows = []
    for index, path in enumerate(paths):
        header = dcmread(path, stop_before_pixels=True)
        rows.append(SeriesFile(index, str(header.SOPInstanceUID), path))
    failures = [reason for reason in transport.deliver(rows).values() if reason is not None]
    if not failures:
        return len(rows), None
    return len(rows) - len(failures), (
        f"vendor STOW-RS {spec.stowrs_url} took {len(rows) - len(failures)} of {len(rows)} "
        f"instances; e.g. {failures[0]}"
    )


def _audit_events(
    item: WorkItem, manifest: PluginManifest, sent_at: float, problem: str | None
) -> tuple[AuditEvent, ...]:
    """Begin Transferring, then Instances Transferred (or its failure), for the audit trail."""
    spec = manifest.vendor
    assert spec is not None
    if spec.stowrs_url is not None:
        peer = Party(spec.stowrs_url)
    else:
        peer = Party(spec.ae_title or "", spec.host, spec.ae_title)
    classes: dict[str, int] = {}
    patient_id = None
    for path in item.files:
        header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "PatientID"])
        classes[str(header.SOPClassUID)] = classes.get(str(header.SOPClassUID), 0) + 1
        patient_id = patient_id or str(header.get("PatientID", "")) or None
    study = StudyRef(item.study_instance_uid, patient_id, tuple(sorted(classes.items())))
    outcome = Outcome.SUCCESS if problem is None else Outcome.MINOR_FAILURE
    return (
        TransferBegun(peer=peer, study=study, at=sent_at),
        InstancesSent(
            peer=peer, study=study, destination=manifest.key, result=outcome, description=problem
        ),
    )


def send_to_vendor(item: WorkItem, manifest: PluginManifest, config: NodeConfig) -> WorkResult:
    """Send the job's series to the vendor; the WorkResult says what went, or why not."""
    spec = manifest.vendor
    assert spec is not None  # runner dicom-node has its vendor section
    started = time.monotonic()
    sent_at = time.time()
    with tempfile.TemporaryDirectory(prefix="vendor-", dir=config.storage.data_dir) as temp:
        if spec.deidentify:
            paths, study, series = _pseudonymised(item, config, Path(temp))
        else:
            paths = list(item.files)
            study, series = item.study_instance_uid, item.series_instance_uid
        sent, problem = _deliver(paths, spec, config)
    audit = _audit_events(item, manifest, sent_at, problem)
    if problem is not None:
        return WorkResult(item.job_id, error=problem, retryable=True, audit=audit)
    LOG.info(
        "job %d: %d instance(s) of study %s sent to vendor %s%s",
        item.job_id,
        sent,
        study,
        manifest.key,
        " (pseudonymised)" if spec.deidentify else "",
    )
    return WorkResult(
        item.job_id,
        timings={"send": time.monotonic() - started},
        vendor=VendorSent(
            vendor=manifest.key,
            results_from=spec.results_from,
            study_instance_uid=study,
            series_instance_uid=series,
            deidentified=spec.deidentify,
            instances=sent,
            sent_at=sent_at,
            result_timeout_s=spec.result_timeout_s,
            quiet_s=spec.quiet_s,
        ),
        audit=audit,
    )
