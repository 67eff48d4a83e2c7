"""End to end with a real PACS: Orthanc C-STOREs a phantom chest CT to the node, the node's
SEG and SRs come back into the same study in Orthanc, valid, exactly once, through crashes.

The node runs as ``ainode serve`` (a subprocess, killed with SIGKILL where the test says so);
Orthanc runs from the Debian package with its own temp folder (``tests/orthanc.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port, wait_until
from ingest_support import RunningNode, stop_node
from orthanc import Modality, orthanc_servers

pytestmark = [pytest.mark.orthanc, pytest.mark.dicom3tools]


@pytest.fixture
def orthanc_factory(tmp_path):
    yield from orthanc_servers(tmp_path)


ROUTES = """
routes:
  - name: ct-chest-lung-nodule
    when:
      modality: CT
      body_part: chest
    series:
      orientation: axial
      min_instances: 10
      exclude_image_type: [LOCALIZER]
    run: [ct-lung-nodule]
    send_to: [pacs]
"""


def start_node(folder: Path, port: int, sections: dict) -> RunningNode:
    """``ainode serve`` on ``port`` with ``sections`` over a test base config."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "listener": {"ae_title": "AINODE", "host": "127.0.0.1", "port": port},
        "access": {"accept_any": True},
        "storage": {"data_dir": str(folder / "data"), "min_free_mb": 1},
        **sections,
    }
    config_path = folder / "node.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = folder / f"node-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    node = RunningNode(process, config_path, folder / "data", port, "AINODE", log_path)

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"ainode serve exited {process.returncode}:\n{node.log()[-3000:]}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=60, what="the node to listen")
    return node


def node_sections(tmp_path: Path, pacs) -> dict:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    return {
        "stability": {"stable_after_s": 1, "after_release_s": 0.2, "poll_interval_s": 0.1},
        "routes_file": str(routes),
        "plugin_dirs": [str(REPO / "models" / "plugins")],
        "jobs": {"workers": 1, "timeout_s": 300, "max_attempts": 3, "backoff_s": 0.5},
        "destinations": {
            "pacs": {
                "kind": "dicom",
                "ae_title": pacs.ae_title,
                "host": "127.0.0.1",
                "port": pacs.dicom_port,
                "timeout_s": 10,
            }
        },
        "dispatch": {"backoff_s": 0.2, "backoff_max_s": 2, "max_attempts": 100},
    }


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory) -> tuple[str, list[Path]]:
    from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct

    folder = tmp_path_factory.mktemp("phantom-ct")
    _, paths = write_chest_ct(folder, ChestCTSpec.small(), uid_seed="ainode-e2e-orthanc")
    from pydicom import dcmread

    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


def query(database: Path, sql: str, *params) -> list[sqlite3.Row]:
    conn = sqlite3.connect(database, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # the node has not created the schema yet
        return []
    finally:
        conn.close()


def job_states(database: Path) -> list[str]:
    return [r["state"] for r in query(database, "SELECT state FROM jobs ORDER BY id")]


def outbox_states(database: Path) -> list[str]:
    return [r["state"] for r in query(database, "SELECT state FROM outbox ORDER BY id")]


def all_delivered(database: Path) -> bool:
    states = outbox_states(database)
    return bool(states) and set(states) == {"SENT"}


def result_uids(database: Path) -> list[str]:
    return sorted(r[0] for r in query(database, "SELECT sop_instance_uid FROM results"))


def send_study_from_orthanc(pacs, paths: list[Path]) -> None:
    for path in paths:
        answer = pacs.upload(path)
    pacs.store_to("ainode", [answer["ParentStudy"]])


def check_results_in_orthanc(
    pacs, study: str, sources: list[Path], database: Path, tmp_path, validate_dicom
) -> None:
    uids = result_uids(database)
    kinds = sorted(r[0] for r in query(database, "SELECT kind FROM results"))
    assert kinds == ["seg", "sr", "text_sr"]
    in_orthanc = pacs.instances_in_study(study)
    by_uid = {item["MainDicomTags"]["SOPInstanceUID"]: item for item in in_orthanc}
    assert set(uids) <= set(by_uid), "a result is missing from the study in Orthanc"
    # exactly once: the sources plus one copy of each result, nothing else
    assert len(in_orthanc) == len(sources) + len(uids)
    downloaded = tmp_path / "from-orthanc"
    downloaded.mkdir(exist_ok=True)
    files = [pacs.download(by_uid[uid]["ID"], downloaded / f"{uid}.dcm") for uid in uids]
    verdict = validate_dicom(*files, sources=(sources[0].parent,))
    assert verdict.returncode == 0, verdict.stdout[-3000:] + verdict.stderr[-2000:]


def test_orthanc_sends_ct_and_gets_seg_and_sr_back(
    tmp_path,
    orthanc_factory,
    phantom_ct,
    validate_dicom,
):
    study, paths = phantom_ct
    port = free_port()
    pacs = orthanc_factory((Modality("ainode", "AINODE", "127.0.0.1", port),))
    node = start_node(tmp_path / "node", port, node_sections(tmp_path, pacs))
    try:
        send_study_from_orthanc(pacs, paths)
        wait_until(
            lambda: all_delivered(node.database), timeout=240, what="results delivered to Orthanc"
        )
        assert job_states(node.database) == ["SUCCEEDED"]
        check_results_in_orthanc(pacs, study, paths, node.database, tmp_path, validate_dicom)
    finally:
        stop_node(node)


def _connected_to(port: int) -> bool:
    """Whether any local TCP connection to 127.0.0.1:port is established (/proc/net/tcp)."""
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[2].endswith(wanted) and fields[3] == "01":
                return True
    return False


def test_kill_9_during_inference_and_during_sending(
    tmp_path,
    orthanc_factory,
    phantom_ct,
    validate_dicom,
):
    study, paths = phantom_ct
    port = free_port()
    pacs = orthanc_factory((Modality("ainode", "AINODE", "127.0.0.1", port),))
    sections = node_sections(tmp_path, pacs)
    node = start_node(tmp_path / "node", port, sections)
    frozen = False
    try:
        send_study_from_orthanc(pacs, paths)
        # 1. kill -9 while the job runs (loading, inference or output building)
        wait_until(
            lambda: job_states(node.database) == ["RUNNING"], timeout=120, what="job running"
        )
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(30)
        assert outbox_states(node.database) == []

        # 2. restart with the PACS frozen: the job completes, the sender hangs mid-association
        os.kill(pacs.process.pid, signal.SIGSTOP)
        frozen = True
        node = start_node(tmp_path / "node", port, sections)
        wait_until(
            lambda: job_states(node.database) == ["SUCCEEDED"],
            timeout=240,
            what="job re-run after the crash",
        )
        wait_until(
            lambda: _connected_to(pacs.dicom_port),
            timeout=30,
            what="the sender connected to the PACS",
        )
        assert set(outbox_states(node.database)) == {"PENDING"}
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(30)
        os.kill(pacs.process.pid, signal.SIGCONT)
        frozen = False

        # 3. restart: every result is delivered, exactly once
        node = start_node(tmp_path / "node", port, sections)
        wait_until(
            lambda: all_delivered(node.database),
            timeout=120,
            what="results delivered after the crashes",
        )
        assert job_states(node.database) == ["SUCCEEDED"]
        check_results_in_orthanc(pacs, study, paths, node.database, tmp_path, validate_dicom)
    finally:
        if frozen:
            os.kill(pacs.process.pid, signal.SIGCONT)
        stop_node(node)
