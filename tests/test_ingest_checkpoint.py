"""The spool checkpoint: a start after a crash lists only the series folders written since it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from pydicom import dcmread

import node.ingest.spool
from node.db import connect
from node.ingest.checkpoint import MARGIN_S, RECORD_EVERY_S, SpoolWrites
from node.ingest.checkpoint import read_checkpoint as read_recorded
from node.ingest.header import parse_file_header
from node.ingest.index import Index, StoredInstance
from node.ingest.recovery import recover_spool
from node.ingest.spool import Spool, instance_relpath, named_uid
from tests.ingest_support import make_instances


class Clock:
    """A real-time clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _spooled(spool: Spool, source: Path) -> str:
    """Write ``source`` into ``spool`` as the receive path does (its window opens when the
    spool tracks writes); return its path in the spool. No index row."""
    ds = dcmread(source)
    relpath = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.write(relpath, (source.read_bytes(),))
    return relpath


def _indexed(index: Index, spool: Spool, relpath: str, at: float) -> None:
    header = parse_file_header(spool.path(relpath))
    index.store(StoredInstance(header, relpath, spool.path(relpath).stat().st_size, at))


def _set_mtime(spool: Spool, relpath: str, at: float) -> None:
    """The series folder of ``relpath`` as if last written at ``at``."""
    os.utime(spool.path(relpath).parent, (at, at))


def _rows(database: Path) -> set[str]:
    conn = sqlite3.connect(database)
    try:
        return {row[0] for row in conn.execute("SELECT path FROM instances")}
    finally:
        conn.close()


def test_windows_hold_the_checkpoint_back_until_their_rows_commit() -> None:
    clock = Clock(10_000.0)
    writes = SpoolWrites(clock)
    assert writes.checkpoint() == 10_000.0 - MARGIN_S
    writes.begin("a/b/1.dcm")
    clock.now = 10_500.0
    writes.begin("a/b/1.dcm")  # the same instance again, from another association
    writes.begin("a/b/2.dcm")
    clock.now = 20_000.0
    assert writes.checkpoint() == 10_000.0 - MARGIN_S  # the oldest open window
    writes.end(["a/b/1.dcm"])
    assert writes.checkpoint() == 10_000.0 - MARGIN_S  # its second writer has no row yet
    writes.end(["a/b/1.dcm", "never/begun/3.dcm"])
    assert writes.checkpoint() == 10_500.0 - MARGIN_S
    writes.end(["a/b/2.dcm"])
    assert writes.open_count() == 0
    assert writes.checkpoint() == 20_000.0 - MARGIN_S


def test_names_spell_their_uid_unless_hashed() -> None:
    assert named_uid("1.2/1.2.3/1.2.3.4.dcm") == "1.2.3.4"
    assert named_uid(instance_relpath("1.2", "1.2.3", "../../etc")) is None
    assert named_uid("1.2/1.2.3/notes.txt") is None


def test_a_commit_closes_its_window_a_failed_one_keeps_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    writes = spool.track_writes()
    index = Index(tmp_path / "ainode.sqlite3", writes)
    sources = make_instances(tmp_path / "in", 2)
    stored = _spooled(spool, sources[0])
    assert writes.open_count() == 1
    _indexed(index, spool, stored, 1.0)
    assert writes.open_count() == 0
    assert index.spool_checkpoint() is not None  # the first commit records one
    failed = _spooled(spool, sources[1])
    header = parse_file_header(spool.path(failed))
    broken = StoredInstance(header, failed, 10, None)  # type: ignore[arg-type]  # NOT NULL
    with pytest.raises(sqlite3.IntegrityError):
        index.store(broken)
    assert writes.open_count() == 1  # no row: the checkpoint stays behind its file
    index.close()


def test_a_write_that_never_renamed_in_closes_its_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    writes = spool.track_writes()

    def refused(source: object, target: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(node.ingest.spool.os, "replace", refused)
    with pytest.raises(PermissionError):
        spool.write("1.2/1.2.3/1.2.3.4.dcm", (b"x",))
    assert writes.open_count() == 0


def test_checkpoints_are_recorded_in_commits_at_most_every_few_seconds(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    clock = Clock(50_000.0)
    index = Index(tmp_path / "ainode.sqlite3", SpoolWrites(clock))
    statements: list[str] = []
    index._conn.set_trace_callback(statements.append)
    sources = make_instances(tmp_path / "in", 3)
    _indexed(index, spool, _spooled(spool, sources[0]), 1.0)
    assert index.spool_checkpoint() == 50_000.0 - MARGIN_S
    clock.now = 60_000.0
    _indexed(index, spool, _spooled(spool, sources[1]), 2.0)  # within RECORD_EVERY_S
    assert index.spool_checkpoint() == 50_000.0 - MARGIN_S
    assert sum(s.startswith("INSERT INTO spool_checkpoint") for s in statements) == 1
    index._checkpoint_due -= RECORD_EVERY_S
    _indexed(index, spool, _spooled(spool, sources[2]), 3.0)
    assert index.spool_checkpoint() == 60_000.0 - MARGIN_S
    index.close()


def test_a_start_after_a_crash_lists_only_folders_written_since_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file stored after the checkpoint without its row is indexed; one planted in a folder
    untouched since before the checkpoint is not even listed (the trade-off: only the node's
    own writes are looked for), while a start without a checkpoint walks it too."""
    database = tmp_path / "ainode.sqlite3"
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    clock = Clock(1_000_000.0)
    writes = spool._writes = SpoolWrites(clock)
    index = Index(database, writes)
    early = _spooled(spool, make_instances(tmp_path / "early", 1)[0])
    _indexed(index, spool, early, clock.now)
    _set_mtime(spool, early, clock.now)
    # a C-STORE renamed in at 1,000,100 whose row never committed: the crash came first
    clock.now = 1_000_100.0
    crashed = _spooled(spool, make_instances(tmp_path / "crashed", 1)[0])
    _set_mtime(spool, crashed, clock.now)
    # other associations' instances committed long after it, recording checkpoints
    clock.now = 1_005_000.0
    index._checkpoint_due = 0.0
    later = _spooled(spool, make_instances(tmp_path / "later", 1)[0])
    _indexed(index, spool, later, clock.now)
    _set_mtime(spool, later, clock.now)
    checkpoint = index.spool_checkpoint()
    assert checkpoint == 1_000_100.0 - MARGIN_S  # held back by the window still open
    # a file put by hand, without a row, into a folder untouched since before the checkpoint
    planted = _spooled(Spool(spool.root, 0), make_instances(tmp_path / "planted", 1)[0])
    _set_mtime(spool, planted, checkpoint - 1)
    # the crash: nothing closed; the next start opens the database again
    listed: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: str | Path) -> object:
        listed.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(node.ingest.spool.os, "scandir", counting_scandir)
    restarted = Index(database, SpoolWrites(clock))
    assert recover_spool(spool, restarted) == 1
    assert _rows(database) == {early, later, crashed}
    series_listed = {Path(path) for path in listed} - {spool.root}
    series_listed -= {spool.root / relpath.split("/")[0] for relpath in (early, crashed, later)}
    series_listed -= {spool.path(planted).parent.parent}  # study folders are listed
    assert series_listed == {spool.path(crashed).parent, spool.path(later).parent}
    assert restarted.spool_checkpoint() == clock.now - MARGIN_S  # the spool agrees again
    # without a checkpoint (a database from before it) the whole spool is walked
    restarted._conn.execute("DELETE FROM spool_checkpoint")
    assert recover_spool(spool, restarted) == 1
    assert planted in _rows(database)
    restarted.close()
    index.close()


def test_a_new_or_migrated_database_has_no_checkpoint(tmp_path: Path) -> None:
    conn = connect(tmp_path / "ainode.sqlite3")
    try:
        assert read_recorded(conn) is None
    finally:
        conn.close()


def test_a_hashed_name_after_the_checkpoint_is_looked_up_by_its_header(tmp_path: Path) -> None:
    """A file whose UID was not safe as a name: indexed if its row is missing, left alone if
    its row names it."""
    database = tmp_path / "ainode.sqlite3"
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    index = Index(database, spool.track_writes())
    sources = make_instances(tmp_path / "in", 2)
    hashed = []
    for number, source in enumerate(sources):
        ds = dcmread(source)
        relpath = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, f"bad uid {number}")
        spool.write(relpath, (source.read_bytes(),))
        hashed.append(relpath)
    _indexed(index, spool, hashed[0], 1.0)  # the other one's row never committed
    assert index.spool_checkpoint() is not None
    restarted = Index(database)
    assert recover_spool(spool, restarted) == 1
    assert _rows(database) == set(hashed)
    restarted.close()
    index.close()
