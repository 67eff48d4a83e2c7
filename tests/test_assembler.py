"""Study stability (acceptance 6): quiet timer, release shortcut, late arrivals, restarts.

The decision is tested against the real schema with explicit clocks (``run_once(now=...)``);
the restart case runs the node as a process and kills it with SIGKILL.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from node.assembler import StudyAssembler
from node.config import StabilityConfig
from node.db import connect
from node.ingest.header import InstanceHeader
from node.ingest.index import Index, StoredInstance
from node.scu import Peer, send
from tests.conftest import wait_until
from tests.ingest_support import make_instances, start_node, stop_node

T0 = 1_700_000_000.0
STUDY = "1.2.826.0.1.3680043.8.498.1"


def _store(index: Index, at: float, number: int, study: str = STUDY) -> None:
    header = InstanceHeader(
        sop_instance_uid=f"{study}.{number}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid=study,
        series_instance_uid=f"{study}.0",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
    )
    index.store(StoredInstance(header, f"{number}.dcm", 10, at))


@pytest.fixture
def db(tmp_path: Path) -> tuple[Index, sqlite3.Connection]:
    path = tmp_path / "ainode.sqlite3"
    index = Index(path)
    conn = connect(path)
    yield index, conn
    index.close()
    conn.close()


def _versions(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    return [
        tuple(row)
        for row in conn.execute(
            "SELECT study_instance_uid, version, instance_count FROM study_versions "
            "ORDER BY study_instance_uid, version"
        )
    ]


def test_quiet_timer_makes_a_study_stable_once(db) -> None:
    index, conn = db
    assembler = StudyAssembler(Path(), StabilityConfig(stable_after_s=15, after_release_s=None))
    _store(index, T0, 1)
    _store(index, T0 + 5, 2)
    assert assembler.run_once(conn, now=T0 + 19.9) == []  # 14.9 s after the last instance
    recorded = assembler.run_once(conn, now=T0 + 20)
    assert [(v.version, v.instance_count) for v in recorded] == [(1, 2)]
    assert assembler.run_once(conn, now=T0 + 100) == []
    assert _versions(conn) == [(STUDY, 1, 2)]
    assert conn.execute("SELECT state FROM studies").fetchone()[0] == "stable"


def test_release_shortens_the_wait_unless_more_arrives_or_it_is_switched_off(db) -> None:
    index, conn = db
    shortcut = StudyAssembler(Path(), StabilityConfig(stable_after_s=15, after_release_s=2))
    _store(index, T0, 1)
    index.mark_released([STUDY], at=T0 + 1)
    assert shortcut.run_once(conn, now=T0 + 2.9) == []
    assert [v.version for v in shortcut.run_once(conn, now=T0 + 3)] == [1]

    other = "1.2.826.0.1.3680043.8.498.2"
    _store(index, T0, 1, study=other)
    index.mark_released([other], at=T0 + 1)
    _store(index, T0 + 2, 2, study=other)  # another association delivered after the release
    assert shortcut.run_once(conn, now=T0 + 10) == []
    assert [v.version for v in shortcut.run_once(conn, now=T0 + 17)] == [1]

    third = "1.2.826.0.1.3680043.8.498.3"
    no_shortcut = StudyAssembler(Path(), StabilityConfig(stable_after_s=15, after_release_s=None))
    _store(index, T0, 1, study=third)
    index.mark_released([third], at=T0 + 1)
    assert no_shortcut.run_once(conn, now=T0 + 14) == []
    assert [v.study_instance_uid for v in no_shortcut.run_once(conn, now=T0 + 15)] == [third]


def test_late_arrival_reopens_the_study_as_a_new_version(db) -> None:
    index, conn = db
    assembler = StudyAssembler(Path(), StabilityConfig(stable_after_s=15, after_release_s=None))
    _store(index, T0, 1)
    assembler.run_once(conn, now=T0 + 15)
    _store(index, T0 + 60, 2)  # after the study was stable
    study = conn.execute("SELECT state, version FROM studies").fetchone()
    assert tuple(study) == ("receiving", 2)
    rows = conn.execute("SELECT study_version FROM instances ORDER BY sop_instance_uid")
    assert [r[0] for r in rows] == [1, 2]
    assert assembler.run_once(conn, now=T0 + 70) == []
    assembler.run_once(conn, now=T0 + 75)
    assert _versions(conn) == [(STUDY, 1, 1), (STUDY, 2, 2)]


def test_two_assemblers_racing_record_each_version_once(tmp_path: Path) -> None:
    """A restarted node overlapping the old one (or two passes at once) never double-fires."""
    path = tmp_path / "ainode.sqlite3"
    index = Index(path)
    for study in range(20):
        _store(index, T0, 1, study=f"{STUDY}{study}")
    index.close()
    stability = StabilityConfig(stable_after_s=1, after_release_s=None)
    results: list[int] = []

    def one_pass() -> None:
        conn = connect(path)
        results.append(len(StudyAssembler(path, stability).run_once(conn, now=T0 + 5)))
        conn.close()

    threads = [threading.Thread(target=one_pass) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(results) == 20
    conn = connect(path)
    assert conn.execute("SELECT COUNT(*) FROM study_versions").fetchone()[0] == 20


def test_assembler_stage_runs_on_its_own_thread(tmp_path: Path) -> None:
    path = tmp_path / "ainode.sqlite3"
    index = Index(path)
    _store(index, time.time(), 1)
    stage = StudyAssembler(path, StabilityConfig(stable_after_s=0.2, poll_interval_s=0.05))
    stage.start()
    try:
        conn = connect(path)
        wait_until(lambda: _versions(conn), timeout=10, what="the stage to record version 1")
    finally:
        stage.stop()
        index.close()
    assert _versions(conn) == [(STUDY, 1, 1)]


def test_pending_study_becomes_stable_on_schedule_after_kill_9(tmp_path: Path) -> None:
    files = make_instances(tmp_path / "in", 5)
    stability = {"stable_after_s": 3.0, "after_release_s": None, "poll_interval_s": 0.1}
    node = start_node(tmp_path / "node", stability=stability)
    try:
        assert send(files, Peer("AINODE", "127.0.0.1", node.port)).ok
        node.process.send_signal(signal.SIGKILL)  # before the 3 s are up
        node.process.wait(timeout=30)
    finally:
        stop_node(node)
    conn = sqlite3.connect(node.database, timeout=30)
    assert conn.execute("SELECT COUNT(*) FROM study_versions").fetchone()[0] == 0
    last = conn.execute("SELECT last_received_at FROM studies").fetchone()[0]

    node = start_node(tmp_path / "node", node.port, stability=stability)
    try:
        wait_until(
            lambda: conn.execute("SELECT COUNT(*) FROM study_versions").fetchone()[0],
            timeout=30,
            what="the pending study to become stable after the restart",
        )
        stable_at = conn.execute("SELECT stable_at FROM study_versions").fetchone()[0]
        assert stable_at >= last + 3.0  # on schedule: not early
        node.process.send_signal(signal.SIGKILL)  # and once more, after it fired
        node.process.wait(timeout=30)
    finally:
        stop_node(node)
    node = start_node(tmp_path / "node", node.port, stability=stability)
    try:
        # the same instance again, changed: re-opens the study (an identical re-send would not)
        changed = dcmread(files[0])
        changed.ImageComments = "re-sent with a change"
        changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
        assert send([tmp_path / "changed.dcm"], Peer("AINODE", "127.0.0.1", node.port)).ok
        wait_until(
            lambda: conn.execute("SELECT COUNT(*) FROM study_versions").fetchone()[0] == 2,
            timeout=30,
            what="the re-opened study to become stable",
        )
    finally:
        stop_node(node)
    assert conn.execute("SELECT version, instance_count FROM study_versions").fetchall() == [
        (1, 5),
        (2, 5),
    ]


def test_every_released_association_marks_its_study_released(tmp_path: Path) -> None:
    """pynetdicom may report the peer's close before its own release event; either order
    must record the release, or the study waits out the whole quiet timer instead."""
    node = start_node(tmp_path / "node", stability={"stable_after_s": 600, "after_release_s": 0})
    try:
        peer = Peer("AINODE", "127.0.0.1", node.port)
        for number in range(100):
            files = make_instances(tmp_path / f"study-{number}", 1)
            assert send(files, peer, calling_ae="STORESCU").ok
        conn = sqlite3.connect(node.database)
        try:
            wait_until(
                lambda: (
                    conn.execute(
                        "SELECT COUNT(*) FROM studies WHERE released_at IS NOT NULL"
                    ).fetchone()[0]
                    == 100
                ),
                timeout=20,
                what="all 100 released studies to be marked released",
            )
        finally:
            conn.close()
    finally:
        stop_node(node)
