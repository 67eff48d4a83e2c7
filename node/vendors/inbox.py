"""What vendors send back: stored durably beside the spool, indexed in ``vendor_inbox``.

Instances whose calling AE title is a vendor's ``results_from`` are not images to analyse:
they never reach the ``instances`` table, so they neither re-open the study they belong to
nor get routed. The files live under ``<data>/vendor-inbox`` (not the spool, whose start-up
walk indexes every file it finds into the studies). A result sent twice is kept once (the SOP
Instance UID is the key; the newer file replaces the older one).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from models.discovery import discover
from node.config import NodeConfig
from node.db import connect, transaction
from node.ingest.spool import Spool
from node.jobs import table
from node.jobs.work import VendorSent

__all__ = [
    "VendorInbox",
    "inbox_dir",
    "record_sent",
    "vendor_result_aes",
]


def inbox_dir(config: NodeConfig) -> Path:
    return config.storage.data_dir / "vendor-inbox"


def vendor_result_aes(config: NodeConfig) -> frozenset[str]:
    """The calling AE titles vendors' results come from (every dicom-node plugin's)."""
    catalog = discover(config.plugin_dirs, entry_points=False)
    return frozenset(m.vendor.results_from for m in catalog.manifests if m.vendor is not None)


def record_sent(
    conn: sqlite3.Connection, job_id: int, sent: VendorSent, timings: dict[str, float]
) -> bool:
    """RUNNING → AWAITING_VENDOR and what was sent, in one transaction; False if the job was
    cancelled meanwhile."""
    with transaction(conn):
        if not table.mark_awaiting_vendor(conn, job_id, timings):
            return False
        conn.execute(
            "INSERT INTO vendor_requests (job_id, vendor, results_from, study_instance_uid, "
            "series_instance_uid, deidentified, instances_sent, sent_at, expires_at, quiet_s) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET "
            "study_instance_uid = excluded.study_instance_uid, "
            "series_instance_uid = excluded.series_instance_uid, sent_at = excluded.sent_at, "
            "expires_at = excluded.expires_at, instances_sent = excluded.instances_sent",
            (
                job_id,
                sent.vendor,
                sent.results_from,
                sent.study_instance_uid,
                sent.series_instance_uid,
                int(sent.deidentified),
                sent.instances,
                sent.sent_at,
                sent.sent_at + sent.result_timeout_s,
                sent.quiet_s,
            ),
        )
    return True


class VendorInbox:
    """The SCP's store for results from vendors; one per node, used from the SCP's threads."""

    def __init__(self, config: NodeConfig, result_aes: frozenset[str]) -> None:
        self.result_aes = result_aes
        storage = config.storage
        self.spool = Spool(inbox_dir(config), storage.min_free_mb * 1024 * 1024, storage.durability)
        self.spool.clear_temp()  # partial files of a result a crash interrupted
        self._conn = connect(config.storage.database_path)

    def add(
        self,
        *,
        sop_instance_uid: str,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_class_uid: str,
        path: str,
        calling_ae: str,
    ) -> str | None:
        """Index one stored result; returns the path of a file it replaced, if any."""
        with transaction(self._conn):
            old = self._conn.execute(
                "SELECT path FROM vendor_inbox WHERE sop_instance_uid = ?", (sop_instance_uid,)
            ).fetchone()
            self._conn.execute(
                "INSERT INTO vendor_inbox (sop_instance_uid, study_instance_uid, "
                "series_instance_uid, sop_class_uid, path, calling_ae, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sop_instance_uid) DO UPDATE SET "
                "path = excluded.path, received_at = excluded.received_at, state = 'NEW', "
                "job_id = NULL WHERE vendor_inbox.state != 'RELAYED'",
                (
                    sop_instance_uid,
                    study_instance_uid,
                    series_instance_uid,
                    sop_class_uid,
                    path,
                    calling_ae,
                    time.time(),
                ),
            )
        return None if old is None or old[0] == path else str(old[0])

    def close(self) -> None:
        self._conn.close()
