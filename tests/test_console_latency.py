"""Per-product latency (node.console.latency) over a real database written row by row.

Every expected number is worked out here from the timestamps the test inserts, not read back
through the module, so a wrong join (another study version's instances, an early result's
acknowledgement, an undelivered job) shows as a wrong value.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from node.console.latency import (
    WINDOWS,
    JobLatency,
    LatencyCollector,
    ProductLatency,
    job_latencies,
    product_latencies,
)
from node.db import connect

NOW = 1_700_000_000.0
DAY = WINDOWS["day"]
BOUNDS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


@dataclass(frozen=True)
class Delivery:
    """One outbox row of one result."""

    destination: str
    state: str
    sent_at: float | None


@dataclass(frozen=True)
class Case:
    """A job on one study version, what was received for it and how its results went."""

    name: str
    plugin: str
    mode: str
    modality: str | None
    received: tuple[float, ...]  # instances of the job's own study version
    results: tuple[tuple[Delivery, ...], ...]  # per result, its outbox rows
    other_versions: dict[int, tuple[float, ...]] = field(default_factory=dict)
    version: int = 1
    counted: bool = True

    @property
    def start(self) -> float:
        return max(self.received)

    @property
    def end(self) -> float:
        return max(d.sent_at for r in self.results for d in r if d.sent_at is not None)


def sent(at: float, destination: str = "pacs") -> Delivery:
    return Delivery(destination, "SENT", at)


CASES = (
    # Two results, three deliveries: the latest acknowledgement (NOW - 850) is the end, and
    # version 2's later instance (NOW - 500) is another job's start, not this one's.
    Case(
        "several-results",
        "ct-lung",
        "production",
        "CT",
        received=(NOW - 1000, NOW - 990),
        results=((sent(NOW - 900),), (sent(NOW - 850), sent(NOW - 880, "viewer"))),
        other_versions={2: (NOW - 500,)},
    ),
    # The job of version 2: version 1's instances are not part of its wait.
    Case(
        "second-version",
        "ct-lung",
        "production",
        "CT",
        received=(NOW - 500,),
        results=((sent(NOW - 400),),),
        other_versions={1: (NOW - 1000, NOW - 990)},
        version=2,
    ),
    Case("ct-3", "ct-lung", "production", "CT", (NOW - 3000,), ((sent(NOW - 2950),),)),
    Case("ct-4", "ct-lung", "production", "CT", (NOW - 57, NOW - 60), ((sent(NOW - 50),),)),
    Case("ct-5", "ct-lung", "production", "CT", (NOW - 1300,), ((sent(NOW - 700),),)),
    Case("ct-6", "ct-lung", "production", "CT", (NOW - 2100,), ((sent(NOW - 100),),)),
    Case("dx-1", "dx-chest", "production", "DX", (NOW - 200,), ((sent(NOW - 170),),)),
    Case("dx-2", "dx-chest", "production", "DX", (NOW - 260,), ((sent(NOW - 248),),)),
    Case("dx-shadow", "dx-chest", "shadow", "DX", (NOW - 200,), ((sent(NOW - 100, "review"),),)),
    # Exactly on a bucket bound: ``le`` is inclusive.
    Case("cr-1", "dx-chest", "production", "CR", (NOW - 300,), ((sent(NOW - 295),),)),
    Case("no-modality", "dx-chest", "production", None, (NOW - 90,), ((sent(NOW - 80),),)),
    # Two days ago: outside the day, inside the week and the collector's all-time count.
    Case(
        "day-before-yesterday",
        "ct-lung",
        "production",
        "CT",
        (NOW - 2 * DAY - 100,),
        ((sent(NOW - 2 * DAY),),),
    ),
    # Not delivered yet, or never: no latency.
    Case(
        "one-dead",
        "dx-chest",
        "production",
        "DX",
        (NOW - 700,),
        ((sent(NOW - 600),), (Delivery("pacs", "DEAD", None),)),
        counted=False,
    ),
    Case(
        "one-pending",
        "dx-chest",
        "production",
        "DX",
        (NOW - 700,),
        ((sent(NOW - 650), Delivery("viewer", "PENDING", None)),),
        counted=False,
    ),
    Case("no-outbox", "ct-lung", "production", "CT", (NOW - 400,), ((),), counted=False),
    Case("no-results", "ct-lung", "production", "CT", (NOW - 400,), (), counted=False),
)


def insert_case(conn: sqlite3.Connection, index: int, case: Case) -> int:
    """The rows the pipeline would have written for ``case``; returns the job id."""
    study, series = f"1.2.826.0.1.{index}", f"1.2.826.0.1.{index}.1"
    conn.execute(
        "INSERT INTO studies (study_instance_uid, first_received_at, last_received_at, state) "
        "VALUES (?, ?, ?, 'stable')",
        (study, NOW - 3 * DAY, NOW),
    )
    conn.execute(
        "INSERT INTO series (series_instance_uid, study_instance_uid, modality) VALUES (?, ?, ?)",
        (series, study, case.modality),
    )
    versions = {case.version: case.received, **case.other_versions}
    version_ids = {}
    for version, times in sorted(versions.items()):
        for n, received_at in enumerate(times):
            conn.execute(
                "INSERT INTO instances (sop_instance_uid, series_instance_uid, "
                "study_instance_uid, sop_class_uid, transfer_syntax_uid, path, size_bytes, "
                "received_at, study_version) VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', "
                "'1.2.840.10008.1.2.1', 'x.dcm', 1, ?, ?)",
                (f"{series}.{version}.{n}", series, study, received_at, version),
            )
        version_ids[version] = conn.execute(
            "INSERT INTO study_versions (study_instance_uid, version, stable_at, "
            "instance_count) VALUES (?, ?, ?, ?)",
            (study, version, max(times) + 5, len(times)),
        ).lastrowid
    match = conn.execute(
        "INSERT INTO route_matches (study_version_id, route_name, plugin, plugin_version, "
        "series_instance_uid, destinations, mode, created_at) VALUES (?, 'r', ?, '1.0', ?, ?, "
        "?, ?)",
        (version_ids[case.version], case.plugin, series, json.dumps(["pacs"]), case.mode, NOW),
    ).lastrowid
    job = conn.execute(
        "INSERT INTO jobs (route_match_id, state, next_attempt_at, created_at) "
        "VALUES (?, 'SUCCEEDED', ?, ?)",
        (match, NOW, NOW),
    ).lastrowid
    for r, deliveries in enumerate(case.results):
        sop = f"1.2.826.0.2.{index}.{r + 1}"
        conn.execute(
            "INSERT INTO results (sop_instance_uid, job_id, kind, sop_class_uid, path, "
            "created_at) VALUES (?, ?, 'sr', '1.2.840.10008.5.1.4.1.1.88.33', 'r.dcm', ?)",
            (sop, job, NOW),
        )
        for d in deliveries:
            conn.execute(
                "INSERT INTO outbox (sop_instance_uid, destination, state, next_attempt_at, "
                "sent_at) VALUES (?, ?, ?, ?, ?)",
                (sop, d.destination, d.state, NOW, d.sent_at),
            )
    return job


@pytest.fixture
def record(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """The database with every case, and each case's job id."""
    path = tmp_path / "ainode.db"
    conn = connect(path)
    try:
        ids = {case.name: insert_case(conn, i, case) for i, case in enumerate(CASES)}
    finally:
        conn.close()
    return path, ids


def expected(ids: dict[str, int], since: float | None = None) -> list[JobLatency]:
    cases = [c for c in CASES if c.counted and (since is None or c.end >= since)]
    return [
        JobLatency(
            job_id=ids[c.name],
            plugin=c.plugin,
            plugin_version="1.0",
            mode=c.mode,
            modality=c.modality,
            received_at=c.start,
            acknowledged_at=c.end,
            seconds=c.end - c.start,
        )
        for c in sorted(cases, key=lambda c: (c.end, ids[c.name]))
    ]


def test_job_latencies_counts_delivered_jobs_from_their_own_version(record) -> None:
    path, ids = record
    conn = connect(path)
    try:
        found = job_latencies(conn)
    finally:
        conn.close()
    assert found == expected(ids)
    by_id = {j.job_id: j for j in found}
    assert by_id[ids["several-results"]].seconds == 140.0
    assert by_id[ids["second-version"]].seconds == 100.0
    for name in ("one-dead", "one-pending", "no-outbox", "no-results"):
        assert ids[name] not in by_id


def test_job_latencies_window_is_inclusive(record) -> None:
    path, ids = record
    conn = connect(path)
    try:
        assert job_latencies(conn, since=NOW - 100, until=NOW - 100) == [
            j for j in expected(ids) if j.acknowledged_at == NOW - 100
        ]
        assert job_latencies(conn, since=NOW - DAY) == expected(ids, since=NOW - DAY)
        assert job_latencies(conn, until=NOW - DAY) == [expected(ids)[0]]
    finally:
        conn.close()


@pytest.mark.parametrize("window", ["day", "week"])
def test_product_latencies_are_numpy_percentiles_per_product(record, window: str) -> None:
    path, _ = record
    window_s = WINDOWS[window]
    groups: dict[tuple[str, str, str | None], list[float]] = {}
    for c in CASES:
        if c.counted and NOW - window_s <= c.end <= NOW:
            groups.setdefault((c.plugin, c.mode, c.modality), []).append(c.end - c.start)
    want = [
        ProductLatency(
            plugin=plugin,
            mode=mode,
            modality=modality,
            jobs=len(seconds),
            p50_s=float(np.percentile(seconds, 50)),
            p95_s=float(np.percentile(seconds, 95)),
            max_s=max(seconds),
        )
        for (plugin, mode, modality), seconds in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")
        )
    ]
    conn = connect(path)
    try:
        found = product_latencies(conn, window_s, now=NOW)
    finally:
        conn.close()
    assert found == want
    keys = [(p.plugin, p.mode, p.modality) for p in found]
    assert ("dx-chest", "shadow", "DX") in keys
    assert ("dx-chest", "production", "DX") in keys
    ct = next(p for p in found if (p.plugin, p.mode) == ("ct-lung", "production"))
    assert ct.jobs == (6 if window == "day" else 7)


def test_product_latencies_empty_window(record) -> None:
    path, _ = record
    conn = connect(path)
    try:
        assert product_latencies(conn, 10.0, now=NOW - 5 * DAY) == []
    finally:
        conn.close()


def test_collector_histogram_from_the_record(record) -> None:
    path, _ = record
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LatencyCollector(path))
    text = generate_latest(registry).decode()
    (family,) = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "ainode_product_latency_seconds"
    ]
    assert family.type == "histogram"
    groups: dict[tuple[str, str, str], list[float]] = {}
    for c in CASES:
        if c.counted:
            groups.setdefault((c.plugin, c.mode, c.modality or ""), []).append(c.end - c.start)
    found_buckets: dict[tuple[str, str, str], dict[float, float]] = {}
    found_count: dict[tuple[str, str, str], float] = {}
    found_sum: dict[tuple[str, str, str], float] = {}
    for sample in family.samples:
        labels = dict(sample.labels)
        key = (labels.pop("plugin"), labels.pop("mode"), labels.pop("modality"))
        if sample.name.endswith("_bucket"):
            found_buckets.setdefault(key, {})[float(labels["le"])] = sample.value
        elif sample.name.endswith("_count"):
            found_count[key] = sample.value
        elif sample.name.endswith("_sum"):
            found_sum[key] = sample.value
    assert set(found_buckets) == set(groups)
    assert ("dx-chest", "production", "") in groups
    for key, seconds in groups.items():
        want = {float(b): sum(1 for s in seconds if s <= b) for b in BOUNDS}
        want[float("inf")] = len(seconds)
        assert found_buckets[key] == want, key
        assert found_count[key] == len(seconds)
        assert found_sum[key] == pytest.approx(sum(seconds))
    assert found_buckets[("dx-chest", "production", "CR")][5.0] == 1
