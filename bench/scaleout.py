"""Jobs through Celery workers against the local executor, on the same jobs in one run (not a
test; run on demand).

A real RabbitMQ (started here, loopback, its own folder), ``ainode serve`` and ``ainode
worker`` processes; the plugin is the scale-out tests' (every output kind of a small CT, no
gate). For each set-up the same ``--jobs`` studies are sent, and from the job table:

- jobs/s: jobs / (last job finished − first job created);
- overhead per job: (finished − started) − the plugin's own stages (load, inference, build),
  i.e. what the executor adds: for the local executor the hand-over to its worker process and
  the commit; for Celery the series download, the result upload, the checks and the commit
  (its queue wait is before ``started``, reported apart).

Set-ups: local executor with 1 worker process (the reference), Celery with 1 worker, Celery
with 2 workers. Printed as ratios to the reference.

Usage: python bench/scaleout.py [--jobs 20]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import poll_until  # noqa: E402
from ingest_support import start_node, stop_node  # noqa: E402
from outputs_support import write_synthetic_ct  # noqa: E402
from rabbitmq_support import RabbitMQ  # noqa: E402
from scaleout_support import (  # noqa: E402
    make_cluster,
    wait_for_workers,
    write_gated_plugin,
)

from node.scu import Peer, send  # noqa: E402

ROUTES = "routes:\n  - name: ct\n    when: {modality: CT}\n    run: [plugin-a]\n"


def _studies(folder: Path, count: int) -> list[list[Path]]:
    return [write_synthetic_ct(folder / f"s{i}", slices=10, size=48) for i in range(count)]


def _figures(database: Path, count: int) -> dict[str, float]:
    conn = sqlite3.connect(database)
    rows = conn.execute("SELECT created_at, started_at, finished_at, timings, state FROM jobs")
    rows = rows.fetchall()
    conn.close()
    assert len(rows) == count and {r[4] for r in rows} == {"SUCCEEDED"}, rows
    span = max(r[2] for r in rows) - min(r[0] for r in rows)
    overheads = [(r[2] - r[1]) - sum(json.loads(r[3]).values()) for r in rows]
    return {
        "jobs_per_s": count / span,
        "overhead_ms": 1000 * statistics.median(overheads),
        "plugin_ms": 1000 * statistics.median(sum(json.loads(r[3]).values()) for r in rows),
    }


def _run(node, studies: list[list[Path]]) -> Path:
    for paths in studies:
        report = send(paths, Peer("AINODE", "127.0.0.1", node.port), calling_ae="BENCH")
        assert report.failed == ()
    database = node.data_dir / "ainode.sqlite3"

    def done() -> bool:
        try:
            conn = sqlite3.connect(database, timeout=10)
            try:
                states = [r[0] for r in conn.execute("SELECT state FROM jobs")]
            finally:
                conn.close()
        except sqlite3.Error:
            return False
        return len(states) == len(studies) and set(states) == {"SUCCEEDED"}

    if not poll_until(done, 600, interval=0.2):
        raise SystemExit(f"jobs did not finish:\n{node.log()[-3000:]}")
    return database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ainode-bench-scaleout-"))
    plugins = work / "plugins"
    write_gated_plugin(plugins, "plugin-a")
    (work / "routes.yaml").write_text(ROUTES)
    studies = _studies(work / "studies", args.jobs)
    common = {
        "routes_file": str(work / "routes.yaml"),
        "plugin_dirs": [str(plugins)],
        "stability": {"stable_after_s": 1, "after_release_s": 0.1, "poll_interval_s": 0.1},
    }
    results: dict[str, dict[str, float]] = {}

    node = start_node(work / "local", jobs={"workers": 1}, **common)
    try:
        results["local, 1 process"] = _figures(_run(node, studies), args.jobs)
    finally:
        stop_node(node)

    broker = RabbitMQ(work / "rabbitmq")
    broker.start()
    try:
        for count in (1, 2):
            cluster = make_cluster(work / f"celery-{count}", broker.url, dict(common))
            cluster.start_node()
            try:
                for index in range(count):
                    cluster.add_worker(f"bench-{count}-{index}", [plugins])
                wait_for_workers(cluster)
                started = time.monotonic()
                database = _run(cluster.node, studies)
                results[f"celery, {count} worker(s)"] = _figures(database, args.jobs)
                print(f"celery, {count} worker(s): {time.monotonic() - started:.1f} s")
            finally:
                cluster.stop()
    finally:
        broker.stop()

    reference = results["local, 1 process"]
    print(f"\n{args.jobs} jobs of a 10-slice 48x48 CT (plugin stages median "
          f"{reference['plugin_ms']:.0f} ms)")  # fmt: skip
    print(f"{'set-up':<22} {'jobs/s':>8} {'ratio':>6} {'overhead ms':>12} {'ratio':>6}")
    for name, figures in results.items():
        print(
            f"{name:<22} {figures['jobs_per_s']:8.2f} "
            f"{figures['jobs_per_s'] / reference['jobs_per_s']:6.2f} "
            f"{figures['overhead_ms']:12.1f} "
            f"{figures['overhead_ms'] / max(reference['overhead_ms'], 1e-3):6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
