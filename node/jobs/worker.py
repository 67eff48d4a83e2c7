"""The pipeline a worker process runs for one job: load → plugin(s) → outputs → files.

``PipelineRunner`` is built once per worker process, so its ``PluginHost`` keeps models warm
across jobs. It writes the result files (atomically: temp file, fsync, rename) and reports
them; the node commits them with the job (``node.jobs.results.store_results``). Errors come
back as a ``WorkResult`` whose text is what ``ainode jobs`` shows; a series that cannot be
decoded or a plugin that is not installed is not retried, a plugin error or timeout is.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from models.api import Findings
from models.loading import SeriesLoadError, load_plugin_input
from models.runtime import PermanentPluginError, PluginError, PluginHost, PluginTimeout
from models.shadow import masks_dir_for, record_if_shadowed
from node.config import NodeConfig
from node.db import connect
from node.jobs.work import ResultFile, WorkItem, WorkResult
from node.outputs import OutputContext, PredecessorDocument, ResultInstance, build_outputs

__all__ = ["PipelineRunner", "write_atomically"]

LOG = logging.getLogger(__name__)


def write_atomically(result: ResultInstance, path: Path) -> None:
    """Write a result file so that a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    result.dataset.save_as(temp, enforce_file_format=True)
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class PipelineRunner:
    """Runs work items with warm plugins; one per worker process."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.host = PluginHost.from_config(config)

    def run(self, item: WorkItem) -> WorkResult:
        timings: dict[str, float] = {}
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
            chain = self.host.resolve_chain(item.plugin, item.plugin_version)
        except PluginError as exc:
            return WorkResult(item.job_id, error=f"plugin unavailable: {exc}", timings=timings)
        try:
            findings = self.host.run(item.plugin, item.plugin_version, plugin_input)
        except PluginTimeout as exc:
            return self._failed(item, f"plugin timed out: {exc}", timings)
        except PermanentPluginError as exc:
            return WorkResult(item.job_id, error=str(exc), timings=timings)
        except PluginError as exc:
            return self._failed(item, str(exc), timings)
        timings["inference"] = time.monotonic() - started
        self._record_shadow(item, findings)

        started = time.monotonic()
        manifest = chain[-1]
        context = OutputContext.from_config(
            self.config.outputs,
            job_id=item.job_key,
            study_version=item.study_version,
            plugin_name=manifest.name,
            plugin_version=manifest.version,
            outputs=item.output_kinds,
            predecessor=_predecessor(item.predecessor_sr),
            fractional_segmentation=manifest.outputs.fractional,
        )
        try:
            built = build_outputs(findings, plugin_input, context)
            files = self._write(item, built)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            # a builder refusing these findings: the same inputs fail the same way again
            return WorkResult(
                item.job_id,
                error=f"cannot build outputs: {type(exc).__name__}: {exc}",
                timings=timings,
            )
        timings["build"] = time.monotonic() - started
        return WorkResult(item.job_id, files, timings)

    @staticmethod
    def _failed(item: WorkItem, error: str, timings: dict[str, float]) -> WorkResult:
        return WorkResult(item.job_id, error=error, retryable=True, timings=timings)

    def _write(self, item: WorkItem, built: Sequence[ResultInstance]) -> tuple[ResultFile, ...]:
        files = []
        for result in built:
            path = item.output_dir / f"{result.kind.value}-{result.sop_instance_uid}.dcm"
            write_atomically(result, path)
            files.append(
                ResultFile(
                    sop_instance_uid=result.sop_instance_uid,
                    sop_class_uid=result.sop_class_uid,
                    kind=result.kind,
                    path=str(path.relative_to(item.outputs_root)),
                )
            )
        return tuple(files)

    def _record_shadow(self, item: WorkItem, findings: Findings) -> None:
        """Keep findings for the production/shadow agreement report (best effort)."""
        storage = self.config.storage
        try:
            conn = connect(storage.database_path)
            try:
                record_if_shadowed(conn, item.job_id, findings, masks_dir_for(storage.data_dir))
            finally:
                conn.close()
        except Exception:
            LOG.exception("job %d: could not record findings for the shadow report", item.job_id)


def _predecessor(uids: tuple[str, str, str, str] | None) -> PredecessorDocument | None:
    if uids is None:
        return None
    study, series, sop_instance, sop_class = uids
    return PredecessorDocument(study, series, sop_instance, sop_class)
