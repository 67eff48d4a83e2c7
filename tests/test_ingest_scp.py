"""The SCP against real peers: echo, who may associate, duplicates, disk watermark, index rows.

Acceptance 2 (DCMTK echoscu gets Success; an unknown calling AE is refused at association)
and the durability rules of the issue that do not need the corpus.
"""

from __future__ import annotations

import ipaddress
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.association import Association

from node.access import CallerAllowList, CallerPin, host_networks, peer_address
from node.config import AllowedCaller, load_node_config
from node.ingest.c_store import StoreReply, StoreRequest
from node.ingest.dataset_end import HeaderError, MissingUidError
from node.ingest.header import derived_uid
from node.ingest.index import Index
from node.ingest.scp import StorageSCP
from node.ingest.spool import TEMP_DIR_NAME, OutOfSpace, Spool
from node.ingest.store import CannotWrite, DatasetMismatch, reply_for
from node.scu import AssociationFailed, Peer, _contexts, associate, send
from tests.conftest import REPO, free_port, wait_until
from tests.ingest_support import DCMTK_ENV, make_instances, running_node, write_config


def _echo(dcmtk, port: int, calling_ae: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-v", "-aet", calling_ae, "-aec", "AINODE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=30,
        check=False,
    )


@pytest.mark.dcmtk
def test_echoscu_succeeds_and_unknown_callers_are_refused_with_the_reason(
    tmp_path: Path, dcmtk
) -> None:
    access = {
        "accept_any": False,
        "callers": [
            {"ae_title": "KNOWN"},
            {"ae_title": "PINNED", "host": "10.9.8.7"},
        ],
    }
    with running_node(tmp_path, access=access) as node:
        known = _echo(dcmtk, node.port, "KNOWN")
        unknown = _echo(dcmtk, node.port, "STRANGER")
        wrong_host = _echo(dcmtk, node.port, "PINNED")
        log = node.log()

    assert known.returncode == 0, known.stdout + known.stderr
    assert "Received Echo Response (Success)" in known.stdout + known.stderr
    for refused in (unknown, wrong_host):
        output = refused.stdout + refused.stderr
        assert refused.returncode != 0
        assert "Association Rejected" in output
        assert "Calling AE Title Not Recognized" in output, output
    assert "'STRANGER' at 127.0.0.1" in log and "'PINNED' at 127.0.0.1" in log
    assert "'KNOWN'" not in log


@pytest.mark.dcmtk
def test_host_pins_are_resolved_names_or_networks(tmp_path: Path, dcmtk) -> None:
    """``localhost`` matches a caller at 127.0.0.1 (compared as text it never did), a CIDR
    network matches its members, and a network the caller is outside refuses it."""
    access = {
        "accept_any": False,
        "callers": [
            {"ae_title": "BYNAME", "host": "localhost"},
            {"ae_title": "BYNET", "host": "127.0.0.0/8"},
            {"ae_title": "ELSEWHERE", "host": "192.0.2.0/24"},
        ],
    }
    with running_node(tmp_path, access=access) as node:
        by_name = _echo(dcmtk, node.port, "BYNAME")
        by_net = _echo(dcmtk, node.port, "BYNET")
        elsewhere = _echo(dcmtk, node.port, "ELSEWHERE")
    assert by_name.returncode == 0, by_name.stdout + by_name.stderr
    assert by_net.returncode == 0, by_net.stdout + by_net.stderr
    assert elsewhere.returncode != 0
    assert "Calling AE Title Not Recognized" in elsewhere.stdout + elsewhere.stderr


def test_a_host_pin_that_is_no_address_network_or_name_is_refused_at_load() -> None:
    with pytest.raises(ValidationError, match="neither an IP address, a network"):
        AllowedCaller(ae_title="PACS", host="no-such-host.invalid")
    assert peer_address("::ffff:10.1.2.3") == ipaddress.ip_address("10.1.2.3")
    allow = CallerAllowList([CallerPin("PACS", host_networks("10.1.0.0/16"))])
    assert allow.refusal("PACS", "::ffff:10.1.2.3") is None
    assert allow.refusal("PACS", "10.2.0.1") == "calls from an address its pin does not list"
    assert allow.refusal("OTHER", "10.1.2.3") == "not in access.callers"


def test_association_limit_refuses_the_extra_association(tmp_path: Path) -> None:
    files = make_instances(tmp_path / "in", 1)
    contexts = _contexts([("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")])

    def associated(peer: Peer) -> Association | None:
        try:
            return associate(peer, contexts)
        except AssociationFailed:
            return None  # the node has not yet seen the previous association go

    with running_node(tmp_path / "node", listener={"max_associations": 1}) as node:
        peer = Peer("AINODE", "127.0.0.1", node.port)
        held = wait_until(lambda: associated(peer), timeout=20, what="first association")
        try:
            with pytest.raises(AssociationFailed, match="rejected"):
                send(files, peer)
        finally:
            held.release()
        second = wait_until(lambda: associated(peer), timeout=20, what="a free slot")
        assert second.send_c_store(files[0]).Status == 0
        second.release()
        log = node.log()
    assert "refused 1 association(s), the latest from calling AE 'AINODE'" in log
    assert "Local limit exceeded" in log


def test_duplicate_replaces_file_and_row_and_reopens_the_study(tmp_path: Path) -> None:
    first = make_instances(tmp_path / "a", 3)
    uid = str(dcmread(first[0]).SOPInstanceUID)
    changed = dcmread(first[0])
    changed.SeriesDescription = "re-sent with a new description"
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    stability = {"stable_after_s": 0.5, "poll_interval_s": 0.05}
    with running_node(tmp_path / "node", stability=stability) as node:
        peer = Peer("AINODE", "127.0.0.1", node.port)
        assert send(first, peer).ok
        conn = sqlite3.connect(node.database)
        wait_until(
            # (with storage.journal the row appears once the mover has filed the instances)
            lambda: conn.execute("SELECT state FROM studies").fetchone() == ("stable",),
            timeout=20,
            what="version 1 stable",
        )
        assert send([tmp_path / "changed.dcm"], peer).ok
        wait_until(
            lambda: conn.execute("SELECT COUNT(*) FROM study_versions").fetchone()[0] == 2,
            timeout=20,
            what="version 2 stable",
        )
    rows = conn.execute("SELECT path FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchall()
    assert len(rows) == 1
    stored = dcmread(node.spool / rows[0][0])
    assert stored.SeriesDescription == "re-sent with a new description"
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 3
    study = conn.execute("SELECT version, changed_at FROM studies").fetchone()
    assert study[0] == 2 and study[1] is not None
    versions = conn.execute("SELECT version, instance_count FROM study_versions ORDER BY version")
    assert versions.fetchall() == [(1, 3), (2, 3)]
    assert len(list(node.spool.rglob("*.dcm"))) == 3


@pytest.mark.dcmtk
def test_below_the_disk_watermark_answers_out_of_resources_and_writes_nothing(
    tmp_path: Path, dcmtk
) -> None:
    files = make_instances(tmp_path / "in", 2)
    huge = 1 << 40  # MB: more free disk than any machine has
    with running_node(tmp_path / "node", storage={"min_free_mb": huge}) as node:
        result = subprocess.run(
            [
                dcmtk("storescu"),
                "-v",
                "-nh",
                "-aec",
                "AINODE",
                "127.0.0.1",
                str(node.port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            env=DCMTK_ENV,
            timeout=60,
            check=False,
        )
        log = node.log()
    output = result.stdout + result.stderr
    assert output.count("Received Store Response (Refused: OutOfResources)") == 2, output
    assert not list(node.spool.rglob("*.dcm"))
    assert not list((node.spool / ".incoming").iterdir())
    conn = sqlite3.connect(node.database)
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
    assert "free disk below storage.min_free_mb" in log


def test_index_rows_hold_the_routing_attributes_and_no_names_in_logs(tmp_path: Path) -> None:
    files = make_instances(tmp_path / "in", 2, size=16)
    with running_node(tmp_path / "node") as node:
        assert send(files, Peer("AINODE", "127.0.0.1", node.port), calling_ae="MODALITY").ok
        log = node.log()
    conn = sqlite3.connect(node.database)
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM instances WHERE instance_number = 2").fetchone()
    source = dcmread(files[1])
    assert row["sop_class_uid"] == source.SOPClassUID
    assert row["transfer_syntax_uid"] == source.file_meta.TransferSyntaxUID
    assert row["calling_ae"] == "MODALITY" and row["called_ae"] == "AINODE"
    assert row["image_type"] == "ORIGINAL\\PRIMARY\\AXIAL"
    assert [float(v) for v in row["image_orientation"].split("\\")] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in row["image_position"].split("\\")] == [0.0, 0.0, 2.5]
    assert (row["rows"], row["columns"], row["slice_thickness"]) == (16, 16, 1.25)
    assert row["size_bytes"] == (node.spool / row["path"]).stat().st_size
    attributes = json.loads(row["attributes"])
    assert attributes["Modality"] == "CT"
    assert attributes["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert attributes["SliceThickness"] == 1.25
    assert attributes["Rows"] == 16
    assert "PixelData" not in attributes
    series = conn.execute("SELECT modality, body_part_examined FROM series").fetchone()
    assert tuple(series) == ("CT", "CHEST")
    assert "Synthetic" not in log and "SYNTH-001" not in log


def test_serve_exits_nonzero_with_a_clear_message_on_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("listener:\n  port: 70000\n  colour: blue\n")
    result = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "listener.port" in result.stderr and "listener.colour" in result.stderr


def test_serve_reports_an_invalid_routes_file_without_a_traceback(tmp_path: Path) -> None:
    """routes.yaml is read when the routing stage starts, inside ``Node.start``."""
    (tmp_path / "routes.yaml").write_text(
        "routes:\n  - name: chest\n    when: {modality: CT, colour: blue}\n    run: [x]\n"
    )
    config = write_config(tmp_path, free_port())
    config.write_text(config.read_text() + "routes_file: routes.yaml\n")
    result = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "bad configuration" in result.stderr
    assert "routes.yaml:3" in result.stderr and "colour" in result.stderr


def test_cli_echo_send_and_studies(tmp_path: Path) -> None:
    files = make_instances(tmp_path / "in", 3)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "node", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    with running_node(tmp_path / "node") as node:
        echo = cli("echo", node.peer)
        sent = cli("send", str(tmp_path / "in"), "--to", node.peer, "--aet", "CLI")
        refused = cli("send", str(files[0]), "--to", f"AINODE@127.0.0.1:{node.port + 1}")
        studies = cli("studies", "--config", str(node.config_path))
    assert echo.returncode == 0 and "status 0x0000" in echo.stdout
    assert sent.returncode == 0 and "sent 3, failed 0" in sent.stdout, sent.stderr
    assert refused.returncode == 1 and "cannot associate" in refused.stderr
    assert studies.returncode == 0
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    line = next(line for line in studies.stdout.splitlines() if line.startswith(study_uid))
    assert line.split()[1:5] == ["receiving", "1", "1", "3"]
    assert "CT" in line and "CHEST" in line
    assert "Synthetic" not in studies.stdout and "SYNTH-001" not in studies.stdout
    # listing the index is a query, and the audit trail says who asked what
    audit_log = (node.data_dir / "audit" / "audit.log").read_text()
    assert '"kind":"query"' in audit_log and "110112" in audit_log


def _stored_directly(
    tmp_path: Path, dataset: bytes, sop_instance: str, sop_class: str = CTImageStorage
):
    """``StorageSCP.store`` called as the receive path calls it, without a network."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = load_node_config(write_config(tmp_path, free_port()))
    spool = Spool(config.storage.spool_dir, 0)
    index = Index(config.storage.database_path)
    scp = StorageSCP(config, spool, index)
    assoc = SimpleNamespace(
        requestor=SimpleNamespace(ae_title="MODALITY", address="127.0.0.1"),
        acceptor=SimpleNamespace(ae_title="AINODE"),
    )
    request = StoreRequest(1, ExplicitVRLittleEndian, 1, sop_class, sop_instance, dataset)
    try:
        return scp.store(assoc, request), spool, index.indexed_paths()  # type: ignore[arg-type]
    finally:
        index.close()


def _dataset_bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_a_dataset_without_its_own_instance_uid_is_filed_under_a_derived_one(
    tmp_path: Path,
) -> None:
    ds = dcmread(make_instances(tmp_path / "in", 1)[0])
    request_uid = str(ds.SOPInstanceUID)
    del ds.SOPInstanceUID
    reply, spool, paths = _stored_directly(tmp_path, _dataset_bytes(ds), request_uid)
    assert reply.status == 0x0000
    (relpath,) = paths
    derived = derived_uid("SOPInstanceUID", request_uid)
    assert relpath.endswith(f"/{derived}.dcm")
    stored = dcmread(spool.path(relpath))
    assert stored.file_meta.MediaStorageSOPInstanceUID == derived  # not the request's
    assert "SOPInstanceUID" not in stored  # the dataset as sent
    assert not list((spool.root / TEMP_DIR_NAME).iterdir())


def test_a_refused_dataset_leaves_no_temp_file(tmp_path: Path) -> None:
    ds = dcmread(make_instances(tmp_path / "in", 1)[0])
    reply, spool, paths = _stored_directly(tmp_path, _dataset_bytes(ds), "1.2.3.999")
    assert reply.status == 0xA900  # the dataset's UID differs from the request's
    junk, _, _ = _stored_directly(tmp_path / "junk", b"\x1f\x8b" + bytes(300), "1.2.3.4")
    assert junk.status == 0xC000
    assert not paths and not list(spool.files())
    assert not list((spool.root / TEMP_DIR_NAME).iterdir())


def test_a_dataset_without_a_sop_class_uid_anywhere_gets_0xc001(tmp_path: Path) -> None:
    """Neither the dataset nor the request names the SOP class: 0xC001 (missing UID), chosen
    by the exception's type (MissingUidError), not by its text."""
    ds = dcmread(make_instances(tmp_path / "in", 1)[0])
    del ds.SOPClassUID
    uid = str(ds.SOPInstanceUID)
    reply, spool, paths = _stored_directly(tmp_path, _dataset_bytes(ds), uid, sop_class="")
    assert reply.status == 0xC001
    assert "SOPClassUID" in reply.error_comment
    assert not paths and not list(spool.files())


def test_a_refusal_status_comes_from_the_exception_type_never_its_text() -> None:
    assert reply_for(HeaderError("dataset has no SOPClassUID")).status == 0xC000
    assert reply_for(MissingUidError("unreadable")).status == 0xC001
    assert reply_for(DatasetMismatch("1.2/1.3")).status == 0xA900
    assert reply_for(OutOfSpace("x")) == StoreReply(0xA700, "out of resources: disk nearly full")
    assert reply_for(CannotWrite("No space")) == StoreReply(0xA700, "cannot write: No space")
    assert reply_for(KeyError("has no")) == StoreReply(0xC002, "storage failed: KeyError")
