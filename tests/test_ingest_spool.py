"""Spool and index units: File Meta encoding, safe paths, atomic writes, crash recovery."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

import node.ingest.spool
import node.service
from node.config import load_node_config
from node.ingest.dataset_end import HeaderError
from node.ingest.header import InstanceHeader, parse_file_header, parse_header
from node.ingest.index import Index, StoredInstance, StoreOutcome
from node.ingest.recovery import recover_spool
from node.ingest.spool import (
    IMPLEMENTATION_CLASS_UID,
    TEMP_DIR_NAME,
    OutOfSpace,
    Spool,
    encode_file_meta,
    instance_relpath,
    uid_component,
)
from tests.conftest import free_port, wait_until
from tests.ingest_support import make_instances, write_config


@pytest.mark.parametrize("source_ae", ["MODALITY", "ODD", None])
def test_file_meta_reads_back_with_pydicom(tmp_path: Path, source_ae: str | None) -> None:
    path = tmp_path / "meta.dcm"
    ct, explicit_le = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"
    path.write_bytes(encode_file_meta(ct, "1.2.3.45", explicit_le, source_ae))
    meta = read_file_meta_info(path)
    assert meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.get("SourceApplicationEntityTitle") == source_ae
    assert meta.FileMetaInformationGroupLength == len(path.read_bytes()) - 132 - 12


@pytest.mark.parametrize("uid", ["..", "../../etc/passwd", "1.2/3", "1." + "2" * 80, "", "1..2"])
def test_malformed_uids_never_become_paths(uid: str) -> None:
    name = uid_component(uid)
    assert name.startswith("x") and "/" not in name and ".." not in name
    assert uid_component("1.2.840.10008.1") == "1.2.840.10008.1"
    assert instance_relpath("1.2", uid, "3.4").count("/") == 2


def test_write_replaces_atomically_and_refuses_below_the_watermark(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    relpath = instance_relpath("1.2", "1.2.3", "1.2.3.4")
    assert spool.write(relpath, (b"first", memoryview(b"-data"))) == 10
    assert spool.write(relpath, (b"second",)) == 6
    assert spool.path(relpath).read_bytes() == b"second"
    assert not list((tmp_path / "spool" / TEMP_DIR_NAME).iterdir())

    full = Spool(tmp_path / "spool", min_free_bytes=1 << 62)
    with pytest.raises(OutOfSpace):
        full.write(instance_relpath("1.2", "1.2.3", "1.2.3.5"), (b"x",))
    assert list(spool.files()) == [relpath]


def test_free_space_is_asked_again_when_half_the_room_may_be_used_or_after_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=1000)
    free = {"bytes": 3000}
    asked: list[float] = []
    clock = {"now": 100.0}

    def statvfs(path: object) -> SimpleNamespace:
        asked.append(clock["now"])
        return SimpleNamespace(f_bavail=free["bytes"], f_frsize=1)

    monkeypatch.setattr(node.ingest.spool.os, "statvfs", statvfs)
    monkeypatch.setattr(node.ingest.spool.time, "monotonic", lambda: clock["now"])
    assert spool.has_room(1000)  # asked: 2000 above the watermark, 1000 left after this
    assert spool.has_room(500)  # within half of what is left: not asked
    assert len(asked) == 1
    assert spool.has_room(100)  # more than the 0 left of the half: asked again
    assert len(asked) == 2
    free["bytes"] = 1500
    clock["now"] += 1.5  # a second later the reading is stale whatever the budget
    assert not spool.has_room(600)  # 100 short of the watermark
    assert len(asked) == 3
    assert spool.has_room(1)  # a refusal leaves no budget: the next call asks again
    assert len(asked) == 4


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    relpath = instance_relpath("1.2", "1.2.3", "1.2.3.4")
    spool.write(relpath, (b"old",))

    class Broken(bytes):
        def __len__(self) -> int:
            raise OSError("disk went away")

    with pytest.raises(OSError):
        spool.write(relpath, (b"new", Broken()))
    assert spool.path(relpath).read_bytes() == b"old"
    assert not list((tmp_path / "spool" / TEMP_DIR_NAME).iterdir())


def test_header_parse_stops_before_pixels_and_refuses_junk(tmp_path: Path) -> None:
    path = make_instances(tmp_path, 1, size=4)[0]
    data = path.read_bytes()
    meta_end = 132 + 12 + read_file_meta_info(path).FileMetaInformationGroupLength
    header = parse_header(data[meta_end:], "1.2.840.10008.1.2.1")
    source = dcmread(path)
    assert header.sop_instance_uid == source.SOPInstanceUID
    assert header.study_instance_uid == source.StudyInstanceUID
    assert (header.rows, header.columns, header.instance_number) == (4, 4, 1)
    assert header.derived_uids == ()
    assert "PixelData" not in header.attributes
    assert parse_file_header(path) == header
    for cut in (200, 203, 307):  # inside an element header, inside a value
        with pytest.raises(HeaderError, match="truncated"):
            parse_header(data[meta_end : meta_end + cut], "1.2.840.10008.1.2.1")
    with pytest.raises(HeaderError):
        parse_header(b"\x1f\x8b\x08\x08" + bytes(100), "1.2.840.10008.1.2.1")


def test_recovery_indexes_whole_orphans_and_removes_temp_and_junk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    source = make_instances(tmp_path / "in", 1)[0]
    ds = dcmread(source)
    orphan = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    spool.write(orphan, (source.read_bytes(),))  # renamed in, but the index commit never ran
    junk = instance_relpath("1.2", "1.2.3", "1.2.3.9")
    spool.write(junk, (b"not dicom",))
    (tmp_path / "spool" / TEMP_DIR_NAME / "crash.part").write_bytes(b"half")

    assert spool.clear_temp() == 1
    index = Index(tmp_path / "ainode.sqlite3")
    assert recover_spool(spool, index) == 1
    index.close()
    assert list(spool.files()) == [orphan]
    conn = sqlite3.connect(tmp_path / "ainode.sqlite3")
    assert conn.execute("SELECT sop_instance_uid, path FROM instances").fetchall() == [
        (ds.SOPInstanceUID, orphan)
    ]


def _instance(number: int, sop_class: str | None = "1.2.840.10008.5.1.4.1.1.2") -> StoredInstance:
    header = InstanceHeader(
        sop_instance_uid=f"1.2.3.{number}",
        sop_class_uid=sop_class,  # type: ignore[arg-type]  # None breaks NOT NULL on purpose
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.0",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    return StoredInstance(header, f"{number}.dcm", 10, 1_700_000_000.0 + number)


def test_group_commit_shares_a_transaction_and_isolates_a_bad_row(tmp_path: Path) -> None:
    index = Index(tmp_path / "ainode.sqlite3")
    results: dict[int, object] = {}

    def store(number: int, instance: StoredInstance) -> None:
        try:
            results[number] = index.store(instance)
        except Exception as exc:
            results[number] = exc

    threads = [
        threading.Thread(target=store, args=(n, _instance(n, None if n == 3 else "1.2.840.1")))
        for n in range(6)
    ]
    with index._lock:  # a commit "in progress": the six calls queue up behind it
        for thread in threads:
            thread.start()
        wait_until(lambda: len(index._queue) == 6, timeout=10, what="six queued stores")
    for thread in threads:
        thread.join(timeout=30)
    index.close()
    assert isinstance(results.pop(3), sqlite3.IntegrityError)
    assert all(isinstance(outcome, StoreOutcome) for outcome in results.values())
    conn = sqlite3.connect(tmp_path / "ainode.sqlite3")
    rows = conn.execute("SELECT sop_instance_uid FROM instances ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == ["1.2.3.0", "1.2.3.1", "1.2.3.2", "1.2.3.4", "1.2.3.5"]


def test_only_a_replacement_waits_for_the_wal_flush(tmp_path: Path) -> None:
    index = Index(tmp_path / "ainode.sqlite3")
    statements: list[str] = []
    index._conn.set_trace_callback(statements.append)

    def synchronous_at_commit(instance: StoredInstance) -> int:
        statements.clear()
        index.store(instance)
        assert statements[-1] == "COMMIT"
        return int(index._conn.execute("PRAGMA synchronous").fetchone()[0])

    assert synchronous_at_commit(_instance(1)) == 1  # NORMAL: a new row
    assert synchronous_at_commit(_instance(2)) == 1
    assert synchronous_at_commit(_instance(1)) == 2  # FULL: instance 1 again replaces its row
    assert synchronous_at_commit(_instance(3)) == 1
    index.close()


def test_a_row_a_power_loss_took_is_indexed_again_at_start(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    source = make_instances(tmp_path / "in", 1)[0]
    ds = dcmread(source)
    relpath = instance_relpath(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    size = spool.write(relpath, (source.read_bytes(),))
    index = Index(tmp_path / "ainode.sqlite3")
    index.store(StoredInstance(parse_file_header(spool.path(relpath)), relpath, size, 1.0))
    # What a power loss does to a commit the WAL had not flushed: the row is gone, the
    # fsynced file is not.
    index._conn.execute("DELETE FROM instances")
    assert recover_spool(spool, index) == 1
    assert index.indexed_paths() == {relpath}
    index.close()


def test_start_walks_the_spool_only_after_a_run_that_did_not_stop_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[Path] = []

    def counting_recover(spool: Spool, index: Index) -> int:
        walks.append(spool.root)
        return recover_spool(spool, index)

    monkeypatch.setattr(node.service, "recover_spool", counting_recover)
    config = load_node_config(write_config(tmp_path, free_port()))
    marker = config.storage.data_dir / node.service.CLEAN_STOP_FILE

    def start_and(stop: bool) -> None:
        running = node.service.Node(config)
        running.start()
        assert not marker.exists()  # removed before serving: a crash now leaves none
        if stop:
            running.stop()
        else:  # what a crash leaves: nothing closed, no marker
            running.scp.stop()  # type: ignore[union-attr]
            for stage in running._started:
                stage.stop()

    start_and(stop=True)  # first start: no marker, so the spool is walked
    assert len(walks) == 1 and marker.exists()
    start_and(stop=False)  # after a clean stop: not walked
    assert len(walks) == 1 and not marker.exists()
    start_and(stop=True)  # after the "crash": walked again
    assert len(walks) == 2 and marker.exists()


def test_concurrent_writers_into_one_folder_all_land(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    errors: list[BaseException] = []

    def write(start: int) -> None:
        try:
            for number in range(start, start + 50):
                spool.write(instance_relpath("1.2", "1.2.3", f"1.2.3.{number}"), (b"x" * 100,))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n * 50,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert len(list(spool.files())) == 200
    assert not spool._folder_syncer._folders  # nothing left behind once idle
