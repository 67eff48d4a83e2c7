"""Plain C-STOREs are read off their PDUs and answered by ``node.ingest.direct_store``; anything
else still goes through pynetdicom, a PDU that breaks a direct C-STORE aborts it, and a
release in the middle of one drops it."""

from __future__ import annotations

import queue
import sqlite3
import struct
import threading
from contextlib import closing
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.pdu import P_DATA_TF

from node.config import load_node_config
from node.ingest.c_store import StoreReply, StoreRequest
from node.ingest.direct_store import (
    DirectStoreReceiver,
    ProtocolError,
    StoreCommand,
    decode_store_command,
)
from node.ingest.index import Index
from node.ingest.scp import StorageSCP
from node.ingest.spool import Spool
from tests.conftest import free_port, wait_until
from tests.ingest_support import RawInstance, make_instances, raw_instance, raw_store, write_config

SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"


def _store_command(**fields: object) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = 7
    primitive.AffectedSOPClassUID = CTImageStorage
    primitive.AffectedSOPInstanceUID = SOP_INSTANCE
    primitive.Priority = 2
    for name, value in fields.items():
        setattr(primitive, name, value)
    primitive.DataSet = BytesIO(b"\x08\x00\x05\x00\x00\x00\x00\x00")  # not sent here
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    (pdata, *_) = message.encode_msg(1, 0)
    ((_context_id, pdv), *_) = pdata.presentation_data_value_list
    assert pdv[:1] == b"\x03"  # a whole command in one fragment
    return pdv[1:]


def test_decodes_what_pynetdicom_encodes() -> None:
    command = decode_store_command(_store_command(MoveOriginatorApplicationEntityTitle="MOVER"))
    assert command == StoreCommand(7, CTImageStorage, SOP_INSTANCE)
    odd = decode_store_command(_store_command(AffectedSOPInstanceUID="1.2.3.45", MessageID=9))
    assert odd == StoreCommand(9, CTImageStorage, "1.2.3.45")  # padded to even length


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_leaves_anything_else_to_pynetdicom() -> None:
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    (pdata,) = message.encode_msg(1, 0)
    ((_, echo_pdv),) = pdata.presentation_data_value_list
    whole = _store_command()
    assert decode_store_command(echo_pdv[1:]) is None
    assert decode_store_command(whole[:-3]) is None  # cut inside an element
    assert decode_store_command(whole[:40]) is None  # cut between elements: no UIDs
    assert decode_store_command(_store_command(AffectedSOPInstanceUID="1.2.3.x4")) is None
    assert decode_store_command(b"\x08\x00" + whole[2:]) is None  # not group 0000


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">LBB", 2 + len(data), context_id, control) + data


class _Association(SimpleNamespace):
    """The parts of an ``EventAssociation`` the receiver looks at, with a socket that keeps
    what is sent."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        super().__init__(
            serving=threading.Lock(),
            is_established=True,
            _sent_release=False,
            _kill=False,
            _accepted_cx={1: SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])},
            dimse=SimpleNamespace(message=None, msg_queue=queue.Queue(), maximum_pdu_size=0),
            dul=SimpleNamespace(
                to_provider_queue=queue.Queue(), socket=SimpleNamespace(send=self.sent.append)
            ),
        )


def _receiver() -> tuple[DirectStoreReceiver, _Association, list[StoreRequest]]:
    assoc = _Association()
    requests: list[StoreRequest] = []

    def handler(_assoc: object, request: StoreRequest) -> StoreReply:
        assert assoc.serving.locked()  # held while the request is served
        requests.append(request)
        return StoreReply(0xA700, "out of resources: disk nearly full")

    receiver = DirectStoreReceiver(assoc, assoc.serving, handler)  # type: ignore[arg-type]
    return receiver, assoc, requests


def test_serves_a_store_over_several_pdus_and_answers_on_the_socket() -> None:
    receiver, assoc, requests = _receiver()
    assert receiver.take(bytearray(_pdv(1, 0x03, _store_command()) + _pdv(1, 0x00, b"ab")))
    assert assoc.serving.locked() and not requests
    assert receiver.take(bytearray(_pdv(1, 0x00, b"cd")))
    assert receiver.take(bytearray(_pdv(1, 0x02, b"ef")))
    assert requests == [
        StoreRequest(1, ExplicitVRLittleEndian, 7, CTImageStorage, SOP_INSTANCE, b"abcdef")
    ]
    assert not assoc.serving.locked()
    (sent,) = assoc.sent
    pdu = P_DATA_TF()
    pdu.decode(sent)
    ((context_id, pdv),) = pdu.to_primitive().presentation_data_value_list
    assert (context_id, pdv[:1]) == (1, b"\x03")
    response = decode(BytesIO(pdv[1:]), True, True)  # Implicit VR Little Endian
    assert response.CommandField == 0x8001
    assert response.Status == 0xA700
    assert response.MessageIDBeingRespondedTo == 7
    assert response.AffectedSOPInstanceUID == SOP_INSTANCE
    assert response.ErrorComment == "out of resources: disk nearly full"


def test_what_it_may_not_take_is_left_to_pynetdicom() -> None:
    receiver, assoc, requests = _receiver()
    split = _store_command()
    assert not receiver.take(bytearray(_pdv(1, 0x01, split[:20])))  # command in fragments
    assert not receiver.take(bytearray(_pdv(2, 0x03, _store_command())))  # unknown context
    assoc.dimse.message = object()  # pynetdicom holds part of a message
    assert not receiver.take(bytearray(_pdv(1, 0x03, _store_command())))
    assoc.dimse.message = None
    assoc.serving.acquire()  # the association thread is serving something
    assert not receiver.take(bytearray(_pdv(1, 0x03, _store_command())))
    assoc.serving.release()
    assoc._sent_release = True
    assert not receiver.take(bytearray(_pdv(1, 0x03, _store_command())))
    assert not requests and not assoc.sent and not assoc.serving.locked()


@pytest.mark.parametrize(
    "next_pdu",
    [
        _pdv(1, 0x03, b""),  # a command inside the dataset
        _pdv(3, 0x00, b"xx"),  # another context
        _pdv(1, 0x02, b"xx") + _pdv(1, 0x00, b"yy"),  # data after the last fragment
        b"\x00\x00\x00\x09\x01\x00",  # a PDV longer than the PDU
    ],
)
def test_a_pdu_that_breaks_the_dataset_is_a_protocol_error(next_pdu: bytes) -> None:
    receiver, assoc, requests = _receiver()
    assert receiver.take(bytearray(_pdv(1, 0x03, _store_command())))
    with pytest.raises(ProtocolError):
        receiver.take(bytearray(next_pdu))
    receiver.close()  # what the DUL does as it ends
    assert not assoc.serving.locked() and not requests


class _PathRecordingSCP(StorageSCP):
    """The node's SCP, counting the C-STOREs pynetdicom delivered."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.through_pynetdicom = 0

    def _on_store(self, event):  # type: ignore[no-untyped-def]
        self.through_pynetdicom += 1
        return super()._on_store(event)


def _scp(tmp_path: Path, **listener: object) -> tuple[_PathRecordingSCP, Index]:
    config = load_node_config(write_config(tmp_path, free_port(), listener=listener))
    index = Index(config.storage.database_path)
    scp = _PathRecordingSCP(config, Spool(config.storage.spool_dir, 0), index)
    scp.start()
    return scp, index


def _associate(scp: StorageSCP, *, max_pdu: int = 0, acse_timeout: float = 30) -> Association:
    ae = AE(ae_title="SENDER")
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = acse_timeout
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    host, port = scp.address
    assoc = ae.associate(host, port, ae_title="AINODE")
    assert assoc.is_established
    return assoc


def _send_with_pynetdicom(scp: StorageSCP, paths: list[Path], max_pdu: int) -> list[int]:
    assoc = _associate(scp, max_pdu=max_pdu)
    try:
        return [int(assoc.send_c_store(dcmread(path)).Status) for path in paths]
    finally:
        assoc.release()


@pytest.mark.parametrize(
    ("node_max_pdu", "sender_max_pdu", "through_pynetdicom"),
    [
        (0, 0, 0),  # plain: every C-STORE direct
        (64, 0, 3),  # commands split over PDVs: pynetdicom's path
        (0, 64, 0),  # direct, the response too long for one of the sender's PDUs
    ],
)
def test_either_path_stores_every_instance(
    tmp_path: Path, node_max_pdu: int, sender_max_pdu: int, through_pynetdicom: int
) -> None:
    paths = make_instances(tmp_path / "in", 3)
    scp, index = _scp(tmp_path, max_pdu=node_max_pdu)
    try:
        statuses = _send_with_pynetdicom(scp, paths, sender_max_pdu)
    finally:
        scp.stop()
        index.close()
    assert statuses == [0x0000] * 3
    assert scp.through_pynetdicom == through_pynetdicom
    spool = load_node_config(tmp_path / "node.yaml").storage.spool_dir

    def pixels_by_instance(files: object) -> dict[str, bytes]:
        return {ds.SOPInstanceUID: ds.PixelData for ds in map(dcmread, files)}

    assert pixels_by_instance(spool.rglob("*.dcm")) == pixels_by_instance(paths)


def _encapsulated_instance(tmp_path: Path) -> RawInstance:
    """A JPEG Baseline instance whose pixel data is two fragments and a delimiter."""
    ds = dcmread(make_instances(tmp_path / "native", 1)[0])
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(200) + b"\xff\xd9"] * 2)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path = tmp_path / "encapsulated.dcm"
    ds.save_as(path, enforce_file_format=True)
    return raw_instance(path)


@pytest.mark.parametrize(("node_max_pdu", "through_pynetdicom"), [(0, 0), (64, 5)])
def test_a_dataset_cut_short_in_its_pixel_data_is_refused_and_not_stored(
    tmp_path: Path, node_max_pdu: int, through_pynetdicom: int, caplog: pytest.LogCaptureFixture
) -> None:
    native = raw_instance(make_instances(tmp_path / "in", 1, size=16)[0])
    encapsulated = _encapsulated_instance(tmp_path)
    cut = [
        replace(native, dataset=native.dataset[:-300]),  # 212 of 512 pixel bytes
        replace(encapsulated, dataset=encapsulated.dataset[:-8]),  # no sequence delimiter
        replace(encapsulated, dataset=encapsulated.dataset[:-20]),  # inside a fragment
    ]
    scp, index = _scp(tmp_path, max_pdu=node_max_pdu)
    try:
        statuses = raw_store(scp.address[1], [*cut, native, encapsulated], tmp_path / "wire")
    finally:
        scp.stop()
        index.close()
    assert statuses == [0xC000, 0xC000, 0xC000, 0x0000, 0x0000]
    assert scp.through_pynetdicom == through_pynetdicom
    assert len(_index_rows(tmp_path)) == 2
    spool = load_node_config(tmp_path / "node.yaml").storage.spool_dir
    assert len(list(spool.rglob("*.dcm"))) == 2
    refusals = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(refusals) == 3 and all("from RAWSENDER" in m for m in refusals)
    assert "Synthetic" not in caplog.text and "SYNTH-001" not in caplog.text


def _start_a_store_never_finished(assoc: Association, *, promised_bytes: int = 0) -> None:
    """A C-STORE command and the first fragment of its dataset, in a PDU whose header
    promises ``promised_bytes`` more than it holds; nothing follows."""
    context_id = assoc.accepted_contexts[0].context_id
    items = _pdv(context_id, 0x03, _store_command()) + _pdv(context_id, 0x00, b"\x08\x00")
    header = struct.pack(">BBL", 0x04, 0, len(items) + promised_bytes)
    assoc.dul.socket.socket.sendall(header + items)


def _index_rows(tmp_path: Path) -> list[tuple[str]]:
    database = load_node_config(tmp_path / "node.yaml").storage.database_path
    with closing(sqlite3.connect(database)) as conn:
        return conn.execute("SELECT sop_instance_uid FROM instances").fetchall()


def test_a_release_in_the_middle_of_a_dataset_drops_it_and_is_answered(tmp_path: Path) -> None:
    scp, index = _scp(tmp_path)
    try:
        # Without an answer the release would time out and abort instead.
        assoc = _associate(scp, acse_timeout=5)
        _start_a_store_never_finished(assoc)
        assoc.release()
        assert assoc.is_released and not assoc.is_aborted
        statuses = _send_with_pynetdicom(scp, make_instances(tmp_path / "in", 1), 0)
    finally:
        scp.stop()
        index.close()
    assert statuses == [0x0000]  # the node serves on
    assert len(_index_rows(tmp_path)) == 1  # and the dropped dataset left nothing


def test_a_sender_gone_quiet_in_the_middle_of_a_dataset_is_timed_out(tmp_path: Path) -> None:
    scp, index = _scp(tmp_path, network_timeout_s=1)
    try:
        assoc = _associate(scp)
        _start_a_store_never_finished(assoc)
        # ... and nothing more: the node's network timeout must still end the association.
        wait_until(lambda: assoc.is_aborted, timeout=15, what="the node to abort the association")
    finally:
        scp.stop()
        index.close()
    assert not _index_rows(tmp_path)


def test_an_idle_association_is_timed_out_after_the_configured_network_timeout(
    tmp_path: Path,
) -> None:
    scp, index = _scp(tmp_path, network_timeout_s=1)
    try:
        assoc = _associate(scp)
        (served,) = scp._servers[0][0].active_associations
        assert served.dul._idle_timer.timeout == 1  # not pynetdicom's default of 60 s
        wait_until(lambda: assoc.is_aborted, timeout=15, what="the node to abort the association")
    finally:
        scp.stop()
        index.close()


def test_a_peer_that_stops_in_the_middle_of_a_pdu_is_cut_off(tmp_path: Path) -> None:
    scp, index = _scp(tmp_path, network_timeout_s=1)
    try:
        assoc = _associate(scp)
        _start_a_store_never_finished(assoc, promised_bytes=1000)
        wait_until(lambda: assoc.is_aborted, timeout=15, what="the node to drop the connection")
        wait_until(
            lambda: not scp._servers[0][0].active_associations,
            timeout=15,
            what="the node to end its side",
        )
    finally:
        scp.stop()
        index.close()
