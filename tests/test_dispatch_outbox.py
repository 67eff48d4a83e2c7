"""The outbox rows' life: pending, backoff, dead letter, retry, re-enqueue by a re-run job."""

from __future__ import annotations

import json

import pytest
from pipeline_rows import add_result, secondary_capture, seed_job
from pydicom.uid import generate_uid

from node.db import connect
from node.dispatch.outbox import (
    OutboxState,
    due_rows,
    enqueue,
    list_rows,
    mark_failed,
    mark_sent,
    next_due_at,
    retry_dead,
)
from node.shared_types import RetryPolicy


@pytest.fixture
def outbox(tmp_path):
    conn = connect(tmp_path / "db.sqlite3")
    study, series = generate_uid(), generate_uid()
    job_id = seed_job(conn, study, series)
    outputs = tmp_path / "outputs"
    for seed in range(3):
        add_result(conn, outputs, job_id, secondary_capture(study, series, seed), ("a", "b"))
    yield conn, outputs, job_id
    conn.close()


def test_policy_doubles_and_caps():
    policy = RetryPolicy(max_attempts=5, backoff_s=2, backoff_max_s=10)
    assert [policy.delay_after(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0, backoff_s=1, backoff_max_s=1)


def test_rows_are_per_destination_and_due_now(outbox):
    conn, outputs, _ = outbox
    rows_a = due_rows(conn, "a", outputs, now=1e12, limit=10)
    rows_b = due_rows(conn, "b", outputs, now=1e12, limit=10)
    assert len(rows_a) == len(rows_b) == 3
    assert {r.sop_instance_uid for r in rows_a} == {r.sop_instance_uid for r in rows_b}
    assert all(r.path.is_file() and r.path.is_relative_to(outputs) for r in rows_a)
    assert due_rows(conn, "a", outputs, now=0, limit=10) == []


def test_failure_backs_off_then_dead_letters(outbox):
    conn, outputs, _ = outbox
    policy = RetryPolicy(max_attempts=2, backoff_s=30, backoff_max_s=60)
    now = 1e12
    rows = due_rows(conn, "a", outputs, now, 10)
    assert mark_failed(conn, rows, "peer unreachable", policy, now) == []
    assert due_rows(conn, "a", outputs, now, 10) == []  # backing off
    assert next_due_at(conn, "a") == pytest.approx(now + 30)
    assert len(due_rows(conn, "b", outputs, now, 10)) == 3  # the other destination is unaffected
    rows = due_rows(conn, "a", outputs, now + 30, 10)
    dead = mark_failed(conn, rows, "peer unreachable", policy, now + 30)
    assert len(dead) == 3
    listed = list_rows(conn, outputs, OutboxState.DEAD)
    assert {(r.destination, r.attempts, r.last_error) for r in listed} == {
        ("a", 2, "peer unreachable")
    }
    assert next_due_at(conn, "a") is None
    assert retry_dead(conn, now=now + 100) == 3
    assert len(due_rows(conn, "a", outputs, now + 100, 10)) == 3


def test_dead_letters_of_one_destination_are_retried_alone(outbox):
    conn, outputs, _ = outbox
    policy = RetryPolicy(max_attempts=1, backoff_s=0, backoff_max_s=0)
    for destination in ("a", "b"):
        mark_failed(conn, due_rows(conn, destination, outputs, 1e12, 10), "down", policy, 1e12)
    assert retry_dead(conn, now=1e12, destination="b") == 3
    assert {r.destination for r in list_rows(conn, outputs, OutboxState.DEAD)} == {"a"}
    assert len(list_rows(conn, outputs, OutboxState.PENDING, limit=2)) == 2


def test_sent_rows_stay_sent_and_reenqueue_resets(outbox):
    conn, outputs, _ = outbox
    rows = due_rows(conn, "a", outputs, 1e12, 10)
    mark_sent(conn, [r.id for r in rows], now=5.0)
    assert due_rows(conn, "a", outputs, 1e12, 10) == []
    # a failure reported late (e.g. after a crash) does not resurrect a sent row
    mark_failed(conn, rows, "late", RetryPolicy(1, 0, 0), 1e12)
    assert {r.state for r in list_rows(conn, outputs) if r.destination == "a"} == {OutboxState.SENT}
    # a re-run job writes the same UIDs: the rows are owed again
    enqueue(conn, rows[0].sop_instance_uid, "a", now=7.0)
    again = due_rows(conn, "a", outputs, 1e12, 10)
    assert [(r.sop_instance_uid, r.attempts, r.sent_at) for r in again] == [
        (rows[0].sop_instance_uid, 0, None)
    ]


def test_send_time_is_stamped_when_a_job_is_fully_delivered(outbox):
    conn, outputs, job_id = outbox
    finished = conn.execute("SELECT finished_at FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
    rows_a = due_rows(conn, "a", outputs, 1e12, 10)
    mark_sent(conn, [r.id for r in rows_a], now=finished + 1)

    def timings():
        return conn.execute("SELECT timings FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]

    assert "send" not in timings()  # destination b still owed
    rows_b = due_rows(conn, "b", outputs, 1e12, 10)
    mark_sent(conn, [r.id for r in rows_b], now=finished + 3)
    assert json.loads(timings())["send"] == pytest.approx(3.0)
