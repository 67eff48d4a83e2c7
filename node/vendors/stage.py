"""``VendorStage``: the results a vendor's node sent back become the waiting job's results.

Every AWAITING_VENDOR job has a ``vendor_requests`` row: the calling AE title its results come
from and the study and series UIDs it sent (pseudonyms when de-identified). Results in the
inbox from that AE for that study, received after the send and referencing that series (one
that references none belongs to the job only when no other job waits on the same study and
vendor), are the job's. Once none has arrived for ``quiet_s`` they are taken together:
re-identified where the series left pseudonymised, checked (the source's patient and study,
UIDs of their own, a result kind destinations take, ``validate-dicom`` where configured),
written to the job's output folder and committed as its results with their outbox rows and
SUCCEEDED, in one transaction. A job with nothing back by ``expires_at`` fails with the
reason; what arrives later stays in the inbox and ``ainode vendors`` shows it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable

from pydicom import Dataset, dcmread

from models.api import ProductInstance
from models.containers.collect import OutputRefused, check_product_instance
from node.config import NodeConfig
from node.db import connect, transaction
from node.jobs import table
from node.jobs.results import job_key, kinds_by_destination, series_files, store_results
from node.jobs.table import Job
from node.jobs.work import ResultFile, WorkResult
from node.jobs.worker import write_atomically
from node.outputs.relay import RelayRefused, default_validator, relayed_results
from node.shared_types import RetryPolicy
from node.vendors.inbox import inbox_dir

__all__ = ["VendorStage"]

LOG = logging.getLogger(__name__)
POLL_S = 0.5


class VendorStage:
    """Polls the jobs that wait for vendors, on its own thread."""

    name = "vendors"

    def __init__(self, config: NodeConfig, on_results: Callable[[], None] | None = None) -> None:
        self.config = config
        self.on_results = on_results
        self.policy = RetryPolicy(
            config.jobs.max_attempts, config.jobs.backoff_s, config.jobs.backoff_max_s
        )
        self.validator = default_validator(config.containers.validator)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._references: dict[str, frozenset[str]] = {}  # inbox instance → series it cites

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vendors", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        conn = connect(self.config.storage.database_path)
        try:
            while not self._stop.wait(POLL_S):
                try:
                    self.run_once(conn)
                except Exception:
                    LOG.exception("vendor results: pass failed; trying again")
        finally:
            conn.close()

    def run_once(self, conn: sqlite3.Connection, now: float | None = None) -> int:
        """Settle every waiting job whose results are complete or overdue; how many."""
        now = time.time() if now is None else now
        waiting = conn.execute(
            "SELECT r.* FROM vendor_requests r JOIN jobs j ON j.id = r.job_id "
            "WHERE j.state = 'AWAITING_VENDOR' ORDER BY r.sent_at"
        ).fetchall()
        settled = 0
        waiting_per_study = Counter((r["results_from"], r["study_instance_uid"]) for r in waiting)
        for request in waiting:
            candidates = conn.execute(
                "SELECT * FROM vendor_inbox WHERE calling_ae = ? AND study_instance_uid = ? "
                "AND state = 'NEW' AND received_at >= ? ORDER BY received_at",
                (request["results_from"], request["study_instance_uid"], request["sent_at"]),
            ).fetchall()
            alone = waiting_per_study[request["results_from"], request["study_instance_uid"]] == 1
            arrived = [
                row
                for row in candidates
                if self._belongs(row, request["series_instance_uid"], alone)
            ]
            if arrived and now - arrived[-1]["received_at"] >= request["quiet_s"]:
                self._settle(conn, request, arrived)
                settled += 1
            elif not arrived and now >= request["expires_at"]:
                waited = request["expires_at"] - request["sent_at"]
                error = (
                    f"vendor {request['vendor']} ({request['results_from']}) sent no results "
                    f"within {waited:g} s of receiving {request['instances_sent']} instance(s); "
                    "results that arrive later are kept (ainode vendors)"
                )
                table.fail(conn, request["job_id"], error, retryable=False, policy=self.policy)
                LOG.error("job %d: %s", request["job_id"], error)
                settled += 1
        return settled

    def _belongs(self, row: sqlite3.Row, series: str, alone: bool) -> bool:
        """A result is the job's when it references the series sent; one that references no
        series is the job's only when no other job waits on the same study and vendor."""
        key = row["sop_instance_uid"]
        if key not in self._references:
            header = dcmread(inbox_dir(self.config) / row["path"], stop_before_pixels=True)
            self._references[key] = referenced_series(header)
        referenced = self._references[key]
        return series in referenced if referenced else alone

    def _settle(self, conn: sqlite3.Connection, request: sqlite3.Row, rows: list) -> None:
        job = table.get_job(conn, request["job_id"])
        assert job is not None
        started = time.monotonic()
        try:
            files = self._relay(conn, job, bool(request["deidentified"]), rows)
        except (OutputRefused, RelayRefused, ValueError, OSError) as exc:
            error = f"vendor results refused: {exc}"
            table.fail(conn, job.id, error, retryable=False, policy=self.policy)
            self._mark(conn, rows, job.id, "REFUSED")
            LOG.error("job %d: %s", job.id, error)
            return
        result = WorkResult(job.id, files, {"vendor_results": time.monotonic() - started})
        if store_results(conn, job, result, self.config):
            self._mark(conn, rows, job.id, "RELAYED")
            LOG.info("job %d: %d result(s) from the vendor relayed", job.id, len(files))
            if self.on_results is not None:
                self.on_results()

    @staticmethod
    def _mark(conn: sqlite3.Connection, rows: list, job_id: int, state: str) -> None:
        with transaction(conn):
            conn.executemany(
                "UPDATE vendor_inbox SET state = ?, job_id = ? WHERE sop_instance_uid = ?",
                [(state, job_id, row["sop_instance_uid"]) for row in rows],
            )

    def _relay(
        self, conn: sqlite3.Connection, job: Job, deidentified: bool, rows: list
    ) -> tuple[ResultFile, ...]:
        sources = series_files(conn, job, self.config.storage.spool_dir)
        if not sources:
            raise ValueError(f"the source series {job.series_instance_uid} is no longer stored")
        source = dcmread(sources[0], stop_before_pixels=True)
        source_uids = {  # from the index: the source files are not read again
            r[0]
            for r in conn.execute(
                "SELECT sop_instance_uid FROM instances WHERE series_instance_uid = ?",
                (job.series_instance_uid,),
            )
        }
        folder = inbox_dir(self.config)
        instances = []
        for row in rows:
            dataset = dcmread(folder / row["path"])
            if deidentified:
                dataset = _reidentified(conn, self.config, dataset, job, source)
            check_product_instance(
                dataset,
                row["sop_instance_uid"],
                study_uid=job.study_instance_uid,
                patient_id=str(source.get("PatientID", "")),
                series_uid=job.series_instance_uid,
                source_uids=source_uids,
            )
            instances.append(ProductInstance(dataset, row["sop_instance_uid"]))
        _, by_destination = kinds_by_destination(conn, job, self.config)
        wanted = {kind for kinds in by_destination.values() for kind in kinds}
        outputs_root = self.config.storage.outputs_dir
        output_dir = outputs_root / f"job-{job.id}"
        written = write_atomically(
            (result, output_dir / f"{result.kind.value}-{result.sop_instance_uid}.dcm")
            for result in relayed_results(instances, wanted, sources, self.validator)
        )
        return tuple(
            ResultFile(
                sop_instance_uid=result.sop_instance_uid,
                sop_class_uid=result.sop_class_uid,
                kind=result.kind,
                path=str(path.relative_to(outputs_root)),
            )
            for result, path in written
        )


def referenced_series(header: Dataset) -> frozenset[str]:
    """The series a result says it was made from: a SEG's Referenced Series Sequence, an SR's
    evidence (Current Requested Procedure / Pertinent Other Evidence)."""
    found: set[str] = set()
    for item in header.get("ReferencedSeriesSequence", []):
        found.add(str(item.get("SeriesInstanceUID", "")))
    for evidence in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in header.get(evidence, []):
            for item in study.get("ReferencedSeriesSequence", []):
                found.add(str(item.get("SeriesInstanceUID", "")))
    found.discard("")
    return frozenset(found)


def _reidentified(
    conn: sqlite3.Connection, config: NodeConfig, dataset: Dataset, job: Job, source: Dataset
) -> Dataset:
    from node.pseudonym import Pseudonymiser
    from node.pseudonym_settings import site_policy

    policy = site_policy(config.pseudonymisation, config.storage.data_dir)
    return Pseudonymiser(conn, policy).reidentify(dataset, job_key=job_key(job), source=source)
