"""Receiver processes (``listener.processes``): the limit across them, a receiver that dies,
a clean stop that leaves no journal to replay, and the settings' checks.

The ingest suite itself runs with four receivers in ``test_ingest_modes`` (``receivers-4``)
and the kill -9 cycles of the node and of one receiver in ``test_ingest_crash``.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from node.config import NodeConfig
from node.ingest.association_slots import AssociationSlots
from node.ingest.journal import Journal
from node.scu import Peer, send
from tests.conftest import wait_until
from tests.ingest_support import make_instances, running_node
from tests.test_ingest_crash import receiver_pids

JOURNAL = {"journal": True, "journal_segment_mb": 1}
RECEIVERS = {"storage": JOURNAL}
MIB = 1 << 20


def _slots(tmp_path: Path, cells: int, limit: int) -> tuple[list[AssociationSlots], object]:
    counts = multiprocessing.get_context("spawn").RawArray("i", cells)
    lock = tmp_path / "associations.lock"
    return [AssociationSlots(counts, cell, lock, limit) for cell in range(cells)], counts


def test_the_limit_counts_every_receivers_associations(tmp_path: Path) -> None:
    (first, second, third), counts = _slots(tmp_path, 3, limit=3)
    assert first.take(1) and first.take(2) and second.take(3)
    assert not third.take(4), "a fourth association beyond the node's limit of 3"
    first.give(2)
    first.give(2)  # an association ends once, however many events say so
    assert third.take(4)
    assert list(counts) == [1, 1, 1]
    AssociationSlots.forget(counts, 0, tmp_path / "associations.lock")  # receiver 1 died
    assert second.take(5) and list(counts) == [0, 2, 1]


def test_a_receiver_killed_holding_the_lock_does_not_block_the_others(tmp_path: Path) -> None:
    (slots,), _ = _slots(tmp_path, 1, limit=5)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(tmp_path / 'associations.lock')!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    holder.kill()
    holder.wait()
    assert slots.take(1)


def test_more_than_one_process_needs_the_journal(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"listener\.processes: 4 needs storage\.journal: true"):
        NodeConfig.model_validate({"listener": {"processes": 4}})
    with pytest.raises(ValueError, match="must be auto or 1 to 32"):
        NodeConfig.model_validate({"listener": {"processes": 0}, "storage": JOURNAL})
    auto = NodeConfig.model_validate({"listener": {"processes": "auto"}, "storage": JOURNAL})
    assert 1 <= auto.listener.receiver_processes <= min(8, len(os.sched_getaffinity(0)))


def _associate(port: int):
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="AINODE")


def test_max_associations_holds_across_receiver_processes(tmp_path: Path) -> None:
    listener = {"processes": 4, "max_associations": 2}
    with running_node(tmp_path / "node", listener=listener, **RECEIVERS) as node:
        wait_until(lambda: "4 receiver processes listening" in node.log(), 30, what="all four")
        held = [_associate(node.port) for _ in range(2)]
        assert all(assoc.is_established for assoc in held)
        # the kernel spreads connections over the four receivers: most of these land on one
        # holding fewer than two, which only the node-wide count can refuse
        refused = [_associate(node.port) for _ in range(8)]
        assert not any(assoc.is_established for assoc in refused)
        assert all(assoc.is_rejected for assoc in refused)
        held.pop().release()
        wait_until(
            lambda: (a := _associate(node.port)).is_established and a.release() is None,
            timeout=10,
            what="an association accepted again once one was released",
        )
        held[0].release()
        assert "serves its max_associations (2)" in node.log()


def test_a_receiver_that_dies_is_replaced_and_the_node_goes_on(tmp_path: Path) -> None:
    files = make_instances(tmp_path / "in", 30)
    with running_node(tmp_path / "node", listener={"processes": 2}, **RECEIVERS) as node:
        wait_until(lambda: "2 receiver processes listening" in node.log(), 30, what="both")
        peer = Peer("AINODE", "127.0.0.1", node.port)
        assert send(files[:15], peer).ok
        before = receiver_pids(node.process.pid)
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        wait_until(
            lambda: len(set(receiver_pids(node.process.pid)) - set(before)) == 1,
            timeout=30,
            what="a new receiver in place of the one killed",
        )
        assert f"(pid {before[0]}) ended with exit code -9" in node.log()
        assert send(files[15:], peer).ok
        conn = sqlite3.connect(node.database)
        wait_until(
            lambda: conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 30,
            timeout=30,
            what="all 30 instances indexed",
        )
        conn.close()


def test_a_clean_stop_hands_every_journal_over(tmp_path: Path) -> None:
    files = make_instances(tmp_path / "in", 40)
    with running_node(tmp_path / "node", listener={"processes": 2}, **RECEIVERS) as node:
        wait_until(lambda: "2 receiver processes listening" in node.log(), 30, what="both")
        assert send(files, Peer("AINODE", "127.0.0.1", node.port)).ok
    assert node.process.returncode == 0
    assert (node.data_dir / "clean-stop").exists()
    conn = sqlite3.connect(node.database)
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 40
    conn.close()
    for folder in sorted((node.data_dir / "journal").glob("receiver-*")):
        with Journal.open(folder, segment_size=MIB) as journal:
            assert not list(journal.read()), f"{folder.name} left records to replay"
