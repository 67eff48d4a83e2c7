"""Prometheus figures of the Celery executor, read at scrape time: the jobs waiting in each
plugin's queue (asked of the broker), and per worker its jobs done and failed, whether it is
busy and when it last reported (from the ``workers`` table its heartbeats fill)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

from kombu import Connection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from models.discovery import discover
from node.db import connect
from node.jobs.remote.protocol import queue_for

LOG = logging.getLogger(__name__)
BROKER_TIMEOUT_S = 2.0


class CeleryCollector(Collector):
    def __init__(self, database: Path, broker_url: str, plugin_dirs: tuple[Path, ...]) -> None:
        self._database = database
        self._broker_url = broker_url
        self._plugin_dirs = plugin_dirs

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._workers()

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "ainode_queue_jobs", "Jobs waiting in a plugin's queue on the broker", labels=["queue"]
        )
        names = sorted({queue_for(m.name) for m in discover(self._plugin_dirs).manifests})
        try:
            with Connection(self._broker_url, connect_timeout=BROKER_TIMEOUT_S) as broker:
                channel = broker.default_channel
                for name in names:
                    try:
                        _, messages, _ = channel.queue_declare(name, passive=True)
                    except Exception:  # not declared yet: nothing was ever published to it
                        channel = broker.channel()
                        messages = 0
                    depth.add_metric([name], messages)
        except Exception as exc:  # a scrape must not fail because the broker is down
            LOG.warning("metrics: cannot ask the broker for queue depths: %s", exc)
        yield depth

    def _workers(self) -> Iterator[Metric]:
        done = CounterMetricFamily(
            "ainode_worker_jobs", "Jobs a worker finished", labels=["worker", "outcome"]
        )
        busy = GaugeMetricFamily(
            "ainode_worker_busy", "1 while a worker runs a job", labels=["worker"]
        )
        seen = GaugeMetricFamily(
            "ainode_worker_seen_seconds_ago", "Since a worker last reported", labels=["worker"]
        )
        conn = connect(self._database)
        try:
            rows = conn.execute(
                "SELECT name, current_job, last_seen, jobs_succeeded, jobs_failed FROM workers"
            ).fetchall()
        finally:
            conn.close()
        now = time.time()
        for row in rows:
            done.add_metric([row["name"], "succeeded"], row["jobs_succeeded"])
            done.add_metric([row["name"], "failed"], row["jobs_failed"])
            busy.add_metric([row["name"]], 1 if row["current_job"] is not None else 0)
            seen.add_metric([row["name"]], max(0.0, now - row["last_seen"]))
        yield done
        yield busy
        yield seen
