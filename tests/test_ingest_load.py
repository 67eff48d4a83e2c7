"""Concurrent senders and a crash mid-send: acceptance 3 and 4.

Eight DCMTK storescu processes at once must leave an exact index; a ``kill -9`` while
storescu sends must lose nothing that was acknowledged and leave no partial file.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from node.scu import Peer, send
from tests.conftest import wait_until
from tests.ingest_support import DCMTK_ENV, make_instances, running_node, start_node, stop_node


def _storescu(dcmtk, port: int, files: list[Path], aet: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            dcmtk("storescu"),
            "-v",
            "-nh",
            "-aet",
            aet,
            "-aec",
            "AINODE",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=DCMTK_ENV,
    )


def _acknowledged(output: str) -> list[Path]:
    """Files storescu saw a Success response for, from its verbose log."""
    acknowledged, current = [], None
    for line in output.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line[len("I: Sending file: ") :].strip())
        elif line.startswith("I: Received Store Response (Success)") and current:
            acknowledged.append(current)
            current = None
    return acknowledged


@pytest.mark.dcmtk
def test_eight_simultaneous_storescu_store_all_800_with_an_exact_index(
    tmp_path: Path, dcmtk
) -> None:
    studies = [generate_uid(), generate_uid()]
    batches = [make_instances(tmp_path / f"in{n}", 100, study_uid=studies[n % 2]) for n in range(8)]
    with running_node(tmp_path / "node", listener={"max_associations": 8}) as node:
        senders = [
            _storescu(dcmtk, node.port, files, f"SENDER{n}") for n, files in enumerate(batches)
        ]
        outputs = [sender.communicate(timeout=300)[0] for sender in senders]
    for sender, output in zip(senders, outputs, strict=True):
        assert sender.returncode == 0, output[-2000:]
        assert len(_acknowledged(output)) == 100

    conn = sqlite3.connect(node.database)
    rows = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT sop_instance_uid, study_instance_uid, series_instance_uid, path, size_bytes, "
            "calling_ae FROM instances"
        )
    }
    assert len(rows) == 800
    for n, files in enumerate(batches):
        for path in files:
            source = dcmread(path, stop_before_pixels=True)
            study, series, stored, size, calling_ae = rows[source.SOPInstanceUID]
            assert (study, series) == (source.StudyInstanceUID, source.SeriesInstanceUID)
            assert calling_ae == f"SENDER{n}"
            assert (node.spool / stored).stat().st_size == size
    per_study = dict(
        conn.execute("SELECT study_instance_uid, COUNT(*) FROM instances GROUP BY 1").fetchall()
    )
    assert per_study == {studies[0]: 400, studies[1]: 400}
    assert conn.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 8
    assert len(list(node.spool.rglob("*.dcm"))) == 800


@pytest.mark.dcmtk
def test_kill_9_mid_send_loses_nothing_acknowledged_and_the_rest_completes_the_study(
    tmp_path: Path, dcmtk
) -> None:
    files = make_instances(tmp_path / "in", 500, size=64)
    stability = {"stable_after_s": 1.0, "poll_interval_s": 0.1}
    node = start_node(tmp_path / "node", stability=stability)
    try:
        sender = _storescu(dcmtk, node.port, files, "CRASHTEST")
        conn = sqlite3.connect(node.database, timeout=30)
        wait_until(
            lambda: conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] >= 100,
            timeout=120,
            what="100 instances indexed",
        )
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=30)
        output = sender.communicate(timeout=120)[0]
    finally:
        stop_node(node)
    acknowledged = _acknowledged(output)
    assert 100 <= len(acknowledged) < 500, "the kill did not land mid-send"

    node = start_node(tmp_path / "node", node.port, stability=stability)
    try:
        conn = sqlite3.connect(node.database, timeout=30)
        indexed = dict(conn.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
        for path in acknowledged:
            source = dcmread(path)
            stored = dcmread(node.spool / indexed[source.SOPInstanceUID])
            assert stored == source and stored.PixelData == source.PixelData
        # No temp file survives the restart, and spool and index hold the same files.
        assert not list((node.spool / ".incoming").iterdir())
        assert not [p for p in node.spool.rglob("*") if p.is_file() and p.suffix != ".dcm"]
        on_disk = {p.relative_to(node.spool).as_posix() for p in node.spool.rglob("*.dcm")}
        assert on_disk == set(indexed.values())
        assert all(".incoming" not in path for path in indexed.values())

        report = send(files, Peer("AINODE", "127.0.0.1", node.port), calling_ae="CRASHTEST")
        assert report.ok, report.failed[:3]
        wait_until(
            lambda: (
                conn.execute(
                    "SELECT instance_count FROM study_versions ORDER BY version DESC"
                ).fetchone()
                == (500,)
            ),
            timeout=60,
            what="the completed study to become stable",
        )
        assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 500
    finally:
        stop_node(node)
