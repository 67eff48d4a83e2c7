"""The audit trail's messages, local file, syslog framing and ``ainode audit``, in process."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, SegmentationStorage

from node.audit.cli import Filter, format_record, read_records
from node.audit.events import (
    ApplicationActivity,
    AssociationAccepted,
    AssociationRefused,
    AuditEvent,
    AuditLogUsed,
    ConfigurationChanged,
    EventKind,
    IndexQueried,
    InstancesSent,
    Outcome,
    Party,
    StudyDeleted,
    StudyReceived,
    StudyRef,
    TransferBegun,
    UserAuthenticated,
)
from node.audit.messages import AuditSource, render
from node.audit.settings import AuditSettings, CollectorSettings, SyslogTransport
from node.audit.syslog import BOM, MSGID, SyslogForwarder, frame, syslog_message
from node.audit.trail import AuditTrail
from node.cli import main
from tests.audit_support import check_message
from tests.conftest import wait_until

SOURCE = AuditSource(ae_title="AINODE", source_id="AINODE", site_id="Test Hospital")
MODALITY = Party("CT1", "10.0.0.7", "CT1")
PACS = Party("PACS", "10.0.0.9", "PACS")
STUDY = StudyRef("1.2.826.0.1.3680043.8.498.1", "PID-42", ((CTImageStorage, 120),))
RESULTS = StudyRef("1.2.826.0.1.3680043.8.498.1", "PID-42", ((SegmentationStorage, 1),))

EVENTS: dict[EventKind, AuditEvent] = {
    EventKind.APPLICATION_START: ApplicationActivity(started=True),
    EventKind.APPLICATION_STOP: ApplicationActivity(started=False),
    EventKind.ASSOCIATION_ACCEPTED: AssociationAccepted(calling=MODALITY, called_ae="AINODE"),
    EventKind.ASSOCIATION_REFUSED: AssociationRefused(
        calling=Party("INTRUDER", "10.9.9.9", "INTRUDER"),
        called_ae="AINODE",
        reason="calling AE not in access.callers",
    ),
    EventKind.STUDY_RECEIVED: StudyReceived(peer=MODALITY, study=STUDY, called_ae="AINODE"),
    EventKind.TRANSFER_BEGUN: TransferBegun(peer=PACS, study=STUDY),
    EventKind.INSTANCES_SENT: InstancesSent(peer=PACS, study=RESULTS, destination="pacs"),
    EventKind.CONFIGURATION_CHANGED: ConfigurationChanged(path="/etc/ainode/routes.yaml"),
    EventKind.LOGIN: UserAuthenticated(user="dr.who", address="10.1.1.1"),
    EventKind.LOGOUT: UserAuthenticated(user="dr.who", address="10.1.1.1", logout=True),
    EventKind.QUERY: IndexQueried(user="pacsadmin", query="studies --limit 50"),
    EventKind.STUDY_DELETED: StudyDeleted(study=STUDY, reason="retention: retention period"),
    EventKind.AUDIT_LOG_USED: AuditLogUsed(user="secofficer", path="/var/lib/ainode/audit.log"),
}


def _event_ids(xml: str) -> tuple[str, list[str], str]:
    root = check_message(xml)
    event = root[0]
    types = [code.get("csd-code") for code in event.findall("EventTypeCode")]
    return event.find("EventID").get("csd-code"), types, event.get("EventOutcomeIndicator")


def test_every_event_kind_has_an_event_and_renders_a_valid_message() -> None:
    assert set(EVENTS) == set(EventKind)
    expected = {
        EventKind.APPLICATION_START: ("110100", ["110120"]),
        EventKind.APPLICATION_STOP: ("110100", ["110121"]),
        EventKind.ASSOCIATION_ACCEPTED: ("110114", ["110122"]),
        EventKind.ASSOCIATION_REFUSED: ("110113", ["110126"]),
        EventKind.STUDY_RECEIVED: ("110104", []),
        EventKind.TRANSFER_BEGUN: ("110102", []),
        EventKind.INSTANCES_SENT: ("110104", []),
        EventKind.CONFIGURATION_CHANGED: ("110113", ["110131"]),
        EventKind.LOGIN: ("110114", ["110122"]),
        EventKind.LOGOUT: ("110114", ["110123"]),
        EventKind.QUERY: ("110112", []),
        EventKind.STUDY_DELETED: ("110105", []),
        EventKind.AUDIT_LOG_USED: ("110101", []),
    }
    for kind, event in EVENTS.items():
        assert event.kind is kind
        event_id, types, _ = _event_ids(render(event, SOURCE))
        assert (event_id, types) == expected[kind], kind


def test_transfer_messages_name_study_sop_classes_and_patient() -> None:
    root = check_message(render(EVENTS[EventKind.STUDY_RECEIVED], SOURCE))
    assert root[0].get("EventActionCode") == "C"
    study, patient = root.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY.study_instance_uid
    assert [(c.get("UID"), c.get("NumberOfInstances")) for c in study.findall("SOPClass")] == [
        (CTImageStorage, "120")
    ]
    assert patient.get("ParticipantObjectID") == "PID-42"
    source, destination = root.findall("ActiveParticipant")
    assert (source.get("UserID"), source.get("UserIsRequestor")) == ("CT1", "true")
    assert source.get("AlternativeUserID") == "AETITLES=CT1"
    assert source.get("NetworkAccessPointID") == "10.0.0.7"
    assert destination.get("AlternativeUserID") == "AETITLES=AINODE"
    sent = check_message(render(EVENTS[EventKind.INSTANCES_SENT], SOURCE))
    assert sent[0].get("EventActionCode") == "R"


def test_failures_carry_their_outcome_and_description() -> None:
    failed = InstancesSent(
        peer=PACS,
        study=RESULTS,
        destination="pacs",
        result=Outcome.MINOR_FAILURE,
        description="association rejected",
    )
    root = check_message(render(failed, SOURCE))
    assert root[0].get("EventOutcomeIndicator") == "4"
    assert root[0].findtext("EventOutcomeDescription") == "association rejected"
    refused = check_message(render(EVENTS[EventKind.ASSOCIATION_REFUSED], SOURCE))
    assert refused[0].get("EventOutcomeIndicator") == "4"
    subject = refused.find("ParticipantObjectIdentification")
    assert subject.get("ParticipantObjectID") == "10.9.9.9"


def test_syslog_message_is_rfc5424_with_octet_counting_on_streams() -> None:
    message = syslog_message("<AuditMessage/>", at=0.0, hostname="node 1", app_name="ainode")
    header, _, body = message.partition(BOM)
    assert (
        header.decode() == f"<85>1 1970-01-01T00:00:00.000Z node1 ainode {os.getpid()} {MSGID} - "
    )
    assert body == b"<AuditMessage/>"
    warning = syslog_message("<x/>", at=0.0, hostname="h", app_name="a", failure=True)
    assert warning.startswith(b"<84>1 ")
    assert frame(message, SyslogTransport.UDP) == message
    assert frame(message, SyslogTransport.TCP) == f"{len(message)} ".encode() + message


def test_trail_appends_one_json_line_per_event_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.log"
    trail = AuditTrail(path, SOURCE)
    threads = [
        threading.Thread(target=lambda: [trail.record(e) for e in EVENTS.values()])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    trail.close()
    trail.record(EVENTS[EventKind.LOGIN])  # after close: ignored, never raises
    again = AuditTrail(path, SOURCE)
    again.record(EVENTS[EventKind.APPLICATION_START])
    again.close()
    records = list(read_records(path))
    assert len(records) == 8 * len(EVENTS) + 1
    for record in records:
        check_message(record["xml"])
    received = next(r for r in records if r["kind"] == "study-received")
    assert received["ae_titles"] == ["CT1", "AINODE"]
    assert received["study_uids"] == [STUDY.study_instance_uid]
    assert path.stat().st_mode & 0o777 == 0o600


def test_trail_defaults_to_the_data_folder_and_can_be_switched_off(tmp_path: Path) -> None:
    trail = AuditTrail.from_settings(AuditSettings(), tmp_path, "AINODE")
    assert trail.path == tmp_path / "audit" / "audit.log"
    trail.close()
    off = AuditTrail.from_settings(AuditSettings(enabled=False), tmp_path, "AINODE")
    assert not off.enabled
    off.record(EVENTS[EventKind.LOGIN])


def test_settings_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match="for transport: tls"):
        CollectorSettings(host="x", transport="udp", ca_file=Path("/ca.pem"))
    with pytest.raises(ValueError, match="go together"):
        CollectorSettings(host="x", cert_file=Path("/c.pem"))
    with pytest.raises(ValueError, match="extra"):
        AuditSettings(colector={"host": "x"})
    assert CollectorSettings(host="x").resolved_port == 6514
    assert CollectorSettings(host="x", transport="udp").resolved_port == 514


def test_a_collector_that_never_reads_never_blocks_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepted by the kernel, never read
    settings = CollectorSettings(
        host="127.0.0.1", port=listener.getsockname()[1], transport="tcp", queue_size=50
    )
    trail = AuditTrail(tmp_path / "audit.log", SOURCE, SyslogForwarder(settings))
    started = time.monotonic()
    for _ in range(6000):  # 10 MB: more than the kernel buffers a reader that never reads
        trail.record(EVENTS[EventKind.STUDY_RECEIVED])
    elapsed = time.monotonic() - started
    wait_until(lambda: trail.dropped > 0, timeout=10, what="messages dropped")
    closing = time.monotonic()
    trail.close()
    listener.close()
    assert elapsed < 3.0, f"6000 records took {elapsed:.2f} s"
    assert time.monotonic() - closing < 4.0, "close gave up on the stuck collector"
    assert len(list(read_records(tmp_path / "audit.log"))) == 6000
    warnings = [r for r in caplog.records if "dropped so far" in r.getMessage()]
    assert len(warnings) == 1, "warned once a minute at most"


def test_a_down_collector_costs_nothing_and_is_retried(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: connections are refused
    settings = CollectorSettings(host="127.0.0.1", port=port, transport="tcp", queue_size=3)
    forwarder = SyslogForwarder(settings)
    trail = AuditTrail(tmp_path / "audit.log", SOURCE, forwarder)
    for _ in range(10):
        trail.record(EVENTS[EventKind.LOGIN])
    assert trail.dropped >= 6
    collector = socket.socket()
    collector.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    collector.bind(("127.0.0.1", port))
    collector.listen(1)
    conn, _ = collector.accept()  # the forwarder reconnects after its backoff
    conn.settimeout(5)
    data = b""
    while data.count(MSGID.encode()) < 3:
        data += conn.recv(65536)
    trail.close()
    conn.close()
    collector.close()
    assert forwarder.sent >= 3


def _write_log(path: Path) -> None:
    trail = AuditTrail(path, SOURCE)
    at = 1_780_000_000.0  # 2026-05-28T20:26:40Z
    trail.record(StudyReceived(peer=MODALITY, study=STUDY, called_ae="AINODE", at=at))
    trail.record(AssociationRefused(calling=PACS, called_ae="AINODE", reason="no", at=at + 60))
    other = StudyRef("1.2.3.4", "PID-7", ((CTImageStorage, 1),))
    trail.record(InstancesSent(peer=PACS, study=other, destination="pacs", at=at + 120))
    trail.close()
    with path.open("ab") as handle:
        handle.write(b'{"time": "2026-05-28T20:2')  # a record a crash cut short


def test_ainode_audit_filters_by_time_ae_and_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    _write_log(path)

    def run(*args: str) -> list[str]:
        assert main(["audit", "--file", str(path), *args]) == 0
        return capsys.readouterr().out.splitlines()

    assert main(["audit", "--file", str(path)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3
    assert f"{path}:4: not a record, skipped" in captured.err
    assert [line.split()[1] for line in run("--ae", "PACS")] == [
        "association-refused",
        "instances-sent",
    ]
    assert [line.split()[1] for line in run("--ae", "pacs")] == ["instances-sent"]
    assert [line.split()[1] for line in run("--study", "1.2.3.4")] == ["instances-sent"]
    assert len(run("--since", "2026-05-28T20:27:00Z")) == 2
    assert len(run("--until", "2026-05-28T20:27:00+00:00")) == 1
    assert len(run("--since", "2026-05-28T20:27:00Z", "--until", "2026-05-28T20:28:00Z")) == 1
    xml = run("--study", STUDY.study_instance_uid, "--xml")
    assert len(xml) == 1
    check_message(xml[0])
    assert "PID-42" in xml[0] and "PID-42" not in " ".join(run())


def test_filter_and_line_format() -> None:
    record = {
        "time": "2026-05-28T20:26:40.000Z",
        "kind": "study-received",
        "outcome": 4,
        "ae_titles": ["CT1", "AINODE"],
        "study_uids": ["1.2"],
        "xml": "",
    }
    assert Filter(ae="CT1").matches(record) and not Filter(ae="CT2").matches(record)
    assert format_record(record).split()[1:] == [
        "study-received",
        "failed(4)",
        "ae=CT1,AINODE",
        "study=1.2",
    ]
    assert json.loads(json.dumps(record)) == record
