"""What travels between the node and its workers: the job ticket on the queue, and the
reports a worker makes over the node's HTTP API. JSON only (no pickle on the broker)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from node.shared_types import OutputKind

#: the one Celery task: run a job ticket
TASK_NAME = "ainode.run_job"
QUEUE_PREFIX = "ainode.plugin."


def queue_for(plugin: str) -> str:
    """One queue per plugin: a worker consumes the queues of the plugins it has installed,
    so it is never handed a job it cannot run, and a plugin's backlog stays in its queue."""
    return f"{QUEUE_PREFIX}{plugin}"


def task_id_for(job_id: int, attempt: int) -> str:
    """Deterministic: the node revokes an attempt by this id, after a restart too."""
    return f"ainode-job-{job_id}-attempt-{attempt}"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeriesFile(_Message):
    """One instance of the job's series: fetched by index over HTTP, or read at ``path`` on
    storage the node and the worker share."""

    index: int
    size: int
    sha256: str
    path: str | None = Field(None, description="shared transfer: the file on the shared mount")


class JobTicket(_Message):
    """One attempt of one job, as published on the plugin's queue."""

    job_id: int
    job_key: str
    attempt: int
    study_instance_uid: str
    study_version: int
    series_instance_uid: str
    plugin: str
    plugin_version: str = Field(description="resolved by the node: the worker must have it")
    manifest_sha256: str = Field(description="the node's plugin.yaml: a different one refuses")
    output_kinds: tuple[OutputKind, ...]
    predecessor_sr: tuple[str, str, str, str] | None = None
    outputs: dict[str, Any] = Field(description="node.yaml outputs: how results are built")
    timeout_s: float
    files: tuple[SeriesFile, ...]


class ResultUpload(_Message):
    """A result file the worker uploaded (or wrote to the shared outputs folder)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,200}$")
    sop_instance_uid: str
    sop_class_uid: str
    kind: OutputKind


class Started(_Message):
    worker: str


class Finished(_Message):
    """How the attempt ended on the worker."""

    worker: str
    results: tuple[ResultUpload, ...] = ()
    timings: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    retryable: bool = False


class Heartbeat(_Message):
    """A worker says it is alive and what it serves, every few seconds."""

    worker: str
    queues: tuple[str, ...]
    devices: tuple[str, ...]
    plugins: tuple[str, ...]
    started_at: float


def manifest_digest(directory: Path | None, version: str) -> str:
    """sha256 of the plugin.yaml a version was read from (of the version string for an entry
    point plugin): node and worker must run the very same manifest, not only its number."""
    manifest = directory / "plugin.yaml" if directory is not None else None
    if manifest is not None and manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    return hashlib.sha256(version.encode()).hexdigest()
