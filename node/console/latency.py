"""How long the AI takes per product: from the last image received to the results acknowledged.

A department judges a product by the delay its radiologists see, so a job's latency runs from
the last instance of the study version it processed (``instances.received_at``) to the moment
the destination acknowledged the last of its results (``outbox.sent_at``). It is read from the
record, never measured in memory, so it covers every job since the node was installed (or since
retention last purged) and agrees with ``ainode jobs``. A job counts only once every delivery it
owes is SENT: one still pending or dead has no latency yet, and a job without results or
deliveries has none at all. Shadow jobs are kept apart (``mode``): they are not what anyone
waits for.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from node.db import connect

__all__ = [
    "BUCKETS",
    "WINDOWS",
    "JobLatency",
    "LatencyCollector",
    "ProductLatency",
    "job_latencies",
    "product_latencies",
]

#: The windows the console offers, in seconds.
WINDOWS = {"day": 86400.0, "week": 604800.0}

#: Upper bounds of the histogram's buckets, in seconds (``+Inf`` is added): from a quick
#: radiograph to an hour-long queue.
BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class JobLatency:
    """One job's delay, from the last image of its study version to its last acknowledgement."""

    job_id: int
    plugin: str
    plugin_version: str | None
    mode: str
    modality: str | None
    received_at: float
    acknowledged_at: float
    seconds: float


@dataclass(frozen=True)
class ProductLatency:
    """The spread of delays of one product (plugin, mode, modality) over a window."""

    plugin: str
    mode: str
    modality: str | None
    jobs: int
    p50_s: float
    p95_s: float
    max_s: float


# Deliveries are grouped per job first: a job is done only when none of its rows is still
# owed, and the window applies to the job's last acknowledgement, not to each row. The start
# is a correlated MAX so it reads only the study's instances (``instances_study``) and only
# those of the version the job ran on: a later version's late arrivals are another job's.
_QUERY = """
WITH delivered AS (
    SELECT r.job_id, MAX(o.sent_at) AS acknowledged_at
    FROM results r JOIN outbox o ON o.sop_instance_uid = r.sop_instance_uid
    GROUP BY r.job_id
    HAVING SUM(o.state <> 'SENT' OR o.sent_at IS NULL) = 0
       AND (:since IS NULL OR MAX(o.sent_at) >= :since)
       AND (:until IS NULL OR MAX(o.sent_at) <= :until)
),
timed AS (
    SELECT j.id AS job_id, m.plugin, m.plugin_version, m.mode, s.modality,
           (SELECT MAX(i.received_at) FROM instances i
            WHERE i.study_instance_uid = v.study_instance_uid
              AND i.study_version = v.version) AS received_at,
           d.acknowledged_at
    FROM delivered d
    JOIN jobs j ON j.id = d.job_id
    JOIN route_matches m ON m.id = j.route_match_id
    JOIN study_versions v ON v.id = m.study_version_id
    LEFT JOIN series s ON s.series_instance_uid = m.series_instance_uid
)
SELECT * FROM timed WHERE received_at IS NOT NULL
ORDER BY acknowledged_at, job_id
"""


def job_latencies(
    conn: sqlite3.Connection, since: float | None = None, until: float | None = None
) -> list[JobLatency]:
    """Every delivered job whose last acknowledgement lies in [since, until], oldest first.

    One query, so the numbers come from one snapshot of the record. A study version none of
    whose instances is still indexed gives no start, so its job is left out.
    """
    rows = conn.execute(_QUERY, {"since": since, "until": until}).fetchall()
    return [
        JobLatency(
            job_id=row[0],
            plugin=row[1],
            plugin_version=row[2],
            mode=row[3],
            modality=row[4],
            received_at=float(row[5]),
            acknowledged_at=float(row[6]),
            seconds=float(row[6]) - float(row[5]),
        )
        for row in rows
    ]


def product_latencies(
    conn: sqlite3.Connection, window_s: float, now: float | None = None
) -> list[ProductLatency]:
    """Median, 95th percentile and worst delay per product over the last ``window_s``.

    Percentiles interpolate linearly between ranks (numpy's default), so a product with few
    jobs still gets a value; the job count says how much to trust it.
    """
    now = time.time() if now is None else now
    groups: dict[tuple[str, str, str | None], list[float]] = {}
    for job in job_latencies(conn, since=now - window_s, until=now):
        groups.setdefault((job.plugin, job.mode, job.modality), []).append(job.seconds)
    products = []
    for (plugin, mode, modality), seconds in groups.items():
        p50, p95 = np.percentile(seconds, [50, 95])
        products.append(
            ProductLatency(
                plugin=plugin,
                mode=mode,
                modality=modality,
                jobs=len(seconds),
                p50_s=float(p50),
                p95_s=float(p95),
                max_s=float(max(seconds)),
            )
        )
    return sorted(products, key=lambda p: (p.plugin, p.mode, p.modality or ""))


class LatencyCollector(Collector):
    """``ainode_product_latency_seconds``, a histogram computed from the record at scrape time.

    Nothing is counted in memory, so the histogram survives restarts and agrees with the
    console. Retention deleting a purged study's rows makes its counts drop; Prometheus reads
    a drop as a counter reset, so ``rate()`` and ``histogram_quantile()`` stay sound.
    """

    def __init__(self, database: Path) -> None:
        self._database = database

    def collect(self) -> Iterator[Metric]:
        conn = connect(self._database)
        try:
            jobs = job_latencies(conn)
        finally:
            conn.close()
        family = HistogramMetricFamily(
            "ainode_product_latency_seconds",
            "Seconds from the last instance received to the results acknowledged, per product",
            labels=["plugin", "mode", "modality"],
        )
        groups: dict[tuple[str, str, str], list[float]] = {}
        for job in jobs:
            groups.setdefault((job.plugin, job.mode, job.modality or ""), []).append(job.seconds)
        for labels, seconds in sorted(groups.items()):
            family.add_metric(list(labels), _cumulative(seconds), sum_value=sum(seconds))
        yield family


def _cumulative(seconds: list[float]) -> list[tuple[str, float]]:
    """Prometheus buckets: how many delays are at most each bound, ``+Inf`` last."""
    bounds = [*BUCKETS, float("inf")]
    return [(floatToGoString(b), float(sum(1 for s in seconds if s <= b))) for b in bounds]
