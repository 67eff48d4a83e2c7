"""A running node's audit trail: start and stop, a refused and an accepted association, the
study received, with the collector down; and ``ainode audit`` on what it wrote."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path

import pytest
from audit_support import check_message
from pydicom.uid import CTImageStorage

from node.audit.cli import read_records
from node.audit.events import EventKind, Outcome
from node.cli import main
from tests.conftest import free_port, wait_until
from tests.ingest_support import (
    DCMTK_ENV,
    dcmtk_store,
    make_instances,
    running_node,
    start_node,
)
from tests.tls_support import make_pki, tls_section


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.dcmtk
def test_a_node_audits_while_its_collector_is_down(
    tmp_path: Path, dcmtk, capsys: pytest.CaptureFixture[str]
) -> None:
    files = make_instances(tmp_path / "study", 3)
    sections = {
        "access": {"accept_any": False, "callers": [{"ae_title": "STORESCU"}]},
        "audit": {
            "collector": {
                "host": "127.0.0.1",
                "port": _closed_port(),
                "transport": "tcp",
                "queue_size": 2,
            }
        },
    }
    with running_node(tmp_path / "node", **sections) as node:
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aec", "AINODE", "-aet", "INTRUDER", "127.0.0.1", str(node.port)],
            capture_output=True,
            text=True,
            env=DCMTK_ENV,
            timeout=10,
            check=False,
        )
        outcomes = dcmtk_store(dcmtk("storescu"), files, node.port, tmp_path / "send")
    log = node.log()
    assert echo.returncode != 0, "the unknown AE was let in"
    assert all(outcome.succeeded for outcome in outcomes), outcomes

    records = list(read_records(node.data_dir / "audit" / "audit.log"))
    for record in records:
        check_message(record["xml"])
    kinds = [record["kind"] for record in records]
    assert kinds[0] == EventKind.APPLICATION_START and kinds[-1] == EventKind.APPLICATION_STOP
    refused = [r for r in records if r["kind"] == EventKind.ASSOCIATION_REFUSED]
    assert "INTRUDER" in [r["ae_titles"][0] for r in refused]
    intruder = next(r for r in refused if r["ae_titles"][0] == "INTRUDER")
    assert intruder["outcome"] == Outcome.MINOR_FAILURE
    assert "not in access.callers" in intruder["xml"]
    assert 'NetworkAccessPointID="127.0.0.1"' in intruder["xml"]
    accepted = [r for r in records if r["kind"] == EventKind.ASSOCIATION_ACCEPTED]
    assert [r["ae_titles"] for r in accepted] == [["STORESCU", "AINODE"]]
    (received,) = [r for r in records if r["kind"] == EventKind.STUDY_RECEIVED]
    study_uid = received["study_uids"][0]
    root = check_message(received["xml"])
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == study_uid
    assert [(c.get("UID"), c.get("NumberOfInstances")) for c in study.findall("SOPClass")] == [
        (CTImageStorage, "3")
    ]
    assert patient.get("ParticipantObjectID") == "SYNTH-001"
    assert received["outcome"] == Outcome.SUCCESS

    assert "dropped so far" in log, "the full queue is reported"
    assert "SYNTH-001" not in log, "a Patient ID in the node's log"

    def audit(*args: str) -> list[str]:
        assert main(["audit", "--config", str(node.config_path), *args]) == 0
        return capsys.readouterr().out.splitlines()

    assert [line.split()[1] for line in audit("--ae", "INTRUDER")] == ["association-refused"]
    assert [line.split()[1] for line in audit("--study", study_uid)] == ["study-received"]
    assert audit("--since", "2999-01-01") == []
    # every reading of the trail is itself recorded (Audit Log Used), this one included
    everything = audit("--until", "2999-01-01")
    assert len(everything) == len(records) + 4
    assert [line.split()[1] for line in everything[len(records) :]] == ["audit-log-used"] * 4
    (xml,) = audit("--study", study_uid, "--xml")
    check_message(xml)
    used = audit("--kind", "audit-log-used", "--xml")
    assert len(used) == 6
    for xml in used:
        check_message(xml)


@pytest.mark.dcmtk
def test_the_audit_file_survives_a_killed_node(tmp_path: Path, dcmtk) -> None:
    node = start_node(tmp_path / "node")
    try:
        files = make_instances(tmp_path / "study", 1)
        outcomes = dcmtk_store(dcmtk("storescu"), files, node.port, tmp_path / "send")
        assert outcomes[0].succeeded
        path = node.data_dir / "audit" / "audit.log"
        wait_until(
            lambda: EventKind.STUDY_RECEIVED in [r["kind"] for r in read_records(path)],
            timeout=10,
            what="the study-received record",
        )
    finally:
        node.process.kill()  # no clean stop: what was recorded is in the file regardless
        node.process.wait(timeout=10)
    kinds = [record["kind"] for record in read_records(path)]
    assert kinds[0] == EventKind.APPLICATION_START
    assert EventKind.APPLICATION_STOP not in kinds


def test_a_failed_tls_handshake_is_a_node_authentication_alert(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls_port = free_port()
    listener = {"tls_port": tls_port, "require_client_certificate": True}
    with running_node(tmp_path / "node", listener=listener, tls=tls_section(pki)) as node:
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as plain:
            plain.sendall(b"\x01\x00" + bytes(72))  # plain DICOM on the TLS port
            with contextlib.suppress(OSError):
                while plain.recv(4096):
                    pass
        path = node.data_dir / "audit" / "audit.log"
        wait_until(
            lambda: any("TLS handshake failed" in r["xml"] for r in read_records(path)),
            timeout=10,
            what="the TLS alert",
        )
    alert = next(r for r in read_records(path) if "TLS handshake failed" in r["xml"])
    assert alert["kind"] == EventKind.ASSOCIATION_REFUSED
    root = check_message(alert["xml"])
    assert root[0].find("EventTypeCode").get("csd-code") == "110126"  # Node Authentication
