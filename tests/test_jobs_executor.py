"""The local executor with worker processes: results and their outbox rows, failures with
their reasons (raise, hang, crash, bad route), cancellation, start-up reconcile, and the
claiming order and per-plugin limits it shares with every executor."""

from __future__ import annotations

import itertools
import os
import socket

import pytest
from conftest import wait_until
from jobs_fake_runners import gate, result_pid
from pipeline_rows import secondary_capture, seed_route_match, seed_series
from pydicom.uid import generate_uid

from node.config import NodeConfig
from node.db import connect, transaction
from node.dispatch.outbox import list_rows
from node.jobs import table
from node.jobs.executor import LocalExecutor
from node.jobs.table import JobState

RUNNER = "jobs_fake_runners:FakeRunner"


def make_config(tmp_path, plugin_dirs=(), **jobs) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "plugin_dirs": [str(p) for p in plugin_dirs],
            "jobs": {"workers": 2, "timeout_s": 60, "max_attempts": 2, "backoff_s": 0, **jobs},
            "destinations": {
                "results": {
                    "kind": "folder",
                    "path": str(tmp_path / "r"),
                    "send_as": ["seg", "sr"],
                },
                "sronly": {"kind": "folder", "path": str(tmp_path / "s"), "send_as": ["sr"]},
                "shadowbox": {"kind": "folder", "path": str(tmp_path / "x"), "shadow": True},
            },
        }
    )


def add_study(conn, config, plugin, destinations=("results",), mode="production", urgency=1) -> int:
    study, series = generate_uid(), generate_uid()
    datasets = [secondary_capture(study, series, seed) for seed in range(2)]
    seed_series(conn, config.storage.spool_dir, datasets)
    return seed_route_match(
        conn, study, series, plugin=plugin, destinations=destinations, mode=mode, urgency=urgency
    )


def job_of(conn, match_id):
    record = conn.execute("SELECT id FROM jobs WHERE route_match_id = ?", (match_id,)).fetchone()
    return None if record is None else table.get_job(conn, record["id"])


def finished(conn, match_id):
    job = job_of(conn, match_id)
    return job if job is not None and job.state in table.FINISHED else None


@pytest.fixture
def node(tmp_path):
    started = []

    def start(plugin_dirs=(), **jobs):
        config = make_config(tmp_path, plugin_dirs, **jobs)
        conn = connect(config.storage.database_path)
        executor = LocalExecutor(config, runner=RUNNER)
        started.append((executor, conn))
        return config, conn, executor

    yield start
    for executor, conn in started:
        executor.stop()
        conn.close()


def test_results_and_outbox_rows_commit_with_success(node):
    config, conn, executor = node()
    production = add_study(conn, config, "ok", ("results", "sronly", "shadowbox"))
    shadow = add_study(conn, config, "ok", ("results", "shadowbox"), mode="shadow")
    executor.start()
    for match in (production, shadow):
        job = wait_until(lambda m=match: finished(conn, m), timeout=60, what="job done")
        assert job.state is JobState.SUCCEEDED, job.error
        assert job.attempts == 1 and job.timings["inference"] > 0
    rows = list_rows(conn, config.storage.outputs_dir)
    owed = sorted((r.job_id, r.destination, r.kind) for r in rows)
    prod_id, shadow_id = job_of(conn, production).id, job_of(conn, shadow).id
    assert owed == sorted(
        [
            (prod_id, "results", "seg"),
            (prod_id, "results", "sr"),
            (prod_id, "sronly", "sr"),
            (shadow_id, "shadowbox", "seg"),
            (shadow_id, "shadowbox", "sr"),
        ]
    )
    # the model ran in a worker process, not in the node
    assert all(result_pid(r.path) != os.getpid() for r in rows)


def test_failures_keep_their_reason_and_the_node_goes_on(node):
    config, conn, executor = node(timeout_s=1.5)
    matches = {
        name: add_study(conn, config, name) for name in ("raise", "hang", "crash", "crash-once")
    }
    matches["bad-route"] = add_study(conn, config, "ok", ("results", "nowhere"))
    executor.start()
    jobs = {
        name: wait_until(lambda m=m: finished(conn, m), timeout=90, what=f"{name} finished")
        for name, m in matches.items()
    }
    assert {name: job.state for name, job in jobs.items()} == {
        "raise": JobState.FAILED,
        "hang": JobState.FAILED,
        "crash": JobState.FAILED,
        "crash-once": JobState.SUCCEEDED,
        "bad-route": JobState.FAILED,
    }
    assert "plugin exploded on purpose" in jobs["raise"].error
    assert jobs["hang"].error == "timed out after 1.5s"
    assert jobs["crash"].error == "worker process died (exit code 3)"
    assert jobs["raise"].attempts == jobs["hang"].attempts == 2
    assert jobs["crash-once"].attempts == 2
    assert "nowhere" in jobs["bad-route"].error and jobs["bad-route"].attempts == 1
    # and a new study still runs
    later = add_study(conn, config, "ok")
    executor.wake()
    job = wait_until(lambda: finished(conn, later), timeout=60, what="later job")
    assert job.state is JobState.SUCCEEDED


def test_cancel_stops_a_running_job(node):
    config, conn, executor = node(workers=1)
    hanging = add_study(conn, config, "hang")
    executor.start()
    job = wait_until(
        lambda: (j := job_of(conn, hanging)) and j.state is JobState.RUNNING and j,
        timeout=30,
        what="job running",
    )
    assert table.cancel(conn, job.id)
    after = add_study(conn, config, "ok")
    executor.wake()
    done = wait_until(lambda: finished(conn, after), timeout=60, what="next job on the worker")
    assert done.state is JobState.SUCCEEDED
    assert table.get_job(conn, job.id).state is JobState.CANCELLED
    assert (
        conn.execute("SELECT COUNT(*) FROM results WHERE job_id = ?", (job.id,)).fetchone()[0] == 0
    )


def test_jobs_left_running_by_a_crash_are_run_at_start(node):
    config, conn, executor = node()
    match = add_study(conn, config, "ok")
    table.create_jobs(conn)
    job = table.claim_next(conn)  # a node that crashed right after taking it
    with transaction(conn):
        conn.execute("UPDATE jobs SET started_at = 0 WHERE id = ?", (job.id,))
    executor.start()
    done = wait_until(lambda: finished(conn, match), timeout=60, what="reconciled job")
    assert (done.state, done.attempts) == (JobState.SUCCEEDED, 2)


def limited_plugin(folder, name: str, max_concurrent_jobs: int):
    """A manifest that only sets the limit: the fake runner stands in for the plugin."""
    (folder / name).mkdir(parents=True)
    (folder / name / "plugin.yaml").write_text(
        f"name: {name}\nversion: 1.0.0\nrunner: python\nentry: plugin:Fake\n"
        f"resources: {{max_concurrent_jobs: {max_concurrent_jobs}}}\n"
    )
    return folder


def test_a_plugin_at_its_limit_waits_while_another_goes_ahead(node, tmp_path):
    plugins = limited_plugin(tmp_path / "plugins", "gated-a", 1)
    config, conn, executor = node(plugin_dirs=(plugins,))  # 2 workers
    limited = [add_study(conn, config, "gated-a") for _ in range(3)]  # run until the gate opens
    other = add_study(conn, config, "ok")  # queued after them
    executor.start()
    done = wait_until(lambda: finished(conn, other), timeout=60, what="the other plugin's job")
    waiting = [job_of(conn, m) for m in limited]
    assert done.state is JobState.SUCCEEDED, done.error
    assert [j.state for j in waiting] == [JobState.RUNNING, JobState.QUEUED, JobState.QUEUED]
    assert waiting[0].started_at <= done.started_at
    path = conn.execute("SELECT path FROM results WHERE job_id = ?", (done.id,)).fetchone()[0]
    pid = result_pid(config.storage.outputs_dir / path)
    assert done.worker == f"local/{socket.gethostname()}/{pid}"
    assert waiting[0].worker.startswith("local/") and waiting[0].worker != done.worker

    gate(config).touch()
    ran = [
        wait_until(lambda m=m: finished(conn, m), timeout=60, what="limited job") for m in limited
    ]
    assert [j.state for j in ran] == [JobState.SUCCEEDED] * 3
    ran.sort(key=lambda j: j.started_at)
    for before, after in itertools.pairwise(ran):
        assert after.started_at >= before.finished_at  # never two RUNNING at once


def test_an_urgent_job_queued_after_normal_ones_is_claimed_first(node):
    config, conn, executor = node(workers=1)
    normal = [add_study(conn, config, "ok") for _ in range(2)]
    urgent = add_study(conn, config, "ok", urgency=0)
    executor.start()
    ran = [
        wait_until(lambda m=m: finished(conn, m), timeout=60, what="job done")
        for m in (*normal, urgent)
    ]
    assert {j.state for j in ran} == {JobState.SUCCEEDED}
    ran.sort(key=lambda j: j.started_at)
    assert [j.route_match_id for j in ran] == [urgent, *normal]
