"""The job state machine: one job per route match, backoff, failure, reconcile, operator
actions."""

from __future__ import annotations

import pytest
from pipeline_rows import seed_route_match
from pydicom.uid import generate_uid

from node.db import connect
from node.dispatch.outbox import RetryPolicy
from node.jobs import table
from node.jobs.table import JobState

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
