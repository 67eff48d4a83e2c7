"""Re-sends: an instance byte for byte the one stored changes nothing; a changed one re-opens.

``StorageSCP.store`` is called as both receive paths call it (no network), and the assembler's
``run_once`` decides with a clock moved past the quiet time, so nothing waits.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from node.assembler import StudyAssembler
from node.config import load_node_config
from node.db import connect
from node.ingest.c_store import StoreRequest
from node.ingest.index import Index
from node.ingest.resend import same_dataset
from node.ingest.scp import StorageSCP
from node.ingest.spool import Spool
from tests.conftest import free_port
from tests.ingest_support import make_instances, write_config
from tests.pipeline_rows import add_result, secondary_capture, seed_job

LATER = 3600.0  # seconds past the last arrival: every receiving study is due


def _dataset(path: Path) -> bytes:
    """The dataset as a C-STORE carries it: the file without preamble and File Meta."""
    return path.read_bytes()[dcmread(path).file_meta.get("FileMetaInformationGroupLength") + 144 :]


class _Node:
    """The SCP, its index and the assembler over one data folder."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.config = load_node_config(write_config(folder, free_port()))
        self.spool = Spool(self.config.storage.spool_dir, 0)
        self.index = Index(self.config.storage.database_path)
        self.scp = StorageSCP(self.config, self.spool, self.index)
        self.assembler = StudyAssembler(self.config.storage.database_path, self.config.stability)
        self.conn: sqlite3.Connection = connect(self.config.storage.database_path)

    def store(self, path: Path, calling_ae: str = "PACS") -> int:
        ds = dcmread(path, stop_before_pixels=True)
        assoc = SimpleNamespace(
            requestor=SimpleNamespace(ae_title=calling_ae, address="127.0.0.1"),
            acceptor=SimpleNamespace(ae_title="AINODE"),
        )
        request = StoreRequest(
            1,
            ExplicitVRLittleEndian,
            1,
            str(ds.SOPClassUID),
            str(ds.SOPInstanceUID),
            _dataset(path),
        )
        return self.scp.store(assoc, request).status  # type: ignore[arg-type]

    def settle(self) -> list[tuple[int, int]]:
        """Make every due study stable; return all (version, instance count) rows."""
        self.assembler.run_once(self.conn, now=time.time() + LATER)
        rows = self.conn.execute(
            "SELECT version, instance_count FROM study_versions ORDER BY version"
        )
        return [tuple(row) for row in rows]

    def study(self) -> tuple[str, int]:
        state, version = self.conn.execute("SELECT state, version FROM studies").fetchone()
        return state, version

    def close(self) -> None:
        self.conn.close()
        self.index.close()


@pytest.fixture
def node(tmp_path: Path):
    running = _Node(tmp_path / "node")
    yield running
    running.close()


def test_an_identical_resend_opens_no_version_and_a_changed_one_does(
    tmp_path: Path, node: _Node
) -> None:
    sources = make_instances(tmp_path / "in", 3)
    assert [node.store(path) for path in sources] == [0, 0, 0]
    assert node.settle() == [(1, 3)]
    spooled = sorted(node.spool.root.rglob("*.dcm"))
    before = [(path.stat().st_ino, path.stat().st_mtime_ns) for path in spooled]

    # the same bytes again, also from another AE (its File Meta differs): Success, no change
    assert [node.store(path, calling_ae="OTHER") for path in sources] == [0, 0, 0]
    assert node.study() == ("stable", 1)
    assert node.settle() == [(1, 3)]
    assert [(path.stat().st_ino, path.stat().st_mtime_ns) for path in spooled] == before

    changed = dcmread(sources[1])
    changed.SeriesDescription = "re-sent with one changed instance"
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    assert [node.store(path) for path in (sources[0], tmp_path / "changed.dcm", sources[2])] == [
        0,
        0,
        0,
    ]
    assert node.study() == ("receiving", 2)
    assert node.settle() == [(1, 3), (2, 3)]
    relpath = node.conn.execute(
        "SELECT path FROM instances WHERE sop_instance_uid = ?", (str(changed.SOPInstanceUID),)
    ).fetchone()[0]
    assert dcmread(node.spool.path(relpath)).SeriesDescription == changed.SeriesDescription


def test_the_nodes_own_result_sent_back_is_acknowledged_and_changes_nothing(
    tmp_path: Path, node: _Node
) -> None:
    sources = make_instances(tmp_path / "in", 2)
    assert [node.store(path) for path in sources] == [0, 0]
    assert node.settle() == [(1, 2)]
    study = str(dcmread(sources[0]).StudyInstanceUID)
    job = seed_job(node.conn, study, str(dcmread(sources[0]).SeriesInstanceUID), new_version=False)
    result = secondary_capture(study, "1.2.3.9001")
    sent = add_result(node.conn, node.config.storage.outputs_dir, job, result, ("pacs",))

    assert node.store(sent) == 0  # the PACS re-sends the study with the node's own results
    assert node.study() == ("stable", 1)
    assert node.settle() == [(1, 2)]
    uids = {row[0] for row in node.conn.execute("SELECT sop_instance_uid FROM instances")}
    assert str(result.SOPInstanceUID) not in uids


def test_same_dataset_compares_the_dataset_not_the_file_meta(tmp_path: Path) -> None:
    (source,) = make_instances(tmp_path / "in", 1, size=64)
    dataset = _dataset(source)
    assert same_dataset(source, dataset)
    assert not same_dataset(source, dataset[:-2] + b"\x01\x00")  # one pixel differs
    assert not same_dataset(source, dataset + b"\x00\x00")  # longer
    assert not same_dataset(tmp_path / "missing.dcm", dataset)
