"""Acceptance 4 end to end: ``ainode serve`` keeps receiving and routing while routes.yaml is
changed under it and SIGHUP is sent -- an invalid change is refused, a valid one applies."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml
from conftest import REPO, free_port, wait_until
from ingest_support import make_instances

from node.scu import Peer, send

ROUTES = """
routes:
  - name: chest
    when: {{modality: CT, body_part: chest}}
    run: [{plugin}]
    send_to: []
"""


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path, int]]:
    port = free_port()
    (tmp_path / "routes.yaml").write_text(ROUTES.format(plugin="ct-lung-nodule"))
    config = {
        "listener": {"ae_title": "AINODE", "host": "127.0.0.1", "port": port},
        "access": {"accept_any": True},
        "storage": {"data_dir": str(tmp_path / "data"), "min_free_mb": 1},
        "stability": {"stable_after_s": 0.5, "after_release_s": 0.2, "poll_interval_s": 0.05},
        "routes_file": "routes.yaml",
        "plugin_dirs": [str(REPO / "models" / "plugins")],
        "jobs": {"workers": 1, "max_attempts": 1},
    }
    (tmp_path / "node.yaml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "node.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "node", "serve", "--config", str(tmp_path / "node.yaml")],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: _listening(port) or process.poll() is not None,
            timeout=60,
            what="ainode serve listening",
        )
        assert process.poll() is None, (tmp_path / "node.log").read_text()
        yield process, tmp_path, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)
        log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _send_study(folder: Path, port: int, name: str) -> str:
    paths = make_instances(folder / name, 3)
    report = send(paths, Peer("AINODE", "127.0.0.1", port), calling_ae="MODALITY")
    assert report.ok, report
    return pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID


def _routed_plugins(database: Path, study: str) -> list[str] | None:
    conn = sqlite3.connect(database)
    try:
        row = conn.execute(
            "SELECT id, routed_at FROM study_versions WHERE study_instance_uid = ?", (study,)
        ).fetchone()
        if row is None or row[1] is None:
            return None
        return [
            r[0]
            for r in conn.execute(
                "SELECT plugin FROM route_matches WHERE study_version_id = ?", (row[0],)
            )
        ]
    finally:
        conn.close()


def test_reload_while_serving(node) -> None:
    process, folder, port = node
    database = folder / "data" / "ainode.sqlite3"
    log = folder / "node.log"

    first = _send_study(folder, port, "a")
    assert wait_until(lambda: _routed_plugins(database, first), timeout=60) == ["ct-lung-nodule"]

    (folder / "routes.yaml").write_text(ROUTES.format(plugin="no-such-plugin"))
    os.kill(process.pid, signal.SIGHUP)
    wait_until(
        lambda: "rejected, keeping the 1 route(s) in force" in log.read_text(),
        timeout=30,
        what="invalid routes rejected",
    )
    assert "unknown plugin 'no-such-plugin'" in log.read_text()

    second = _send_study(folder, port, "b")  # still receiving, still on the old routes
    assert wait_until(lambda: _routed_plugins(database, second), timeout=60) == ["ct-lung-nodule"]

    (folder / "routes.yaml").write_text(ROUTES.format(plugin="dx-chest"))
    os.kill(process.pid, signal.SIGHUP)
    wait_until(
        lambda: "routes: reloaded 1 route(s)" in log.read_text(),
        timeout=30,
        what="valid routes reloaded",
    )
    third = _send_study(folder, port, "c")
    assert wait_until(lambda: _routed_plugins(database, third), timeout=60) == ["dx-chest"]
    assert process.poll() is None
    assert _routed_plugins(database, first) == ["ct-lung-nodule"]

    # explain reads what ingest indexed for the study (its attributes JSON and columns)
    explained = subprocess.run(
        [
            sys.executable,
            "-m",
            "node",
            "routes",
            "explain",
            third,
            "--config",
            str(folder / "node.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert explained.returncode == 0, explained.stderr
    assert f"study {third} (version 1): 1 series" in explained.stdout
    assert "region chest (from BodyPartExamined 'CHEST')" in explained.stdout
    assert "route chest [priority 0, production]: MATCHED" in explained.stdout
    assert "Synthetic^Patient" not in explained.stdout + explained.stderr
