"""Rows and files for jobs/dispatch tests: the chain study → version → route match → job →
result, written the way the upstream stages write them, and small valid result files."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from node.db import transaction
from node.dispatch.outbox import enqueue


def seed_route_match(
    conn: sqlite3.Connection,
    study_uid: str,
    series_uid: str,
    plugin: str = "test-plugin",
    destinations: tuple[str, ...] = ("pacs",),
    route_name: str = "test-route",
    mode: str = "production",
    new_version: bool = True,
    urgency: int = 1,
) -> int:
    """A route match on a new stable version of the study (or on its latest one)."""
    now = time.time()
    with transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO studies (study_instance_uid, first_received_at, "
            "last_received_at, state) VALUES (?, ?, ?, 'stable')",
            (study_uid, now, now),
        )
        latest = conn.execute(
            "SELECT id, version FROM study_versions WHERE study_instance_uid = ? "
            "ORDER BY version DESC LIMIT 1",
            (study_uid,),
        ).fetchone()
        if latest is not None and not new_version:
            version_id = latest["id"]
        else:
            version_id = conn.execute(
                "INSERT INTO study_versions (study_instance_uid, version, stable_at, "
                "instance_count) VALUES (?, ?, ?, 0)",
                (study_uid, (latest["version"] if latest else 0) + 1, now),
            ).lastrowid
        return conn.execute(
            "INSERT INTO route_matches (study_version_id, route_name, plugin, "
            "series_instance_uid, destinations, mode, created_at, urgency) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                version_id,
                route_name,
                plugin,
                series_uid,
                json.dumps(list(destinations)),
                mode,
                now,
                urgency,
            ),
        ).lastrowid


def seed_job(conn: sqlite3.Connection, study_uid: str, series_uid: str, **kwargs) -> int:
    match_id = seed_route_match(conn, study_uid, series_uid, **kwargs)
    now = time.time()
    with transaction(conn):
        return conn.execute(
            "INSERT INTO jobs (route_match_id, state, next_attempt_at, created_at, finished_at) "
            "VALUES (?, 'SUCCEEDED', ?, ?, ?)",
            (match_id, now, now, now),
        ).lastrowid


def secondary_capture(study_uid: str, series_uid: str, seed: int = 0) -> Dataset:
    """A small valid Secondary Capture image in ``study_uid`` (stands in for a result file)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Test^Dispatch"
    ds.PatientID = "DISPATCH-1"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 9001
    ds.InstanceNumber = seed + 1
    pixels = np.random.default_rng(seed).integers(0, 4096, (32, 32), dtype=np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def add_result(
    conn: sqlite3.Connection,
    outputs_dir: Path,
    job_id: int,
    dataset: Dataset,
    destinations: tuple[str, ...],
    kind: str = "sr",
) -> Path:
    """Write ``dataset`` under ``outputs_dir`` and owe it to ``destinations`` (one transaction)."""
    relative = Path(f"job-{job_id}") / f"{dataset.SOPInstanceUID}.dcm"
    path = outputs_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    now = time.time()
    with transaction(conn):
        conn.execute(
            "INSERT INTO results (sop_instance_uid, job_id, kind, sop_class_uid, path, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (dataset.SOPInstanceUID, job_id, kind, dataset.SOPClassUID, str(relative), now),
        )
        for destination in destinations:
            enqueue(conn, dataset.SOPInstanceUID, destination, now)
    return path


def seed_series(
    conn: sqlite3.Connection, spool_dir: Path, datasets: list[Dataset], study_version: int = 1
) -> None:
    """Store ``datasets`` in the spool and index them as ingest does (one series)."""
    now = time.time()
    first = datasets[0]
    with transaction(conn):
        conn.execute(
            "INSERT OR IGNORE INTO studies (study_instance_uid, first_received_at, "
            "last_received_at, state) VALUES (?, ?, ?, 'stable')",
            (first.StudyInstanceUID, now, now),
        )
        conn.execute(
            "INSERT OR IGNORE INTO series (series_instance_uid, study_instance_uid, modality) "
            "VALUES (?, ?, ?)",
            (first.SeriesInstanceUID, first.StudyInstanceUID, first.get("Modality")),
        )
        for ds in datasets:
            relative = Path(first.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
            path = spool_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            conn.execute(
                "INSERT OR REPLACE INTO instances (sop_instance_uid, series_instance_uid, "
                "study_instance_uid, sop_class_uid, transfer_syntax_uid, path, size_bytes, "
                "received_at, study_version, instance_number) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    ds.SOPInstanceUID,
                    ds.SeriesInstanceUID,
                    ds.StudyInstanceUID,
                    ds.SOPClassUID,
                    ds.file_meta.TransferSyntaxUID,
                    str(relative),
                    path.stat().st_size,
                    now,
                    study_version,
                    ds.get("InstanceNumber"),
                ),
            )
