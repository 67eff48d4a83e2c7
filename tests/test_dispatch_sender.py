"""Senders against real peers: transcoding when refused, a stuck association, a folder, and
a destination that hangs not delaying another."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from conftest import free_port, wait_until
from pipeline_rows import add_result, secondary_capture, seed_job
from pydicom import dcmread
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config

from node.config import NodeConfig
from node.db import connect
from node.destination_settings import DicomDestination, FolderDestination
from node.dispatch.dispatcher import DestinationSender, Dispatcher
from node.dispatch.outbox import OutboxState, list_rows
from node.dispatch.sender import DicomTransport, FolderTransport
from node.shared_types import RetryPolicy


class Peer:
    """A pynetdicom Storage SCP on a free loopback port that records what it received."""

    def __init__(self, transfer_syntaxes=(ExplicitVRLittleEndian, ImplicitVRLittleEndian)):
        self.port = free_port()
        self.received: list = []
        self.hold = threading.Event()
        self.hold.set()  # cleared: the next C-STORE waits here (a lost response)
        self.held = threading.Event()
        ae = AE(ae_title="PEER")
        ae.add_supported_context(SecondaryCaptureImageStorage, list(transfer_syntaxes))
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )

    def _on_store(self, event):
        if not self.hold.is_set():
            self.held.set()
            self.hold.wait(30)
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received.append((event.context.transfer_syntax, dataset))
        return 0x0000

    def destination(self, timeout_s: float = 10) -> DicomDestination:
        return DicomDestination(
            ae_title="PEER", host="127.0.0.1", port=self.port, timeout_s=timeout_s
        )

    def close(self):
        self.hold.set()
        self.server.shutdown()


class Blackhole:
    """Accepts TCP connections (the kernel does, from the backlog) and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


@pytest.fixture(autouse=True)
def restricted_storage(monkeypatch):
    """The peers here must refuse what they do not list. ``node.ingest.scp``, imported by other
    test modules of the same run, makes pynetdicom accept every storage class process-wide
    (right for the node, wrong for a peer that is meant to be picky)."""
    monkeypatch.setattr(pynetdicom_config, "UNRESTRICTED_STORAGE_SERVICE", False)


@pytest.fixture
def rows(tmp_path):
    database_path = tmp_path / "db.sqlite3"
    conn = connect(database_path)
    study, series = generate_uid(), generate_uid()
    job_id = seed_job(conn, study, series)
    outputs = tmp_path / "outputs"

    def make(datasets, destinations=("peer",)):
        for ds in datasets:
            add_result(conn, outputs, job_id, ds, destinations, kind="sc")
        return [r for r in list_rows(conn, outputs) if r.destination in destinations]

    make.conn, make.outputs, make.study, make.series = conn, outputs, study, series
    make.database_path = database_path
    yield make
    conn.close()


def _rle(ds):
    ds.compress(RLELossless)
    return ds


def test_transcodes_when_the_peer_refuses_the_stored_syntax(rows):
    study, series = rows.study, rows.series
    originals = [_rle(secondary_capture(study, series, seed)) for seed in range(3)]
    peer = Peer(transfer_syntaxes=(ImplicitVRLittleEndian,))
    try:
        outcome = DicomTransport(peer.destination(), "AINODE").deliver(rows(originals))
        assert set(outcome.values()) == {None}
        assert {str(ts) for ts, _ in peer.received} == {ImplicitVRLittleEndian}
        assert len(peer.received) == len(originals)
        by_uid = {ds.SOPInstanceUID: ds for _, ds in peer.received}
        for original in originals:
            got = by_uid[original.SOPInstanceUID]
            np.testing.assert_array_equal(got.pixel_array, original.pixel_array)
    finally:
        peer.close()


def test_sends_as_stored_when_accepted(rows):
    originals = [_rle(secondary_capture(rows.study, rows.series, 7))]
    peer = Peer(transfer_syntaxes=(RLELossless, ExplicitVRLittleEndian))
    try:
        outcome = DicomTransport(peer.destination(), "AINODE").deliver(rows(originals))
        assert set(outcome.values()) == {None}
        assert [str(ts) for ts, _ in peer.received] == [RLELossless]
    finally:
        peer.close()


def test_refused_sop_class_is_a_row_error(rows):
    peer = Peer()
    image = secondary_capture(rows.study, rows.series, 1)
    sr = secondary_capture(rows.study, rows.series, 2)
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    try:
        batch = rows([image, sr])
        outcome = DicomTransport(peer.destination(), "AINODE").deliver(batch)
        by_uid = {row.sop_instance_uid: outcome[row.id] for row in batch}
        assert by_uid == {
            image.SOPInstanceUID: None,
            sr.SOPInstanceUID: "peer refused SOP class 1.2.840.10008.5.1.4.1.1.88.11",
        }
        only_sr = [row for row in batch if row.sop_instance_uid == sr.SOPInstanceUID]
        outcome = DicomTransport(peer.destination(), "AINODE").deliver(only_sr)
        assert outcome[only_sr[0].id].startswith("cannot associate with PEER@127.0.0.1")
    finally:
        peer.close()


def test_lost_response_aborts_and_the_row_is_sent_on_the_next_attempt(rows):
    peer = Peer()
    peer.hold.clear()
    batch = rows([secondary_capture(rows.study, rows.series, s) for s in range(2)])
    sender = DestinationSender(
        "peer",
        DicomTransport(peer.destination(timeout_s=1), "AINODE"),
        rows.database_path,
        rows.outputs,
        RetryPolicy(max_attempts=5, backoff_s=0, backoff_max_s=0),
    )
    try:
        assert sender.send_due(rows.conn) is False  # the response never came: aborted
        assert peer.held.is_set()
        pending = list_rows(rows.conn, rows.outputs, OutboxState.PENDING)
        assert len(pending) == len(batch)
        assert {r.attempts for r in pending} == {1}
        assert sorted(r.last_error for r in pending) == [
            "association ended before this instance was sent",
            "no C-STORE response within the timeout; association aborted",
        ]
        peer.hold.set()
        wait_until(
            lambda: (
                sender.send_due(rows.conn)
                or not list_rows(rows.conn, rows.outputs, OutboxState.PENDING)
            ),
            timeout=20,
            what="the re-send",
        )
        sent = list_rows(rows.conn, rows.outputs, OutboxState.SENT)
        assert {r.sop_instance_uid for r in sent} == {r.sop_instance_uid for r in batch}
    finally:
        peer.close()


def test_folder_destination_writes_part10_files(rows, tmp_path):
    ds = secondary_capture(rows.study, rows.series, 3)
    batch = rows([ds], destinations=("folder",))
    target = tmp_path / "results"
    outcome = FolderTransport(FolderDestination(path=target)).deliver(batch)
    assert set(outcome.values()) == {None}
    written = target / rows.study / f"{ds.SOPInstanceUID}.dcm"
    assert dcmread(written).SOPInstanceUID == ds.SOPInstanceUID
    assert not [p for p in written.parent.iterdir() if p.suffix == ".tmp"]


def test_a_hanging_destination_does_not_delay_another(tmp_path):
    hole = Blackhole()
    folder = tmp_path / "results"
    config = NodeConfig.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "destinations": {
                "stuck": {
                    "kind": "dicom",
                    "ae_title": "STUCK",
                    "host": "127.0.0.1",
                    "port": hole.port,
                    "timeout_s": 60,
                },
                "folder": {"kind": "folder", "path": str(folder)},
            },
            "dispatch": {"backoff_s": 0.1},
        }
    )
    conn = connect(config.storage.database_path)
    study, series = generate_uid(), generate_uid()
    dispatcher = Dispatcher(config)
    dispatcher.start()
    try:
        job_id = seed_job(conn, study, series)
        for seed in range(3):
            add_result(
                conn,
                config.storage.outputs_dir,
                job_id,
                secondary_capture(study, series, seed),
                ("stuck", "folder"),
            )
        dispatcher.wake()
        wait_until(
            lambda: len(list((folder / study).glob("*.dcm"))) == 3,
            timeout=30,
            what="folder delivery",
        )
        stuck = [r for r in list_rows(conn, config.storage.outputs_dir) if r.destination == "stuck"]
        # the stuck destination is still inside its first attempt (60 s timeout)
        assert {(r.state, r.attempts) for r in stuck} == {(OutboxState.PENDING, 0)}
    finally:
        hole.close()
        dispatcher.stop()
        conn.close()
