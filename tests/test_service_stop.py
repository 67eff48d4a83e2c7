"""`ainode serve` under SIGTERM: bounded, exit 0, says what it left, even on a full disk."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.scu import Peer, send
from tests.conftest import REPO
from tests.ingest_support import make_instances, start_node

STOP_DEADLINE_S = 60  # TimeoutStopSec in packaging/systemd/ainode.service


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs as the node's data folder (mounting needs root)."""
    data = tmp_path / "node" / "data"
    data.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(data)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "--lazy", str(data)], check=False)


def _fill(folder: Path) -> None:
    """Write a file until the filesystem has no byte left."""
    with (folder / "filler").open("wb", buffering=0) as filler:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    filler.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


def test_sigterm_on_a_full_disk_exits_0_and_says_why(tmp_path: Path, small_disk: Path) -> None:
    node = start_node(tmp_path / "node")
    try:
        files = make_instances(tmp_path / "study", 100)
        report = send(files, Peer.parse(node.peer), "SENDER", timeout_s=30)
        assert report.ok and report.sent == 100
        _fill(small_disk)
        node.process.send_signal(signal.SIGTERM)
        returncode = node.process.wait(timeout=STOP_DEADLINE_S)
    finally:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=30)
    log = node.log()
    assert returncode == 0, log
    assert "stopped stages" in log and "outbox row(s) pending" in log
    assert "index checkpoint at stop failed (database or disk is full)" in log
    assert "stopped without the clean-stop marker" in log
    assert "Traceback" not in log

    # room again: the next start replays the WAL and every instance is there
    (small_disk / "filler").unlink()
    listed = subprocess.run(
        [sys.executable, "-m", "node", "studies", "--config", str(node.config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "  100  " in listed.stdout


def test_sigterm_stop_logs_the_work_left(tmp_path: Path) -> None:
    node = start_node(tmp_path / "node")
    try:
        node.process.send_signal(signal.SIGTERM)
        returncode = node.process.wait(timeout=STOP_DEADLINE_S)
    finally:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait(timeout=30)
    log = node.log()
    assert returncode == 0, log
    assert "stopped stages" in log
    assert "0 job(s) running (re-queued then), 0 queued" in log
    assert (node.data_dir / "clean-stop").exists()
