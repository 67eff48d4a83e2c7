"""Jobs on ``ainode worker``s through Celery on a real RabbitMQ: two workers with folders of
their own run two plugins' jobs, the results reach Orthanc once, and nothing is lost or
doubled when a worker, the broker or the node is killed in the middle."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
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
    made.start_node()
    try:
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
