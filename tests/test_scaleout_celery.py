"""Jobs on ``ainode worker``s through Celery on a real RabbitMQ: two workers with folders of
their own run two plugins' jobs, the results reach Orthanc once, and nothing is lost or
doubled when a worker, the broker or the node is killed in the middle."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest
from conftest import REPO, poll_until
from orthanc import orthanc_servers
from outputs_support import write_synthetic_ct
from rabbitmq_support import rabbitmq  # noqa: F401 - a fixture
from scaleout_support import make_cluster, wait_for_workers, write_gated_plugin

from node.scu import Peer, send

pytestmark = [pytest.mark.rabbitmq, pytest.mark.orthanc]

ROUTES = """
routes:
  - name: ct-a
    when: {modality: CT, SeriesDescription: A}
    run: [plugin-a]
    send_to: [pacs]
  - name: ct-b
    when: {modality: CT, SeriesDescription: B}
    run: [plugin-b]
    send_to: [pacs]
"""


@pytest.fixture
def orthanc_factory(tmp_path):
    yield from orthanc_servers(tmp_path)


def _query(database: Path, sql: str, *params) -> list[tuple]:
    try:
        conn = sqlite3.connect(database, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return []


def _study(folder: Path, description: str) -> tuple[str, list[Path]]:
    paths = write_synthetic_ct(folder, slices=10, size=48, SeriesDescription=description)
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


@pytest.fixture
def cluster(tmp_path, rabbitmq, orthanc_factory):  # noqa: F811 - the fixture above
    pacs = orthanc_factory()
    plugins = tmp_path / "plugins"
    write_gated_plugin(plugins, "plugin-a")
    write_gated_plugin(plugins, "plugin-b")
    (tmp_path / "routes.yaml").write_text(ROUTES)
    sections = {
        "routes_file": str(tmp_path / "routes.yaml"),
        "plugin_dirs": [str(plugins)],
        "destinations": {
            "pacs": {
                "kind": "dicom",
                "ae_title": pacs.ae_title,
                "host": "127.0.0.1",
                "port": pacs.dicom_port,
            }
        },
        "dispatch": {"backoff_s": 0.2, "backoff_max_s": 2, "max_attempts": 100},
    }
    made = make_cluster(tmp_path / "cluster", rabbitmq.url, sections)
    made.pacs = pacs
    made.broker = rabbitmq
    made.plugins = plugins
    try:  # each test starts the node when its plugins are as it wants them
        yield made
    finally:
        made.stop()


def _delivered(database: Path, jobs: int) -> bool:
    states = [r[0] for r in _query(database, "SELECT state FROM jobs")]
    outbox = [r[0] for r in _query(database, "SELECT state FROM outbox")]
    return states == ["SUCCEEDED"] * jobs and bool(outbox) and set(outbox) == {"SENT"}


def _exactly_once_in_orthanc(cluster, studies: list[str]) -> None:
    """Orthanc holds each result of each study once and nothing else (the sources went to
    the node only): a second run of a job would have added instances under new UIDs."""
    database = cluster.node.data_dir / "ainode.sqlite3"
    results = sorted(r[0] for r in _query(database, "SELECT sop_instance_uid FROM results"))
    held = sorted(
        item["MainDicomTags"]["SOPInstanceUID"]
        for study in studies
        for item in cluster.pacs.instances_in_study(study)
    )
    assert held == results and len(results) == 3 * len(studies)  # SEG, SR, text SR each


def test_two_workers_run_two_plugins_and_results_reach_orthanc_once(cluster, tmp_path) -> None:
    cluster.start_node()
    for name in ("worker-1", "worker-2"):
        cluster.add_worker(name, [cluster.plugins])
    wait_for_workers(cluster)
    studies = []
    for description in ("A", "B"):
        study, paths = _study(tmp_path / f"study-{description}", description)
        studies.append(study)
        report = send(paths, Peer("AINODE", "127.0.0.1", cluster.node.port), calling_ae="CT1")
        assert report.failed == ()
    database = cluster.node.data_dir / "ainode.sqlite3"
    assert poll_until(lambda: _delivered(database, 2), 40), cluster.logs()
    ran = _query(
        database,
        "SELECT m.plugin, j.worker FROM jobs j JOIN route_matches m ON m.id = j.route_match_id",
    )
    assert sorted(p for p, _ in ran) == ["plugin-a", "plugin-b"]
    assert {w for _, w in ran} <= {"worker-1", "worker-2"}, cluster.logs()
    _exactly_once_in_orthanc(cluster, studies)
    listed = subprocess.run(
        [sys.executable, "-m", "node", "workers", "--config", str(cluster.node.config_path)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "worker-1" in listed.stdout and "worker-2" in listed.stdout
    assert "ainode.plugin.plugin-a" in listed.stdout
    url = f"http://127.0.0.1:{cluster.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as answer:
        metrics = answer.read().decode()
    assert 'ainode_queue_jobs{queue="ainode.plugin.plugin-a"} 0.0' in metrics
    succeeded = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ainode_worker_jobs_total{") and 'outcome="succeeded"' in line
    ]
    assert sum(succeeded) == 2 and len(succeeded) == 2, metrics


def _send(cluster, tmp_path: Path, description: str, index: int = 0) -> str:
    study, paths = _study(tmp_path / f"study-{description}-{index}", description)
    report = send(paths, Peer("AINODE", "127.0.0.1", cluster.node.port), calling_ae="CT1")
    assert report.failed == ()
    return study


def _running_on(cluster, plugin: str) -> str | None:
    """The worker that reported starting the plugin's job, once it has."""
    database = cluster.node.data_dir / "ainode.sqlite3"
    rows = _query(
        database,
        "SELECT j.worker FROM jobs j JOIN route_matches m ON m.id = j.route_match_id "
        "WHERE m.plugin = ? AND j.state = 'RUNNING' AND j.worker IS NOT NULL",
        plugin,
    )
    running = [p for p in cluster.gates.glob(f"running-{plugin}-*")]
    return rows[0][0] if rows and running else None


def _gate(cluster, plugin: str) -> Path:
    gate = cluster.gates / f"{plugin}-1.0.0"
    gate.touch()
    return gate


def test_a_worker_killed_mid_job_leaves_its_job_to_the_other(cluster, tmp_path) -> None:
    cluster.start_node()
    workers = {name: cluster.add_worker(name, [cluster.plugins]) for name in ("w1", "w2")}
    wait_for_workers(cluster)
    gate = _gate(cluster, "plugin-a")
    study = _send(cluster, tmp_path, "A")
    victim = poll_until(lambda: _running_on(cluster, "plugin-a"), 60)
    assert victim, cluster.logs()
    workers[victim].kill()
    gate.unlink()
    database = cluster.node.data_dir / "ainode.sqlite3"
    assert poll_until(lambda: _delivered(database, 1), 120), cluster.logs()
    (survivor,) = set(workers) - {victim}
    assert _query(database, "SELECT worker, attempts FROM jobs") == [(survivor, 1)]
    _exactly_once_in_orthanc(cluster, [study])


def test_the_broker_killed_with_jobs_queued_loses_none(cluster, tmp_path) -> None:
    cluster.start_node()
    cluster.add_worker("w1", [cluster.plugins])
    wait_for_workers(cluster)
    gate = _gate(cluster, "plugin-a")
    studies = [_send(cluster, tmp_path, "A", index) for index in range(2)]
    studies.append(_send(cluster, tmp_path, "B"))
    assert poll_until(lambda: _running_on(cluster, "plugin-a"), 60), cluster.logs()
    # one plugin-a job runs; the others wait in their queues
    assert poll_until(lambda: sum(cluster.broker.queue_depths().values()) >= 1, 30)
    cluster.broker.kill()
    cluster.broker.start()
    gate.unlink()
    database = cluster.node.data_dir / "ainode.sqlite3"
    assert poll_until(lambda: _delivered(database, 3), 180), cluster.logs()
    _exactly_once_in_orthanc(cluster, studies)


def test_the_node_killed_with_jobs_in_flight_loses_none_and_stores_once(cluster, tmp_path) -> None:
    cluster.start_node()
    for name in ("w1", "w2"):
        cluster.add_worker(name, [cluster.plugins])
    wait_for_workers(cluster)
    gate = _gate(cluster, "plugin-a")
    studies = [_send(cluster, tmp_path, "A"), _send(cluster, tmp_path, "B")]
    assert poll_until(lambda: _running_on(cluster, "plugin-a"), 60), cluster.logs()
    cluster.node.process.kill()
    cluster.node.process.wait(30)
    gate.unlink()  # plugin-a's job finishes while the node is down: the worker waits for it
    cluster.start_node()
    database = cluster.node.data_dir / "ainode.sqlite3"
    assert poll_until(lambda: _delivered(database, 2), 180), cluster.logs()
    _exactly_once_in_orthanc(cluster, studies)


def test_a_busy_plugin_at_its_limit_does_not_hold_up_another(cluster, tmp_path) -> None:
    manifest = cluster.plugins / "plugin-a-1.0.0" / "plugin.yaml"
    manifest.write_text(manifest.read_text() + "resources: {max_concurrent_jobs: 1}\n")
    cluster.start_node()
    for name in ("w1", "w2"):
        cluster.add_worker(name, [cluster.plugins])
    wait_for_workers(cluster)
    gate = _gate(cluster, "plugin-a")
    for index in range(3):
        _send(cluster, tmp_path, "A", index)
    assert poll_until(lambda: _running_on(cluster, "plugin-a"), 60), cluster.logs()
    _send(cluster, tmp_path, "B")
    database = cluster.node.data_dir / "ainode.sqlite3"

    def b_done_while_a_waits() -> bool:
        rows = dict(
            _query(
                database,
                "SELECT m.plugin, group_concat(j.state) FROM jobs j "
                "JOIN route_matches m ON m.id = j.route_match_id GROUP BY m.plugin",
            )
        )
        return rows.get("plugin-b") == "SUCCEEDED" and "RUNNING" in rows.get("plugin-a", "")

    assert poll_until(b_done_while_a_waits, 120), cluster.logs()
    running_a = _query(
        database,
        "SELECT COUNT(*) FROM jobs j JOIN route_matches m ON m.id = j.route_match_id "
        "WHERE m.plugin = 'plugin-a' AND j.state = 'RUNNING'",
    )
    assert running_a == [(1,)]  # the limit: one published, the others wait in the table
    gate.unlink()
    assert poll_until(lambda: _delivered(database, 4), 180), cluster.logs()


def test_a_worker_with_another_manifest_refuses_the_job(cluster, tmp_path) -> None:
    cluster.node_sections["jobs"]["max_attempts"] = 1
    cluster.start_node()
    theirs = tmp_path / "worker-plugins"
    write_gated_plugin(theirs, "plugin-a")
    manifest = theirs / "plugin-a-1.0.0" / "plugin.yaml"
    manifest.write_text(manifest.read_text() + "description: built from other weights\n")
    cluster.add_worker("w1", [theirs])
    wait_for_workers(cluster)
    _send(cluster, tmp_path, "A")
    database = cluster.node.data_dir / "ainode.sqlite3"
    assert poll_until(lambda: _query(database, "SELECT state FROM jobs") == [("FAILED",)], 60)
    ((error,),) = _query(database, "SELECT error FROM jobs")
    assert "differs from the node's manifest" in error and "w1" in error


def test_a_job_past_its_timeout_on_a_worker_is_tried_again(cluster, tmp_path) -> None:
    cluster.node_sections["jobs"]["timeout_s"] = 3
    cluster.start_node()
    cluster.add_worker("w1", [cluster.plugins])
    wait_for_workers(cluster)
    gate = _gate(cluster, "plugin-a")
    study = _send(cluster, tmp_path, "A")
    database = cluster.node.data_dir / "ainode.sqlite3"

    def second_attempt() -> bool:
        return any(attempts >= 2 for (attempts,) in _query(database, "SELECT attempts FROM jobs"))

    assert poll_until(second_attempt, 60), cluster.logs()
    gate.unlink()
    assert poll_until(lambda: _delivered(database, 1), 60), cluster.logs()
    assert _query(database, "SELECT COUNT(*) FROM jobs WHERE attempts >= 2") == [(1,)]
    _exactly_once_in_orthanc(cluster, [study])
