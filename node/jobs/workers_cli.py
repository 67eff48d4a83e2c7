"""``ainode workers``: the remote (Celery) workers, as their last heartbeats described them.

The rows are the ``workers`` table, which the Celery executor's heartbeats fill; the command
reads the database directly, so it works whether or not the node runs. A worker whose last
heartbeat is ``GONE_AFTER_S`` old or older is shown as ``gone`` (stopped, crashed, or cut
off); its row stays until it comes back under the same name.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from node.config import DEFAULT_CONFIG, load_node_config
from node.db import connect

__all__ = ["GONE_AFTER_S", "WorkerRow", "format_workers", "list_workers", "register"]

GONE_AFTER_S = 60.0
COLUMNS = ("NAME", "STATE", "QUEUES", "DEVICES", "JOB", "LAST SEEN", "SUCCEEDED", "FAILED")


@dataclass(frozen=True)
class WorkerRow:
    """One row of ``workers``."""

    name: str
    queues: tuple[str, ...]
    devices: tuple[str, ...]
    plugins: tuple[str, ...]
    current_job: int | None
    started_at: float
    last_seen: float
    jobs_succeeded: int
    jobs_failed: int

    def state(self, now: float) -> str:
        if now - self.last_seen >= GONE_AFTER_S:
            return "gone"
        return "idle" if self.current_job is None else "busy"


def _names(text: str | None) -> tuple[str, ...]:
    """A JSON list column as names; text that is not one (a worker's bug) shown as it is."""
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return (str(text),)
    return tuple(str(v) for v in value) if isinstance(value, list) else (str(value),)


def list_workers(conn: sqlite3.Connection) -> list[WorkerRow]:
    """Every worker, by name."""
    return [
        WorkerRow(
            name=r["name"],
            queues=_names(r["queues"]),
            devices=_names(r["devices"]),
            plugins=_names(r["plugins"]),
            current_job=r["current_job"],
            started_at=r["started_at"],
            last_seen=r["last_seen"],
            jobs_succeeded=r["jobs_succeeded"],
            jobs_failed=r["jobs_failed"],
        )
        for r in conn.execute("SELECT * FROM workers ORDER BY name")
    ]


def format_workers(workers: Sequence[WorkerRow], now: float) -> str:
    """A table, one line per worker, columns as wide as their widest cell."""
    rows = [COLUMNS] + [
        (
            w.name,
            w.state(now),
            ",".join(w.queues) or "-",
            ",".join(w.devices) or "-",
            "-" if w.current_job is None else str(w.current_job),
            f"{max(0.0, now - w.last_seen):.0f}s ago",
            str(w.jobs_succeeded),
            str(w.jobs_failed),
        )
        for w in workers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    workers = subparsers.add_parser(
        "workers", help="list the remote workers, their queues, devices and current jobs"
    )
    workers.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    workers.set_defaults(func=cmd_workers)


def cmd_workers(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    with closing(connect(config.storage.database_path)) as conn:
        workers = list_workers(conn)
    if not workers:
        print("no remote workers have reported (each does once `ainode worker` runs)")
        return 0
    print(format_workers(workers, time.time()))
    return 0
