"""Status page and Prometheus metrics over HTTP, read from the database when asked.

Counting at request time keeps the ingest hot path free of instrumentation, and the numbers
are the record itself, so they survive restarts and agree with ``ainode studies`` and
``ainode jobs``. ``GET /status`` answers JSON for people and scripts, ``GET /metrics`` the
Prometheus text format, ``GET /healthz`` 200 while the database answers. No patient data is
exposed: only counts by state, destination names and AE titles.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from node import __version__
from node.config import NodeConfig
from node.db import connect

LOGGER = logging.getLogger(__name__)

__all__ = ["NodeStatus", "StatusServer", "read_status"]


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


def read_status(conn: sqlite3.Connection, ae_title: str) -> NodeStatus:
    """Count rows by state in one read transaction, so the numbers agree with each other."""
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
    return NodeStatus(__version__, ae_title, instances, stored, studies, jobs, outbox)


class _RecordCollector(Collector):
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


class StatusServer:
    """The ``http`` stage of ``ainode serve``: a small threaded HTTP server on its own thread."""

    name = "http"

    def __init__(self, config: NodeConfig) -> None:
        self._config = config
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(
            _RecordCollector(config.storage.database_path, config.listener.ae_title)
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the status server is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        http = self._config.http
        self._server = ThreadingHTTPServer((http.host, http.port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http-status", daemon=True
        )
        self._thread.start()
        LOGGER.info("status on http://%s:%d/status, metrics on /metrics", *self.address)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        registry = self._registry
        database = self._config.storage.database_path
        ae_title = self._config.listener.ae_title

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                try:
                    if self.path == "/metrics":
                        self._answer(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(registry))
                    elif self.path in ("/status", "/healthz"):
                        conn = connect(database)
                        try:
                            status = read_status(conn, ae_title)
                        finally:
                            conn.close()
                        if self.path == "/healthz":
                            self._answer(HTTPStatus.OK, "text/plain", b"ok\n")
                        else:
                            self._answer(HTTPStatus.OK, "application/json", _json(status))
                    else:
                        self._answer(HTTPStatus.NOT_FOUND, "text/plain", b"try /status\n")
                except sqlite3.Error as exc:
                    LOGGER.error("status request failed: %s", exc)
                    message = f"database unavailable: {exc}\n".encode()
                    self._answer(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", message)

            def _answer(self, code: HTTPStatus, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                LOGGER.debug("http %s - " + format, self.client_address[0], *args)

        return Handler


def _json(status: NodeStatus) -> bytes:
    return (json.dumps(asdict(status), indent=2, sort_keys=True) + "\n").encode()
