"""``ainode jobs`` and ``ainode outbox``: what operators see and the actions they take."""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml
from pipeline_rows import add_result, secondary_capture, seed_job, seed_route_match
from pydicom.uid import generate_uid

from node.cli import main
from node.db import connect, transaction
from node.dispatch.outbox import OutboxState, due_rows, list_rows, mark_failed
from node.jobs import table
from node.jobs.table import JobState
from node.shared_types import RetryPolicy


@pytest.fixture
def site(tmp_path):
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")}}))
    conn = connect(tmp_path / "data" / "ainode.sqlite3")
    yield config, conn, tmp_path / "data" / "outputs"
    conn.close()


def test_jobs_list_shows_states_and_failure_reasons(site, capsys):
    config, conn, _ = site
    study = generate_uid()
    seed_route_match(conn, study, generate_uid(), plugin="ct-lung-nodule")
    seed_route_match(conn, generate_uid(), generate_uid(), plugin="dx-chest")
    table.create_jobs(conn)
    failing = table.claim_next(conn)
    table.fail(
        conn,
        failing.id,
        "cannot load series: no installed codec decodes 1.2.3",
        retryable=False,
        policy=RetryPolicy(1, 0, 0),
    )
    assert main(["jobs", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "FAILED" in out and "QUEUED" in out
    assert "error: cannot load series: no installed codec decodes 1.2.3" in out
    assert study in out
    assert main(["jobs", "--config", str(config), "--state", "failed"]) == 0
    out = capsys.readouterr().out
    assert "ct-lung-nodule" in out and "dx-chest" not in out


def test_jobs_list_names_the_worker_and_a_route_that_is_not_normal(site, capsys):
    config, conn, _ = site
    seed_route_match(conn, generate_uid(), generate_uid(), plugin="dx-chest", urgency=0)
    seed_route_match(conn, generate_uid(), generate_uid(), plugin="ct-lung-nodule")
    table.create_jobs(conn)
    table.claim_next(conn, worker="celery@gpu-box-1")
    assert main(["jobs", "--config", str(config)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "attempts=" in line]
    assert "dx-chest" in lines[1] and "(urgent)" in lines[1]
    assert lines[1].endswith("worker=celery@gpu-box-1")
    assert "(normal)" not in lines[0] and lines[0].endswith("worker=-")


def test_workers_lists_heartbeats_and_gone_ones(site, capsys):
    config, conn, _ = site
    assert main(["workers", "--config", str(config)]) == 0
    assert "no remote workers" in capsys.readouterr().out
    now = time.time()
    with transaction(conn):
        for name, job, seen, counts in (
            ("celery@gpu-1", 7, now - 5, (12, 1)),
            ("celery@cpu-2", None, now - 61, (3, 0)),
        ):
            conn.execute(
                "INSERT INTO workers (name, queues, devices, plugins, current_job, started_at, "
                "last_seen, jobs_succeeded, jobs_failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    json.dumps(["plugin.dx-chest", "plugin.ct-lung-nodule"]),
                    json.dumps(["cuda:0"] if job else ["cpu"]),
                    json.dumps(["dx-chest@1.0.0"]),
                    job,
                    now - 3600,
                    seen,
                    *counts,
                ),
            )
    assert main(["workers", "--config", str(config)]) == 0
    header, cpu, gpu = (re.split(r"\s{2,}", line) for line in capsys.readouterr().out.splitlines())
    queues = "plugin.dx-chest,plugin.ct-lung-nodule"
    assert header[:6] == ["NAME", "STATE", "QUEUES", "DEVICES", "JOB", "LAST SEEN"]
    assert header[6:] == ["SUCCEEDED", "FAILED"]
    assert gpu[:5] + gpu[6:] == ["celery@gpu-1", "busy", queues, "cuda:0", "7", "12", "1"]
    assert cpu[:5] + cpu[6:] == ["celery@cpu-2", "gone", queues, "cpu", "-", "3", "0"]
    assert gpu[5] in ("5s ago", "6s ago") and cpu[5] in ("61s ago", "62s ago")


def test_jobs_retry_and_cancel(site, capsys):
    config, conn, _ = site
    for _ in range(2):
        seed_route_match(conn, generate_uid(), generate_uid())
    table.create_jobs(conn)
    first = table.claim_next(conn)
    table.fail(conn, first.id, "boom", retryable=False, policy=RetryPolicy(1, 0, 0))
    second = next(j for j in table.list_jobs(conn) if j.id != first.id)

    assert main(["jobs", "--config", str(config), "retry", str(second.id)]) == 1
    assert "not FAILED" in capsys.readouterr().err
    assert main(["jobs", "--config", str(config), "retry", "--failed"]) == 0
    assert "re-queued 1" in capsys.readouterr().out
    assert table.get_job(conn, first.id).state is JobState.QUEUED
    assert main(["jobs", "cancel", str(first.id), "--config", str(config)]) == 0
    assert table.get_job(conn, first.id).state is JobState.CANCELLED
    assert main(["jobs", "--config", str(config), "cancel", "999"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_outbox_dead_letters_and_retry(site, capsys):
    config, conn, outputs = site
    study, series = generate_uid(), generate_uid()
    job_id = seed_job(conn, study, series)
    ds = secondary_capture(study, series)
    add_result(conn, outputs, job_id, ds, ("pacs",))
    rows = due_rows(conn, "pacs", outputs, 1e12, 10)
    mark_failed(conn, rows, "association rejected by PACS@10.0.0.1:104", RetryPolicy(1, 0, 0), 0)

    assert main(["outbox", "--config", str(config), "--dead"]) == 0
    out = capsys.readouterr().out
    assert "DEAD" in out and ds.SOPInstanceUID in out
    assert "last error: association rejected by PACS@10.0.0.1:104" in out
    assert main(["outbox", "--config", str(config), "retry"]) == 0
    assert "re-queued 1" in capsys.readouterr().out
    assert [r.state for r in list_rows(conn, outputs)] == [OutboxState.PENDING]
    assert main(["outbox", "--config", str(config), "--dead"]) == 0
    assert "no dead-lettered deliveries" in capsys.readouterr().out
