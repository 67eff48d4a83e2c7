"""The pipeline a worker process runs for one job: load → plugin(s) → outputs → files.

``PipelineRunner`` is built once per worker process, so its ``PluginHost`` keeps models warm
across jobs. It writes the result files (atomically: temp file, fsync, rename) and reports
them; the node commits them with the job (``node.jobs.results.store_results``). Errors come
back as a ``WorkResult`` whose text is what ``ainode jobs`` shows; a series that cannot be
decoded or a plugin that is not installed is not retried, a plugin error or timeout is.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from models.api import AlgorithmIdentification, Findings
from models.containers.plugin import JOB_LOG_DIR
from models.errors import PermanentPluginError, PluginError, PluginTimeout
from models.loading import SeriesLoadError, load_plugin_input
from models.manifest import PluginManifest, RunnerKind
from node.config import NodeConfig
from node.db import connect
from node.durable import fsync_dir
from node.jobs.host import plugin_host_for
from node.jobs.work import ResultFile, WorkItem, WorkResult
from node.outputs import (
    OutputBuildError,
    OutputContext,
    PredecessorDocument,
    ResultInstance,
    iter_outputs,
)
from node.outputs.relay import RelayRefused, default_validator, relayed_results
from node.shadow import masks_dir_for, record_if_shadowed
from node.vendors.send import send_to_vendor

__all__ = ["PipelineRunner", "write_atomically"]

LOG = logging.getLogger(__name__)


def write_atomically(
    results: Iterable[tuple[ResultInstance, Path]],
) -> list[tuple[ResultInstance, Path]]:
    """Write result files so that a crash or an error leaves each old file or its new one,
    never half, and no temp file; return the (result, path) pairs written.

    Each result goes to a temp file beside its path on a writer thread as soon as it comes
    (a SEG's write and fsync, most of a second for a long CT, overlap the building of the
    reports), then all are renamed into place and each folder is fsynced once.
    """
    written: list[tuple[ResultInstance, Path]] = []
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="result-writer") as writer:
            pending = []
            for result, path in results:
                path.parent.mkdir(parents=True, exist_ok=True)
                written.append((result, path))
                pending.append(writer.submit(_write_synced, result, _temp_path(path)))
            for future in pending:
                future.result()
        for _, path in written:
            os.replace(_temp_path(path), path)
    except BaseException:
        for _, path in written:  # the writer has stopped: nothing recreates them
            _temp_path(path).unlink(missing_ok=True)
        raise
    for folder in {path.parent for _, path in written}:
        fsync_dir(folder)
    return written


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_synced(result: ResultInstance, path: Path) -> None:
    with open(path, "wb") as handle:
        result.dataset.save_as(handle, enforce_file_format=True)
        handle.flush()
        os.fsync(handle.fileno())


class PipelineRunner:
    """Runs work items with warm plugins; one per worker process."""

    def __init__(self, config: NodeConfig, record_shadow: bool = True) -> None:
        self.config = config
        self.host = plugin_host_for(config)
        self.validator = default_validator(config.containers.validator)
        #: a remote worker has no job table: the shadow report covers the node's own jobs
        self.record_shadow = record_shadow

    def run(self, item: WorkItem) -> WorkResult:
        timings: dict[str, float] = {}
        handed_over = time.monotonic()
        try:
            chain = self.host.resolve_chain(item.plugin, item.plugin_version)
        except PluginError as exc:
            return WorkResult(item.job_id, error=f"plugin unavailable: {exc}", timings=timings)
        if chain[-1].runner is RunnerKind.DICOM_NODE:  # the vendor's node runs it: send
            return send_to_vendor(item, chain[-1], self.config)
        started = time.monotonic()
        try:
            plugin_input = load_plugin_input(item.files)
        except SeriesLoadError as exc:
            return WorkResult(item.job_id, error=f"cannot load series: {exc}", timings=timings)
        except OSError as exc:
            return WorkResult(
                item.job_id, error=f"cannot read series: {exc}", retryable=True, timings=timings
            )
        timings["load"] = time.monotonic() - started

        started = time.monotonic()
        try:
            left = self.config.jobs.timeout_s - (time.monotonic() - handed_over)
            keep_logs = JOB_LOG_DIR.set(item.output_dir)  # a container's log stays with the job
            try:
                findings = self.host.run(
                    item.plugin, item.plugin_version, plugin_input, timeout_s=max(1.0, left)
                )
            finally:
                JOB_LOG_DIR.reset(keep_logs)
        except PluginTimeout as exc:
            return self._failed(item, f"plugin timed out: {exc}", timings)
        except PermanentPluginError as exc:
            return WorkResult(item.job_id, error=str(exc), timings=timings)
        except PluginError as exc:
            return self._failed(item, str(exc), timings)
        timings["inference"] = time.monotonic() - started
        if self.record_shadow:
            self._record_shadow(item, findings, chain[-1])

        started = time.monotonic()
        manifest = chain[-1]
        context = OutputContext.from_config(
            self.config.outputs,
            job_id=item.job_key,
            plugin_name=manifest.name,
            plugin_version=manifest.version,
            outputs=item.output_kinds,
            predecessor=_predecessor(item.predecessor_sr),
            fractional_segmentation=manifest.outputs.fractional,
        )
        relayed = relayed_results(
            findings.instances, context.outputs, plugin_input.files, self.validator
        )
        try:
            built = itertools.chain(iter_outputs(findings, plugin_input, context), relayed)
            files = self._write(item, built)
        except RelayRefused as exc:
            return WorkResult(item.job_id, error=f"product output refused: {exc}", timings=timings)
        except OutputBuildError as exc:
            # a builder refusing these findings: the same inputs fail the same way again (a
            # bug in a builder is no refusal: it reaches the executor, traceback and all)
            return WorkResult(
                item.job_id,
                error=f"cannot build outputs: {type(exc).__name__}: {exc}",
                timings=timings,
            )
        timings["build"] = time.monotonic() - started
        return WorkResult(item.job_id, files, timings)

    def close(self) -> None:
        self.host.close()

    @staticmethod
    def _failed(item: WorkItem, error: str, timings: dict[str, float]) -> WorkResult:
        return WorkResult(item.job_id, error=error, retryable=True, timings=timings)

    def _write(self, item: WorkItem, built: Iterable[ResultInstance]) -> tuple[ResultFile, ...]:
        written = write_atomically(
            (result, item.output_dir / f"{result.kind.value}-{result.sop_instance_uid}.dcm")
            for result in built
        )
        return tuple(
            ResultFile(
                sop_instance_uid=result.sop_instance_uid,
                sop_class_uid=result.sop_class_uid,
                kind=result.kind,
                path=str(path.relative_to(item.outputs_root)),
            )
            for result, path in written
        )

    def _record_shadow(self, item: WorkItem, findings: Findings, ran: PluginManifest) -> None:
        """Keep findings for the production/shadow agreement report (best effort)."""
        storage = self.config.storage
        try:
            conn = connect(storage.database_path)
            try:
                record_if_shadowed(
                    conn,
                    item.job_id,
                    findings,
                    masks_dir_for(storage.data_dir),
                    AlgorithmIdentification(ran.name, ran.version),
                )
            finally:
                conn.close()
        except Exception:
            LOG.exception("job %d: could not record findings for the shadow report", item.job_id)


def _predecessor(uids: tuple[str, str, str, str] | None) -> PredecessorDocument | None:
    if uids is None:
        return None
    study, series, sop_instance, sop_class = uids
    return PredecessorDocument(study, series, sop_instance, sop_class)
