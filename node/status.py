"""The record in numbers: the status page's counts and Prometheus gauges, read when asked.

Counting at request time keeps the ingest hot path free of instrumentation, and the numbers
are the record itself, so they survive restarts and agree with ``ainode studies`` and
``ainode jobs``. ``GET /status`` answers JSON for people and scripts, ``GET /metrics`` the
Prometheus text format, ``GET /healthz`` 200 while the database answers. No patient data is
exposed: only counts by state, destination names and AE titles. ``node.console.app`` serves
them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from node import __version__
from node.db import connect

LOGGER = logging.getLogger(__name__)

__all__ = ["NodeStatus", "RecordCollector", "read_status"]


@dataclass(frozen=True)
class NodeStatus:
    """A snapshot of the record: how much is stored and where every study, job and result is."""

    version: str
    ae_title: str
    instances: int
    stored_bytes: int
    studies_by_state: dict[str, int]
    jobs_by_state: dict[str, int]
    outbox_by_destination: dict[str, dict[str, int]]
    durability: str = "fsync"  # what a C-STORE Success promises (storage.durability)
    journal: bool = False  # whether it waits for the journal (storage.journal)


def read_status(
    conn: sqlite3.Connection, ae_title: str, *, durability: str = "fsync", journal: bool = False
) -> NodeStatus:
    """Count rows by state in one read transaction, so the numbers agree with each other;
    ``durability`` and ``journal`` are the node's storage settings, reported beside them."""
    conn.execute("BEGIN")
    try:
        instances, stored = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM instances"
        ).fetchone()
        studies = dict(conn.execute("SELECT state, COUNT(*) FROM studies GROUP BY state"))
        jobs = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        outbox: dict[str, dict[str, int]] = {}
        for destination, state, count in conn.execute(
            "SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"
        ):
            outbox.setdefault(destination, {})[state] = count
    finally:
        conn.execute("COMMIT")
    counts = (instances, stored, studies, jobs, outbox)
    return NodeStatus(__version__, ae_title, *counts, durability, journal)


class RecordCollector(Collector):
    """Prometheus gauges computed from ``read_status`` at scrape time."""

    def __init__(self, database: Path, ae_title: str) -> None:
        self._database = database
        self._ae_title = ae_title

    def collect(self) -> Iterator[Metric]:
        conn = connect(self._database)
        try:
            status = read_status(conn, self._ae_title)
        finally:
            conn.close()
        yield GaugeMetricFamily(
            "ainode_instances", "Instances stored and indexed", value=status.instances
        )
        yield GaugeMetricFamily(
            "ainode_stored_bytes", "Bytes of stored instances", value=status.stored_bytes
        )
        studies = GaugeMetricFamily("ainode_studies", "Studies by state", labels=["state"])
        for state, count in sorted(status.studies_by_state.items()):
            studies.add_metric([state], count)
        yield studies
        jobs = GaugeMetricFamily("ainode_jobs", "Jobs by state", labels=["state"])
        for state, count in sorted(status.jobs_by_state.items()):
            jobs.add_metric([state], count)
        yield jobs
        outbox = GaugeMetricFamily(
            "ainode_outbox", "Deliveries by destination and state", labels=["destination", "state"]
        )
        for destination, states in sorted(status.outbox_by_destination.items()):
            for state, count in sorted(states.items()):
                outbox.add_metric([destination, state], count)
        yield outbox
