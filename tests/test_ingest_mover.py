"""The journal path in one process: a Success waits for the journal only, the mover files later.

``StorageSCP.store`` is called as both receive paths call it; the mover's filer can be held
back with a gate, so a test sees the record before and after the move. Crash copies of the
data folder (taken while it is open: what ``kill -9`` leaves, the page cache holding every
write) are opened and replayed as a restart would.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

import node.ingest.mover as mover_module
import node.service as service
from node.config import NodeConfig, load_node_config
from node.db import connect
from node.ingest.c_store import StoreRequest, StoreStatus
from node.ingest.index import Index
from node.ingest.journal import Journal
from node.ingest.journal_format import HEADER_SIZE, Durability, encode_meta
from node.ingest.move import BatchFiler, FiledBatch
from node.ingest.mover import JournalMover, replay
from node.ingest.scp import StorageSCP
from node.ingest.spool import Spool
from node.retention.purge import PurgePaths, purge_lock, purge_study
from node.scu import Peer, send
from tests.conftest import free_port, wait_until
from tests.ingest_support import make_instances, write_config
from tests.retention_support import DAY, NOW, Study, settle

MIB = 1024 * 1024


def _dataset(path: Path) -> bytes:
    """The dataset as a C-STORE carries it: the file without preamble and File Meta."""
    return path.read_bytes()[dcmread(path).file_meta.get("FileMetaInformationGroupLength") + 144 :]


class _GatedFiler(BatchFiler):
    """A filer that files only while its gate is open."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.gate = threading.Event()
        self.gate.set()

    def file(self, batch, *, replay: bool = False) -> FiledBatch:  # type: ignore[no-untyped-def]
        self.gate.wait(30)
        return super().file(batch, replay=replay)


class _JournalNode:
    """The SCP over a journal and its mover, in this process."""

    def __init__(self, folder: Path, *, backlog_bytes: int = mover_module.BACKLOG_BYTES) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        storage = {"journal": True, "journal_segment_mb": 1}
        self.config: NodeConfig = load_node_config(
            write_config(folder, free_port(), storage=storage)
        )
        self.storage = self.config.storage
        self.spool = Spool(self.storage.spool_dir, 0)
        self.index = Index(self.storage.database_path)
        self.journal = Journal.open(self.storage.journal_dir, segment_size=MIB)
        self.filer = _GatedFiler(
            self.spool, self.index, Durability.FSYNC, self.storage.database_path
        )
        self.mover = JournalMover(self.journal, self.filer, self.index, backlog_bytes)
        self.scp = StorageSCP(self.config, self.spool, self.index, mover=self.mover)
        self.mover.start()
        self.conn = sqlite3.connect(self.storage.database_path)

    def store(self, path: Path, calling_ae: str = "PACS") -> StoreRequest:
        ds = dcmread(path, stop_before_pixels=True)
        request = StoreRequest(
            1,
            ExplicitVRLittleEndian,
            1,
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            _dataset(path),
        )
        assoc = SimpleNamespace(
            requestor=SimpleNamespace(ae_title=calling_ae, address="127.0.0.1"),
            acceptor=SimpleNamespace(ae_title="AINODE"),
        )
        return self.scp.store(assoc, request)  # type: ignore[arg-type,return-value]

    def rows(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT sop_instance_uid, path FROM instances"))

    def filed(self) -> None:
        wait_until(lambda: self.mover.pending() == 0, timeout=30, what="the mover to catch up")

    def close(self) -> None:
        self.filer.gate.set()
        self.mover.stop()
        self.index.close()
        self.conn.close()


@pytest.fixture
def node(tmp_path: Path):
    with closing(_JournalNode(tmp_path / "node")) as running:
        yield running


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_a_success_waits_for_the_journal_and_the_mover_files_it_after(
    tmp_path: Path, node: _JournalNode
) -> None:
    sources = make_instances(tmp_path / "in", 3)
    node.filer.gate.clear()
    assert [node.store(path).status for path in sources] == [0, 0, 0]
    assert node.mover.pending() == 3 and node.rows() == {}  # the journal is the record
    assert not list(node.spool.files())
    node.filer.gate.set()
    node.filed()
    rows = node.rows()
    assert sorted(rows) == sorted(_uid(path) for path in sources)
    for path in sources:
        assert _dataset(node.spool.path(rows[_uid(path)])) == _dataset(path)


def test_a_resend_while_the_first_copy_waits_is_journaled_and_changes_nothing(
    tmp_path: Path, node: _JournalNode
) -> None:
    sources = make_instances(tmp_path / "in", 2)
    changed = dcmread(sources[1])
    changed.SeriesDescription = "changed while the first copy waited"
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    node.filer.gate.clear()
    for path in (*sources, sources[0], tmp_path / "changed.dcm"):
        assert node.store(path).status == 0
    assert node.mover.holds(_uid(sources[0])) and node.mover.pending() == 4
    node.filer.gate.set()
    node.filed()
    rows = node.rows()
    assert len(rows) == 2 and len(list(node.spool.files())) == 2
    stored = dcmread(node.spool.path(rows[_uid(sources[1])]))
    assert stored.SeriesDescription == "changed while the first copy waited"
    # the identical copy of instance 1 was found held; only instance 2 changed the study
    changed_at = node.conn.execute("SELECT changed_at FROM studies").fetchone()[0]
    assert changed_at is not None
    # and once filed, an identical re-send is answered from the spool without a record
    records = node.journal.stats().records
    assert node.store(sources[0]).status == 0
    assert node.journal.stats().records == records


def test_a_release_is_marked_once_what_it_delivered_is_filed(
    tmp_path: Path, node: _JournalNode
) -> None:
    sources = make_instances(tmp_path / "in", 2)
    study = str(dcmread(sources[0]).StudyInstanceUID)
    node.filer.gate.clear()
    for path in sources:
        assert node.store(path).status == 0
    released_at = time.time()
    node.scp._instances.mark_released([study], released_at)
    assert node.conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0] == 0
    node.filer.gate.set()
    wait_until(
        lambda: node.conn.execute("SELECT released_at FROM studies").fetchone() == (released_at,),
        timeout=30,
        what="the release marked after the move",
    )


def test_a_mover_too_far_behind_slows_the_sender_then_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mover_module, "BACKLOG_WAIT_S", 0.3)
    running = _JournalNode(tmp_path / "node", backlog_bytes=1)
    try:
        sources = make_instances(tmp_path / "in", 3)
        running.filer.gate.clear()
        assert running.store(sources[0]).status == 0  # an empty backlog takes any instance
        reply = running.store(sources[1])
        assert reply.status == StoreStatus.OUT_OF_RESOURCES
        assert "behind" in (reply.error_comment or "")
        running.filer.gate.set()
        running.filed()
        assert running.store(sources[2]).status == 0
        running.filed()
        assert len(running.rows()) == 2
    finally:
        running.close()


def test_a_batch_the_index_refused_is_filed_again(
    tmp_path: Path, node: _JournalNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mover_module, "RETRY_S", 0.05)
    real = node.index.store_batch
    calls: list[int] = []

    def failing_once(instances):  # type: ignore[no-untyped-def]
        calls.append(len(instances))
        if len(calls) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return real(instances)

    monkeypatch.setattr(node.index, "store_batch", failing_once)
    sources = make_instances(tmp_path / "in", 2)
    node.filer.gate.clear()
    for path in sources:
        assert node.store(path).status == 0
    node.filer.gate.set()
    node.filed()
    assert len(calls) >= 2 and len(node.rows()) == 2


def _crash_copy(data_dir: Path, into: Path) -> Path:
    """The data folder as kill -9 leaves it (a copy taken while everything is open)."""
    shutil.copytree(data_dir, into)
    (into / "journal" / "lock").unlink(missing_ok=True)
    return into


def _replay_into(data_dir: Path) -> tuple[Index, Spool, int]:
    spool = Spool(data_dir / "spool", 0)
    index = Index(data_dir / "ainode.sqlite3")
    journal = Journal.open(data_dir / "journal", segment_size=MIB)
    try:
        replayed = replay(journal, BatchFiler(spool, index, Durability.FSYNC, index_path(data_dir)))
    finally:
        journal.close()
    return index, spool, replayed.filed


def index_path(data_dir: Path) -> Path:
    return data_dir / "ainode.sqlite3"


@pytest.mark.parametrize("seed", range(8))
def test_a_journal_cut_anywhere_replays_exactly_the_records_before_the_cut(
    tmp_path: Path, node: _JournalNode, seed: int
) -> None:
    sources = make_instances(tmp_path / "in", 12, size=32)
    node.filer.gate.clear()  # nothing filed: the journal alone holds them
    for path in sources:
        assert node.store(path).status == 0
    copy = _crash_copy(node.storage.data_dir, tmp_path / "crash")
    (segment,) = sorted((copy / "journal").glob("seg-*.wal"))
    with Journal.open(copy / "journal", segment_size=MIB) as journal:
        ends = [
            r.offset + HEADER_SIZE + len(encode_meta(r.meta)) + len(r.data) for r in journal.read()
        ]
    assert len(ends) == len(sources)
    cut = random.Random(seed).randrange(40, ends[-1] + 1)
    with segment.open("r+b") as handle:
        handle.truncate(cut)
    (copy / "journal" / "lock").unlink(missing_ok=True)
    index, spool, filed = _replay_into(copy)
    whole = sum(1 for end in ends if end <= cut)
    assert filed == whole
    rows = dict(index._conn.execute("SELECT sop_instance_uid, path FROM instances"))
    assert sorted(rows) == sorted(_uid(path) for path in sources[:whole])
    for path in sources[:whole]:
        assert _dataset(spool.path(rows[_uid(path)])) == _dataset(path)
    index.close()


def test_replay_never_puts_back_an_older_version(tmp_path: Path, node: _JournalNode) -> None:
    (source,) = make_instances(tmp_path / "in", 1)
    changed = dcmread(source)
    changed.SeriesDescription = "the second version"
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    assert node.store(source).status == 0
    node.filed()
    assert node.store(tmp_path / "changed.dcm").status == 0
    node.filed()
    version = node.conn.execute("SELECT version, changed_at FROM studies").fetchone()
    copy = _crash_copy(node.storage.data_dir, tmp_path / "crash")
    index, spool, filed = _replay_into(copy)
    assert filed == 0  # version 1 is superseded, version 2 already held
    ((path,),) = index._conn.execute("SELECT path FROM instances").fetchall()
    assert dcmread(spool.path(path)).SeriesDescription == "the second version"
    assert tuple(index._conn.execute("SELECT version, changed_at FROM studies").fetchone()) == (
        version
    )
    index.close()


def test_a_start_after_a_crash_replays_the_journal_and_walks_no_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[Path] = []  # the spools start-up walked
    monkeypatch.setattr(
        service, "recover_spool", lambda spool, index: walks.append(spool.root) or 0
    )
    sources = make_instances(tmp_path / "in", 3)
    journal_on = {"journal": True, "journal_segment_mb": 1}

    def start(storage: dict) -> service.Node:
        config = load_node_config(write_config(tmp_path, free_port(), storage=storage))
        running = service.Node(config)
        running.start()
        return running

    def crash(running: service.Node) -> None:
        """Stop serving and file what was received, but retire nothing and close nothing."""
        with monkeypatch.context() as patch:
            patch.setattr(Journal, "retire_through", lambda self, sequence: 0)
            running.scp.stop()  # type: ignore[union-attr]
            running._mover.stop()  # type: ignore[union-attr]
        for stage in running._started:
            stage.stop()

    first = start(journal_on)  # no marker yet: walked once, then the journal-only marker
    assert len(walks) == 1
    assert first.scp is not None
    assert send(sources, Peer("AINODE", "127.0.0.1", first.scp.address[1])).ok
    crash(first)
    second = start(journal_on)  # after the crash: the journal replayed, the spool not walked
    assert len(walks) == 1
    log_conn = sqlite3.connect(second.config.storage.database_path)
    assert log_conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 3
    second.stop()
    assert [p.name for p in (tmp_path / "data" / "journal").glob("seg-*.wal")]
    third = start({"journal": False})  # the journal turned off: emptied and removed
    assert not (tmp_path / "data" / "journal").exists() and len(walks) == 1
    third.stop()
    assert log_conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 3
    log_conn.close()


def test_a_purged_studys_unretired_records_are_not_filed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention purges a study whose journal records are filed but not yet retired, then
    the node dies: replay must not bring the study back; a re-send after the purge is kept."""
    monkeypatch.setattr(mover_module, "IDLE_ROTATE_S", 3600.0)  # nothing retires on its own
    running = _JournalNode(tmp_path / "node")
    files = make_instances(tmp_path / "in", 4)
    for path in files[:3]:
        assert running.store(path).status == StoreStatus.SUCCESS
    running.filed()
    storage = running.storage
    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    relpaths = tuple(running.rows().values())
    conn = connect(storage.database_path)
    study = Study(study_uid, relpaths)
    settle(conn, study, at=NOW - 40 * DAY, job_state="SUCCEEDED", outbox_state="SENT")
    paths = PurgePaths(
        storage.data_dir, storage.spool_dir, storage.outputs_dir, storage.data_dir / "vi"
    )
    with purge_lock(storage.data_dir):
        assert purge_study(conn, paths, study_uid, now=NOW, max_age_s=30 * DAY) is not None
    assert running.store(files[3]).status == StoreStatus.SUCCESS  # sent again after it
    running.filed()
    running.journal.close()  # the crash: the records stay in the journal, unretired
    journal = Journal.open(storage.journal_dir, segment_size=MIB)
    try:
        replayed = replay(journal, running.filer)
    finally:
        journal.close()
    assert (replayed.records, replayed.filed, replayed.held) == (4, 0, 4)
    assert set(running.rows()) == {_uid(files[3])}
    assert [p.name for p in storage.spool_dir.rglob("*.dcm")] == [f"{_uid(files[3])}.dcm"]
    conn.close()
    running.index.close()
    running.conn.close()
