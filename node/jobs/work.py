"""What the executor hands a worker process and what comes back: small picklable records.

A ``WorkItem`` carries everything a worker needs without touching the database (the series'
files, where to write, how to label); a ``WorkResult`` says which result files it wrote, or
why it could not. Only the node process writes the job table, so the same records serve a
local process pool and a remote queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from node.audit.events import AuditEvent
from node.shared_types import OutputKind


@dataclass(frozen=True)
class WorkItem:
    """One attempt of one job."""

    job_id: int
    job_key: str  # stable across attempts and database resets: seeds the result UIDs
    attempt: int
    study_instance_uid: str
    study_version: int
    series_instance_uid: str
    plugin: str
    plugin_version: str | None
    files: tuple[Path, ...]  # the series' spool files, absolute
    output_dir: Path  # absolute; the worker writes its result files here
    outputs_root: Path  # result paths are stored relative to this
    output_kinds: tuple[OutputKind, ...]
    predecessor_sr: tuple[str, str, str, str] | None = None  # study, series, sop, class UIDs

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError(f"job {self.job_id}: the series has no stored instances")
        if not self.output_dir.is_relative_to(self.outputs_root):
            raise ValueError(f"output_dir {self.output_dir} is outside {self.outputs_root}")


@dataclass(frozen=True)
class ResultFile:
    """A result instance a worker wrote (path relative to the outputs folder)."""

    sop_instance_uid: str
    sop_class_uid: str
    kind: OutputKind
    path: str


@dataclass(frozen=True)
class VendorSent:
    """What a job's worker sent to the vendor (handed to the executor in ``WorkResult``)."""

    vendor: str  # the plugin key standing for the vendor
    results_from: str
    study_instance_uid: str  # as sent: the pseudonym when de-identified
    series_instance_uid: str  # as sent, too: the results reference it
    deidentified: bool
    instances: int
    sent_at: float
    result_timeout_s: float
    quiet_s: float


@dataclass(frozen=True)
class WorkResult:
    """How an attempt ended: result files, or an error and whether trying again may help."""

    job_id: int
    results: tuple[ResultFile, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    retryable: bool = False
    vendor: VendorSent | None = None  # sent to a vendor's node: the job now awaits its results
    #: What the worker did that the audit trail records (the node process records it).
    audit: tuple[AuditEvent, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


class JobRunner(Protocol):
    """Runs work items inside a worker process; built once per process, so models stay warm."""

    def run(self, item: WorkItem) -> WorkResult: ...

    def close(self) -> None:
        """The worker is stopping: release what the runner holds (warm containers, isolated
        interpreters)."""
