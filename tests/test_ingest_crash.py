"""``kill -9`` of the node during four-association ingest, cycle after cycle, in every mode.

Each cycle starts four DCMTK storescu processes on new series, kills the node once some of
them are in, restarts it and checks the record against what storescu saw acknowledged (over
all cycles so far): every acknowledged instance in the index once and in the spool byte for
byte as sent, nothing else in the spool, no temp file. A few cycles per mode here; 20 under
``slow`` (issue 22's acceptance).
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble

from tests.conftest import free_port, wait_until
from tests.ingest_support import make_instances, start_node, stop_node
from tests.test_ingest_load import _acknowledged, _storescu

#: storage settings per mode (``files``: a file per instance, as before the journal).
MODES = {
    "files-fsync": {"durability": "fsync"},
    "files-os": {"durability": "os"},
    "journal-fsync": {"durability": "fsync", "journal": True, "journal_segment_mb": 1},
    "journal-os": {"durability": "os", "journal": True, "journal_segment_mb": 1},
}
SENDERS = 4
PER_SENDER = 120


def _dataset_bytes(path: Path) -> bytes:
    """A Part-10 file's bytes after its File Meta: what went over the wire."""
    with path.open("rb") as handle:
        read_preamble(handle, False)
        _read_file_meta_info(handle)
        return handle.read()


def _count(database: Path) -> int:
    conn = sqlite3.connect(database, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    finally:
        conn.close()


def _check_record(node_spool: Path, database: Path, acknowledged: list[Path]) -> None:
    """Every acknowledged file indexed once and spooled as sent; spool and index agree."""
    conn = sqlite3.connect(database, timeout=30)
    try:
        indexed = dict(conn.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
    finally:
        conn.close()
    for source in acknowledged:
        uid = str(read_file_meta_info(source).MediaStorageSOPInstanceUID)
        assert uid in indexed, f"acknowledged {source.name} is not indexed"
        assert _dataset_bytes(node_spool / indexed[uid]) == _dataset_bytes(source), source.name
    on_disk = {p.relative_to(node_spool).as_posix() for p in node_spool.rglob("*.dcm")}
    assert on_disk == set(indexed.values()), "spool and index disagree"
    assert len(set(indexed.values())) == len(indexed)
    assert not list((node_spool / ".incoming").iterdir()), "a temp file survived"


def kill_cycles(tmp_path: Path, dcmtk, storage: dict, cycles: int) -> int:
    """Run ``cycles`` kill -9 cycles; return how many instances were acknowledged in all."""
    port = free_port()
    sections = {"storage": storage, "listener": {"max_associations": 8}}
    acknowledged: list[Path] = []
    replays: list[str] = []
    node = start_node(tmp_path / "node", port, **sections)
    try:
        for cycle in range(cycles):
            batches = [
                make_instances(tmp_path / f"in-{cycle}-{n}", PER_SENDER, size=64)
                for n in range(SENDERS)
            ]
            database, before = node.database, _count(node.database)
            senders = [
                _storescu(dcmtk, node.port, files, f"CRASH{n}") for n, files in enumerate(batches)
            ]
            wait_until(
                lambda database=database, before=before: _count(database) >= before + 40,
                timeout=120,
                what="40 new instances indexed",
            )
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(timeout=30)
            outputs = [sender.communicate(timeout=120)[0] for sender in senders]
            this_cycle = [path for output in outputs for path in _acknowledged(output)]
            assert len(this_cycle) < SENDERS * PER_SENDER, "the kill did not land mid-send"
            acknowledged += this_cycle
            node = start_node(tmp_path / "node", port, **sections)
            if storage.get("journal"):  # the crash left records to replay, filed or not
                replays.append(_replay_line(node.log()))
            _check_record(node.spool, node.database, acknowledged)
    finally:
        stop_node(node)
    _check_record(node.spool, node.database, acknowledged)
    print("\n".join([*replays, f"{len(acknowledged)} acknowledged over {cycles} cycles"]))
    return len(acknowledged)


def _replay_line(log: str) -> str:
    """The start-up's account of the journal it replayed (there must be one)."""
    lines = [line for line in log.splitlines() if "journal replayed" in line]
    assert lines, f"no journal replay after the kill:\n{log[-2000:]}"
    return lines[-1]


@pytest.mark.dcmtk
@pytest.mark.parametrize("mode", sorted(MODES))
def test_kill_9_during_four_associations_loses_nothing_acknowledged(
    tmp_path: Path, dcmtk, mode: str
) -> None:
    cycles = 3 if mode.startswith("journal") else 2  # about a minute for the four modes
    assert kill_cycles(tmp_path, dcmtk, MODES[mode], cycles=cycles) >= cycles * 40


@pytest.mark.slow
@pytest.mark.dcmtk
@pytest.mark.parametrize("mode", sorted(MODES))
def test_twenty_kill_9_cycles_lose_nothing_acknowledged(tmp_path: Path, dcmtk, mode: str) -> None:
    assert kill_cycles(tmp_path, dcmtk, MODES[mode], cycles=20) >= 20 * 40
