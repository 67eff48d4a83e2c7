"""In a job's worker: send the selected series to the vendor's AI node.

The series goes by C-STORE as stored or, for an external product (``deidentify: true``),
pseudonymised first (``node.pseudonym``: the mapping stays in this node's database, keyed by
the job key, so a retry sends the same pseudonyms). A vendor that refuses the association,
is down or refuses an instance fails the attempt with a retryable error (backoff, then
FAILED); once everything is acknowledged the job waits for the vendor's results
(``WorkResult.vendor``), which ``node.vendors.stage`` takes from there.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from pydicom import dcmread

from models.manifest import PluginManifest
from node.config import NodeConfig
from node.db import connect
from node.jobs.work import VendorSent, WorkItem, WorkResult
from node.scu import AssociationFailed, Peer, send

__all__ = ["send_to_vendor"]

LOG = logging.getLogger(__name__)


def _pseudonymised(item: WorkItem, config: NodeConfig, folder: Path) -> tuple[list[Path], str]:
    """The series' pseudonymised copies in ``folder``, and the study UID they carry."""
    from node.pseudonym import Pseudonymiser
    from node.pseudonym_settings import site_policy

    policy = site_policy(config.pseudonymisation, config.storage.data_dir)
    conn = connect(config.storage.database_path)
    try:
        pseudonymiser = Pseudonymiser(conn, policy)
        paths, study = [], ""
        for index, path in enumerate(item.files):
            copy = pseudonymiser.pseudonymise(dcmread(path), job_key=item.job_key)
            study = str(copy.StudyInstanceUID)
            target = folder / f"{index:05d}.dcm"
            copy.save_as(target, enforce_file_format=True)
            paths.append(target)
        return paths, study
    finally:
        conn.close()


def send_to_vendor(item: WorkItem, manifest: PluginManifest, config: NodeConfig) -> WorkResult:
    """Send the job's series to the vendor; the WorkResult says what went, or why not."""
    spec = manifest.vendor
    assert spec is not None  # runner dicom-node has its vendor section
    if spec.stowrs_url is not None:
        return WorkResult(
            item.job_id,
            error=f"{manifest.key}: sending to a vendor by STOW-RS is not built yet; use C-STORE",
        )
    started = time.monotonic()
    sent_at = time.time()
    peer = Peer(spec.ae_title or "", spec.host or "", spec.port or 104)
    with tempfile.TemporaryDirectory(prefix="vendor-", dir=config.storage.data_dir) as temp:
        if spec.deidentify:
            paths, study = _pseudonymised(item, config, Path(temp))
        else:
            paths, study = list(item.files), item.study_instance_uid
        try:
            report = send(
                paths,
                peer,
                calling_ae=config.listener.ae_title,
                timeout_s=spec.network_timeout_s,
            )
        except (AssociationFailed, OSError) as exc:
            return WorkResult(
                item.job_id,
                error=f"vendor {peer.ae_title} at {peer.host}:{peer.port} unreachable: {exc}",
                retryable=True,
            )
    if not report.ok:
        first = report.failed[0]
        return WorkResult(
            item.job_id,
            error=(
                f"vendor {peer.ae_title} took {report.sent} of {len(paths)} instances; "
                f"{len(report.failed)} refused, e.g. {first.reason}"
            ),
            retryable=True,
        )
    LOG.info(
        "job %d: %d instance(s) of study %s sent to vendor %s%s",
        item.job_id,
        report.sent,
        study,
        peer.ae_title,
        " (pseudonymised)" if spec.deidentify else "",
    )
    return WorkResult(
        item.job_id,
        timings={"send": time.monotonic() - started},
        vendor=VendorSent(
            vendor=manifest.key,
            results_from=spec.results_from,
            study_instance_uid=study,
            deidentified=spec.deidentify,
            instances=report.sent,
            sent_at=sent_at,
            result_timeout_s=spec.result_timeout_s,
            quiet_s=spec.quiet_s,
        ),
    )
