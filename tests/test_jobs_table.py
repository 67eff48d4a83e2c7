"""The job state machine: one job per route match, backoff, failure, reconcile, operator
actions."""

from __future__ import annotations

import os

import pytest
from pipeline_rows import seed_route_match
from pydicom.uid import generate_uid

from models.discovery import Catalog
from models.manifest import PluginManifest
from node.db import connect
from node.jobs import table
from node.jobs.limits import PluginLimits, limits_of
from node.jobs.table import JobState
from node.shared_types import RetryPolicy

POLICY = RetryPolicy(max_attempts=2, backoff_s=60, backoff_max_s=600)


@pytest.fixture
def conn(tmp_path):
    conn = connect(tmp_path / "db.sqlite3")
    yield conn
    conn.close()


def test_one_job_per_route_match_and_never_twice(conn):
    study = generate_uid()
    seed_route_match(conn, study, generate_uid(), plugin="a")
    seed_route_match(conn, study, generate_uid(), plugin="b", new_version=False)
    assert table.create_jobs(conn, now=100) == 2
    assert table.create_jobs(conn, now=101) == 0
    jobs = table.list_jobs(conn)
    assert sorted(j.plugin for j in jobs) == ["a", "b"]
    assert {(j.state, j.attempts, j.study_version) for j in jobs} == {(JobState.QUEUED, 0, 1)}


def test_claim_fail_backoff_then_failed(conn):
    seed_route_match(conn, generate_uid(), generate_uid())
    table.create_jobs(conn, now=100)
    job = table.claim_next(conn, now=100)
    assert (job.state, job.attempts) == (JobState.RUNNING, 1)
    assert table.claim_next(conn, now=100) is None  # nothing else is due
    state = table.fail(conn, job.id, "boom", retryable=True, policy=POLICY, now=110)
    assert state is JobState.QUEUED
    assert table.claim_next(conn, now=169) is None  # backing off for 60 s
    job = table.claim_next(conn, now=170)
    assert job.attempts == 2 and job.error == "boom"
    state = table.fail(conn, job.id, "boom again", retryable=True, policy=POLICY, now=171)
    assert state is JobState.FAILED
    failed = table.get_job(conn, job.id)
    assert (failed.state, failed.error, failed.finished_at) == (JobState.FAILED, "boom again", 171)


def test_permanent_failure_is_not_retried(conn):
    seed_route_match(conn, generate_uid(), generate_uid())
    table.create_jobs(conn, now=100)
    job = table.claim_next(conn, now=100)
    assert table.fail(conn, job.id, "undecodable", retryable=False, policy=POLICY) is (
        JobState.FAILED
    )


def test_reconcile_requeues_running_and_fails_exhausted(conn):
    for _ in range(2):
        seed_route_match(conn, generate_uid(), generate_uid())
    table.create_jobs(conn, now=100)
    first = table.claim_next(conn, now=100)
    second = table.claim_next(conn, now=100)
    table.fail(conn, second.id, "x", retryable=True, policy=POLICY, now=100)
    second = table.claim_next(conn, now=1000)  # its last attempt
    assert table.reconcile(conn, POLICY, now=2000) == 2
    assert table.get_job(conn, first.id).state is JobState.QUEUED
    assert "restart" in table.get_job(conn, first.id).error
    assert table.get_job(conn, second.id).state is JobState.FAILED


def test_finished_jobs_stay_finished_and_a_new_version_makes_a_new_job(conn):
    study, series = generate_uid(), generate_uid()
    seed_route_match(conn, study, series)
    table.create_jobs(conn, now=100)
    job = table.claim_next(conn, now=100)
    assert table.mark_succeeded(conn, job.id, {"inference": 1.5}, now=101)
    table.reconcile(conn, POLICY, now=102)
    assert table.claim_next(conn, now=10**9) is None
    seed_route_match(conn, study, series)  # the study re-opened and became stable again
    assert table.create_jobs(conn, now=200) == 1
    new = table.claim_next(conn, now=200)
    assert (new.study_version, new.id != job.id) == (2, True)
    assert table.get_job(conn, job.id).timings == {"inference": 1.5}


def test_urgent_first_then_due_longest_then_oldest(conn):
    normal = [seed_route_match(conn, generate_uid(), generate_uid()) for _ in range(2)]
    background = seed_route_match(conn, generate_uid(), generate_uid(), urgency=2)
    urgent = seed_route_match(conn, generate_uid(), generate_uid(), urgency=0)
    table.create_jobs(conn, now=100)
    claimed = [table.claim_next(conn, now=100) for _ in range(4)]
    assert [j.route_match_id for j in claimed] == [urgent, *normal, background]
    assert [j.urgency for j in claimed] == [0, 1, 1, 2]
    # a normal job retried later waits behind normal jobs due before it, not behind background
    table.fail(conn, claimed[1].id, "x", retryable=True, policy=POLICY, now=100)  # due at 160
    late = seed_route_match(conn, generate_uid(), generate_uid(), urgency=2)
    later = seed_route_match(conn, generate_uid(), generate_uid())
    table.create_jobs(conn, now=150)
    order = [table.claim_next(conn, now=200).route_match_id for _ in range(3)]
    assert order == [later, normal[0], late]


def test_a_plugin_at_its_limit_is_passed_over(conn):
    matches = [seed_route_match(conn, generate_uid(), generate_uid(), plugin="a") for _ in range(3)]
    other = seed_route_match(conn, generate_uid(), generate_uid(), plugin="b")
    table.create_jobs(conn, now=100)
    limits = {"a": 1, "c": 5}
    first = table.claim_next(conn, now=100, limits=limits, worker="local/host/1")
    assert (first.route_match_id, first.worker) == (matches[0], "local/host/1")
    assert table.claim_next(conn, now=100, limits=limits).route_match_id == other
    assert table.claim_next(conn, now=100, limits=limits) is None  # a is at 1, b has none left
    assert table.running_by_plugin(conn) == {"a": 1, "b": 1}
    second = table.claim_next(conn, now=100, limits={"a": 2})
    assert second.route_match_id == matches[1]
    table.fail(conn, first.id, "x", retryable=True, policy=POLICY, now=100)  # due at 160
    assert table.claim_next(conn, now=1000, limits=limits) is None  # the second a still runs
    assert table.mark_succeeded(conn, second.id, {}, now=101)
    third = table.claim_next(conn, now=1000, limits=limits, worker="celery@gpu-1")
    assert (third.route_match_id, third.worker) == (matches[2], "celery@gpu-1")
    assert table.mark_succeeded(conn, third.id, {}, now=1001)
    again = table.claim_next(conn, now=1000, limits=limits)
    assert (again.id, again.attempts, again.worker) == (first.id, 2, None)  # not the last one's


def _manifest(name: str, version: str, limit: int | None) -> PluginManifest:
    return PluginManifest.model_validate(
        {
            "name": name,
            "version": version,
            "runner": "python",
            "entry": "plugin:P",
            "resources": {"max_concurrent_jobs": limit},
        }
    )


def test_limits_are_the_smallest_of_a_plugins_versions():
    catalog = Catalog.of(
        [
            _manifest("a", "1.0", 3),
            _manifest("a", "2.0", 2),
            _manifest("a", "3.0", None),
            _manifest("b", "1.0", None),
        ]
    )
    assert limits_of(catalog) == {"a": 2}


def test_limits_follow_a_changed_manifest(tmp_path):
    folder = tmp_path / "plugins" / "a"
    folder.mkdir(parents=True)
    manifest = folder / "plugin.yaml"
    text = "name: a\nversion: 1.0.0\nrunner: python\nentry: plugin:P\n"
    manifest.write_text(text + "resources: {max_concurrent_jobs: 1}\n")
    clock = [0.0]
    limits = PluginLimits([tmp_path / "plugins"], refresh_s=5, clock=lambda: clock[0])
    assert limits.current()["a"] == 1
    manifest.write_text(text + "resources: {max_concurrent_jobs: 4}\n")
    os.utime(manifest, ns=(0, manifest.stat().st_mtime_ns + 10**9))
    clock[0] = 4.0
    assert limits.current()["a"] == 1  # not looked at again yet
    clock[0] = 9.5
    assert limits.current()["a"] == 4


def test_cancel_and_retry(conn):
    for _ in range(3):
        seed_route_match(conn, generate_uid(), generate_uid())
    table.create_jobs(conn, now=100)
    a, b, c = sorted(j.id for j in table.list_jobs(conn))
    assert table.cancel(conn, a)
    assert not table.cancel(conn, a)  # already cancelled
    for job_id in (b, c):
        table.claim_next(conn, now=100)
        table.fail(conn, job_id, "bad", retryable=False, policy=POLICY)
    assert table.retry(conn, a)
    assert table.get_job(conn, a).state is JobState.QUEUED
    assert table.retry_failed(conn) == 2
    assert {j.state for j in table.list_jobs(conn)} == {JobState.QUEUED}
    assert {j.attempts for j in table.list_jobs(conn)} == {0}
    assert [j.id for j in table.list_jobs(conn, JobState.FAILED)] == []
