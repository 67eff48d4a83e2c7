"""The job's two ends in the database: the work item it starts from, the results it leaves.

``work_item_for`` gathers what a worker needs (the series' spool files, the output folder, the
output kinds its destinations take) and refuses, before any model runs, a job whose route
names a destination node.yaml does not define. ``store_results`` commits the result rows, one
outbox row per (result, destination that takes its kind) and SUCCEEDED in a single transaction.
What a destination takes may depend on the source (``viewer_profile``), so both ends ask
``kinds_by_destination``, which reads the series' kind from the index.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    BreastProjectionXRayImageStorageForPresentation,
    BreastProjectionXRayImageStorageForProcessing,
    ComputedRadiographyImageStorage,
    DigitalIntraOralXRayImageStorageForPresentation,
    DigitalIntraOralXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedXAImageStorage,
    EnhancedXRFImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)

from node.config import NodeConfig
from node.db import transaction
from node.destination_settings import Destination
from node.dispatch.outbox import enqueue
from node.jobs import table
from node.jobs.table import Job
from node.jobs.work import WorkItem, WorkResult
from node.shared_types import PROFILE_DEFAULTS, OutputKind, SourceKind, ViewerProfile

__all__ = [
    "eligible_destinations",
    "job_key",
    "kinds_by_destination",
    "series_files",
    "source_kind_of",
    "store_results",
    "work_item_for",
]

# Projection X-ray, by Modality or by SOP class (a CR or DX header may name another modality).
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "IO", "PX", "RG", "XA", "RF"})
PROJECTION_SOP_CLASSES = frozenset(
    {
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
        DigitalMammographyXRayImageStorageForPresentation,
        DigitalMammographyXRayImageStorageForProcessing,
        DigitalIntraOralXRayImageStorageForPresentation,
        DigitalIntraOralXRayImageStorageForProcessing,
        BreastProjectionXRayImageStorageForPresentation,
        BreastProjectionXRayImageStorageForProcessing,
        XRayAngiographicImageStorage,
        EnhancedXAImageStorage,
        XRayRadiofluoroscopicImageStorage,
        EnhancedXRFImageStorage,
    }
)


def job_key(job: Job) -> str:
    """What a job's result UIDs are derived from: the study, the route and the plugin. Unlike
    the row id it survives a new database, so two studies can never share result UIDs."""
    return f"{job.study_instance_uid}/{job.route_name}/{job.plugin}"


def eligible_destinations(job: Job, config: NodeConfig) -> dict[str, Destination]:
    """The job's destinations that take its results: shadow routes feed shadow destinations
    only, production routes the others."""
    unknown = [name for name in job.destinations if name not in config.destinations]
    if unknown:
        known = ", ".join(sorted(config.destinations)) or "none"
        raise ValueError(
            f"route {job.route_name!r} sends to {', '.join(unknown)}, which node.yaml does not "
            f"define (destinations: {known})"
        )
    shadow = job.mode == "shadow"
    return {
        name: config.destinations[name]
        for name in job.destinations
        if config.destinations[name].shadow == shadow
    }


def source_kind_of(conn: sqlite3.Connection, job: Job) -> SourceKind:
    """Whether the job's series is a projection radiograph, from its index rows (the series'
    Modality and the SOP classes of the instances the job reads)."""
    series = conn.execute(
        "SELECT modality FROM series WHERE series_instance_uid = ?", (job.series_instance_uid,)
    ).fetchone()
    modality = (series["modality"] if series is not None else None) or ""
    if modality.upper() in PROJECTION_MODALITIES:
        return SourceKind.RADIOGRAPH
    classes = conn.execute(
        "SELECT DISTINCT sop_class_uid FROM instances WHERE series_instance_uid = ? "
        "AND study_version <= ?",
        (job.series_instance_uid, job.study_version),
    ).fetchall()
    if any(record["sop_class_uid"] in PROJECTION_SOP_CLASSES for record in classes):
        return SourceKind.RADIOGRAPH
    return SourceKind.CROSS_SECTIONAL


def kinds_by_destination(
    conn: sqlite3.Connection, job: Job, config: NodeConfig
) -> tuple[SourceKind, dict[str, tuple[OutputKind, ...]]]:
    """The series' kind and, for each destination that takes the job's results, the output
    kinds it takes for that kind of series (its ``send_as``, else its profile's defaults)."""
    source = source_kind_of(conn, job)
    destinations = eligible_destinations(job, config)
    return source, {name: dest.kinds_for(source) for name, dest in destinations.items()}


def series_files(conn: sqlite3.Connection, job: Job, spool_dir: Path) -> tuple[Path, ...]:
    records = conn.execute(
        "SELECT path FROM instances WHERE series_instance_uid = ? AND study_version <= ? "
        "ORDER BY instance_number, sop_instance_uid",
        (job.series_instance_uid, job.study_version),
    ).fetchall()
    return tuple(spool_dir / r["path"] for r in records)


def _predecessor_sr(
    conn: sqlite3.Connection, job: Job, outputs_dir: Path
) -> tuple[str, str, str, str] | None:
    """The SR of the same route and plugin on the previous version of the study, if any:
    (study, series, SOP instance, SOP class UIDs) for the new SR's predecessor reference."""
    record = conn.execute(
        """
        SELECT r.sop_instance_uid, r.sop_class_uid, r.path FROM results r
        JOIN jobs j ON j.id = r.job_id
        JOIN route_matches m ON m.id = j.route_match_id
        JOIN study_versions v ON v.id = m.study_version_id
        WHERE v.study_instance_uid = ? AND v.version < ? AND m.route_name = ? AND m.plugin = ?
          AND j.state = 'SUCCEEDED' AND r.kind = 'sr'
        ORDER BY v.version DESC LIMIT 1
        """,
        (job.study_instance_uid, job.study_version, job.route_name, job.plugin),
    ).fetchone()
    if record is None:
        return None
    try:
        header = dcmread(
            outputs_dir / record["path"],
            stop_before_pixels=True,
            specific_tags=["SeriesInstanceUID"],
        )
        series = str(header.SeriesInstanceUID)
    except (OSError, AttributeError, InvalidDicomError):
        return None  # the old file is gone: the new SR simply has no predecessor
    return job.study_instance_uid, series, record["sop_instance_uid"], record["sop_class_uid"]


def work_item_for(conn: sqlite3.Connection, job: Job, config: NodeConfig) -> WorkItem:
    """Everything one attempt needs; ValueError when the job cannot run at all."""
    source, by_destination = kinds_by_destination(conn, job, config)
    kinds: list[OutputKind] = []
    for taken in by_destination.values():
        kinds += [kind for kind in taken if kind not in kinds]
    files = series_files(conn, job, config.storage.spool_dir)
    if not files:
        raise ValueError(
            f"series {job.series_instance_uid} has no stored instances for study version "
            f"{job.study_version}"
        )
    outputs_root = config.storage.outputs_dir
    return WorkItem(
        job_id=job.id,
        job_key=job_key(job),
        attempt=job.attempts,
        study_instance_uid=job.study_instance_uid,
        study_version=job.study_version,
        series_instance_uid=job.series_instance_uid,
        plugin=job.plugin,
        plugin_version=job.plugin_version,
        files=files,
        output_dir=outputs_root / f"job-{job.id}",
        outputs_root=outputs_root,
        # no destination (a shadow route kept for review): what a generic viewer would get
        output_kinds=tuple(kinds) or PROFILE_DEFAULTS[ViewerProfile.GENERIC, source],
        predecessor_sr=_predecessor_sr(conn, job, outputs_root),
    )


def store_results(
    conn: sqlite3.Connection,
    job: Job,
    result: WorkResult,
    config: NodeConfig,
    attempt: int | None = None,
) -> bool:
    """Results + outbox rows + SUCCEEDED, all or nothing. False (nothing stored) if the job
    was cancelled while it ran, or (``attempt`` given: a remote worker's) another attempt
    of it runs now."""
    now = time.time()
    _, by_destination = kinds_by_destination(conn, job, config)
    with transaction(conn):
        if not table.mark_succeeded(conn, job.id, result.timings, now, attempt):
            return False
        for item in result.results:
            conn.execute(
                """
                INSERT INTO results (sop_instance_uid, job_id, kind, sop_class_uid, path,
                                     created_at)
                VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (sop_instance_uid) DO UPDATE SET job_id = excluded.job_id,
                    kind = excluded.kind, sop_class_uid = excluded.sop_class_uid,
                    path = excluded.path, created_at = excluded.created_at
                """,
                (
                    item.sop_instance_uid,
                    job.id,
                    item.kind.value,
                    item.sop_class_uid,
                    item.path,
                    now,
                ),
            )
            for name, taken in by_destination.items():
                if item.kind in taken:
                    enqueue(conn, item.sop_instance_uid, name, now)
    return True
