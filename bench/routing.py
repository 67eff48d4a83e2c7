"""Routing speed: matching a 1000-instance study against the shipped routes (not a test).

A chest CT study of 1000 instances in 7 series (thin and thick axials, coronal and sagittal
reformats, a scout, a dose-report Secondary Capture) is written to a scratch index the way
the ingest stage writes it. Timed, in the same process, with rounds alternating:

- route: ``route_version`` -- build the study view from SQLite, evaluate every route in
  config/routes.yaml, select the series, write the route_matches rows, mark the version routed;
- reference: ``SELECT *`` of the same 1000 instance rows plus a ``json.loads`` of each
  attributes column -- the least any router that reads the index must do.

Printed: median milliseconds of both, their ratio, and the route time against the 1 s budget.

    python bench/routing.py [--instances 1000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node.db import connect, transaction  # noqa: E402
from node.routing.matches import route_version  # noqa: E402
from tests.routing_support import add_series, make_stable, shipped_table  # noqa: E402

STUDY = "1.2.826.0.1.3680043.10.77"
SERIES = [  # (share of instances, fields)
    (0.40, dict(thickness=0.625, series_description="AX LUNG 0.625")),
    (0.25, dict(thickness=1.25, series_description="AX MEDIASTINUM 1.25")),
    (0.15, dict(thickness=5.0, series_description="AX 5.0")),
    (0.09, dict(orientation="1\\0\\0\\0\\0\\-1", series_description="COR MPR")),
    (0.09, dict(orientation="0\\1\\0\\0\\0\\-1", series_description="SAG MPR")),
    (0.01, dict(image_type="ORIGINAL\\PRIMARY\\LOCALIZER", series_description="SCOUT")),
    (
        0.01,
        dict(
            sop_class="1.2.840.10008.5.1.4.1.1.7",
            image_type="DERIVED\\SECONDARY",
            series_description="Dose Report",
        ),
    ),
]


def build(folder: Path, instances: int) -> Path:
    database = folder / "bench.sqlite3"
    conn = connect(database)
    remaining = instances
    for index, (share, fields) in enumerate(SERIES):
        count = remaining if index == len(SERIES) - 1 else max(1, round(instances * share))
        remaining -= count
        add_series(conn, count, study=STUDY, series=f"{STUDY}.{index + 1}", **fields)
    make_stable(conn, STUDY)
    conn.close()
    return database


def time_route(database: Path, table) -> float:
    conn = connect(database)
    with transaction(conn):
        conn.execute("DELETE FROM route_matches")
        conn.execute("UPDATE study_versions SET routed_at = NULL")
    version_id = conn.execute("SELECT id FROM study_versions").fetchone()[0]
    start = time.perf_counter()
    matches = route_version(conn, table, version_id)
    elapsed = time.perf_counter() - start
    conn.close()
    assert matches and all(m.series_instance_uid == f"{STUDY}.1" for m in matches), matches
    return elapsed


def time_reference(database: Path) -> float:
    conn = connect(database)
    start = time.perf_counter()
    rows = conn.execute("SELECT * FROM instances WHERE study_instance_uid = ?", (STUDY,))
    for row in rows:
        json.loads(row["attributes"])
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    table = shipped_table()
    with tempfile.TemporaryDirectory() as scratch:
        database = build(Path(scratch), args.instances)
        time_route(database, table)  # warm caches (page cache, regexes)
        time_reference(database)
        routed, reference = [], []
        for _ in range(args.rounds):
            routed.append(time_route(database, table))
            reference.append(time_reference(database))
    route_ms = statistics.median(routed) * 1000
    reference_ms = statistics.median(reference) * 1000
    print(
        f"study: {args.instances} instances in {len(SERIES)} series, {args.rounds} rounds, medians"
    )
    print(f"route (view + match + persist): {route_ms:8.2f} ms")
    print(f"reference (read rows + JSON):   {reference_ms:8.2f} ms")
    print(f"ratio route / reference:        {route_ms / reference_ms:8.2f}")
    print(f"share of the 1 s budget:        {route_ms / 1000:8.1%}")


if __name__ == "__main__":
    main()
