"""Audit test helpers: a checker of PS3.15 A.5 audit messages and an rsyslog collector.

The checker encodes the standard's rules rather than our renderer's choices: the general
message format (A.5.1: element order, coded values, enumerated attribute values) and, per
EventID, the participants and objects A.5.3 requires.
"""

from __future__ import annotations

import base64
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.conftest import free_port, poll_until

ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOMES = {"0", "4", "8", "12"}
ACCESS_POINT_TYPES = {"1", "2", "3", "4", "5"}


def _coded(element: ET.Element | None, where: str) -> tuple[str, str]:
    """A CodedValueType: csd-code, codeSystemName (or codeSystem) and originalText."""
    assert element is not None, f"{where} is missing"
    code = element.get("csd-code")
    system = element.get("codeSystemName") or element.get("codeSystem")
    assert code and system and element.get("originalText"), f"{where} incomplete: {element.attrib}"
    return code, system


def _role(participant: ET.Element) -> str | None:
    element = participant.find("RoleIDCode")
    return None if element is None else element.get("csd-code")


def _general(root: ET.Element) -> None:
    """PS3.15 A.5.1: the parts, their order and their attributes."""
    assert root.tag == "AuditMessage", root.tag
    tags = [child.tag for child in root]
    assert tags[0] == "EventIdentification" and tags.count("EventIdentification") == 1, tags
    assert tags.count("AuditSourceIdentification") == 1, tags
    source_at = tags.index("AuditSourceIdentification")
    assert source_at >= 2 and set(tags[1:source_at]) == {"ActiveParticipant"}, tags
    assert set(tags[source_at + 1 :]) <= {"ParticipantObjectIdentification"}, tags

    event = root[0]
    assert event.get("EventActionCode") in ACTIONS, event.attrib
    datetime.fromisoformat(event.get("EventDateTime", ""))
    assert event.get("EventOutcomeIndicator") in OUTCOMES, event.attrib
    _coded(event.find("EventID"), "EventID")
    for code in event.findall("EventTypeCode"):
        _coded(code, "EventTypeCode")

    for participant in root.findall("ActiveParticipant"):
        assert participant.get("UserID"), participant.attrib
        assert participant.get("UserIsRequestor") in {"true", "false"}, participant.attrib
        access_type = participant.get("NetworkAccessPointTypeCode")
        if participant.get("NetworkAccessPointID") is not None:
            assert access_type in ACCESS_POINT_TYPES, participant.attrib
        for role in participant.findall("RoleIDCode"):
            _coded(role, "RoleIDCode")

    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID"), "AuditSourceID missing"
    for code in source.findall("AuditSourceTypeCode"):
        _coded(code, "AuditSourceTypeCode")

    for item in root.findall("ParticipantObjectIdentification"):
        assert item.get("ParticipantObjectID"), item.attrib
        assert item.get("ParticipantObjectTypeCode", "1") in {"1", "2", "3", "4"}, item.attrib
        role = item.get("ParticipantObjectTypeCodeRole")
        assert role is None or 1 <= int(role) <= 24, item.attrib
        _coded(item.find("ParticipantObjectIDTypeCode"), "ParticipantObjectIDTypeCode")
        for sop_class in item.findall("SOPClass"):
            assert sop_class.get("UID") and int(sop_class.get("NumberOfInstances", "")) > 0


def _objects(root: ET.Element, id_type: str) -> list[ET.Element]:
    return [
        item
        for item in root.findall("ParticipantObjectIdentification")
        if item.find("ParticipantObjectIDTypeCode").get("csd-code") == id_type  # type: ignore[union-attr]
    ]


def _transfer(root: ET.Element, actions: set[str]) -> None:
    """A.5.3.2 / A.5.3.4: one source, one destination, the studies and the patient."""
    assert root[0].get("EventActionCode") in actions
    roles = [_role(p) for p in root.findall("ActiveParticipant")]
    assert roles.count("110153") == 1 and roles.count("110152") == 1, roles
    studies = _objects(root, "110180")
    assert studies, "no Study participant object"
    for study in studies:
        assert study.get("ParticipantObjectTypeCode") == "2"
        assert study.get("ParticipantObjectTypeCodeRole") == "3"
    patients = _objects(root, "2")
    assert len(patients) == 1, "exactly one Patient participant object"
    assert patients[0].get("ParticipantObjectTypeCode") == "1"
    assert patients[0].get("ParticipantObjectTypeCodeRole") == "1"


def check_message(xml: str) -> ET.Element:
    """Parse ``xml`` and assert PS3.15 A.5's rules for its EventID; the parsed root."""
    root = ET.fromstring(xml)
    _general(root)
    event_id = root[0].find("EventID").get("csd-code")  # type: ignore[union-attr]
    types = [code.get("csd-code") for code in root[0].findall("EventTypeCode")]
    participants = root.findall("ActiveParticipant")
    requestors = [p for p in participants if p.get("UserIsRequestor") == "true"]
    if event_id == "110100":  # Application Activity
        assert root[0].get("EventActionCode") == "E"
        assert types and set(types) <= {"110120", "110121"}, types
        assert "110150" in [_role(p) for p in root.findall("ActiveParticipant")]
    elif event_id == "110102":  # Begin Transferring DICOM Instances
        _transfer(root, {"E"})
    elif event_id == "110104":  # DICOM Instances Transferred
        _transfer(root, {"C", "R", "U"})
    elif event_id == "110113":  # Security Alert
        assert root[0].get("EventActionCode") == "E"
        assert len(types) >= 1, "a Security Alert names its type"
        assert requestors, "the performing person or process"
    elif event_id == "110114":  # User Authentication
        assert root[0].get("EventActionCode") == "E"
        assert types and set(types) <= {"110122", "110123"}, types
        assert len(requestors) == 1, "exactly one person or process authenticated"
    elif event_id == "110112":  # Query (A.5.3.12)
        assert root[0].get("EventActionCode") == "E"
        roles = [_role(p) for p in participants]
        assert roles.count("110153") == 1 and roles.count("110152") == 1, roles
        (asked,) = _objects(root, "110181")
        assert asked.get("ParticipantObjectTypeCodeRole") == "3"
        query = asked.find("ParticipantObjectQuery")
        assert query is not None and base64.b64decode(query.text or "", validate=True)
    elif event_id == "110105":  # DICOM Study Deleted (A.5.3.5)
        assert root[0].get("EventActionCode") == "D"
        assert len(requestors) == 1, "the process that deleted"
        assert len(_objects(root, "110180")) == 1, "one Study participant object"
        assert len(_objects(root, "2")) <= 1, "at most one Patient"
    elif event_id == "110101":  # Audit Log Used (A.5.3.1)
        assert root[0].get("EventActionCode") == "R"
        assert len(requestors) == 1, "exactly one reader"
        (log,) = _objects(root, "12")
        assert log.get("ParticipantObjectTypeCode") == "2"
        assert log.get("ParticipantObjectTypeCodeRole") == "13"
        assert log.findtext("ParticipantObjectName") == "Security Audit Log"
    else:
        raise AssertionError(f"unexpected EventID {event_id}")
    return root


# -- rsyslog as the collector ---------------------------------------------------------------


def rsyslogd_path() -> str | None:
    return shutil.which("rsyslogd") or (
        "/usr/sbin/rsyslogd" if Path("/usr/sbin/rsyslogd").exists() else None
    )


@dataclass(frozen=True)
class Collector:
    udp_port: int
    tcp_port: int
    tls_port: int | None
    output: Path

    def messages(self) -> list[str]:
        if not self.output.exists():
            return []
        return self.output.read_text(errors="replace").splitlines()


RSYSLOG_CONF = """\
global(workDirectory="{folder}" maxMessageSize="64k"{tls_global})
module(load="imudp")
module(load="imtcp")
template(name="audit" type="string" string="%msgid% %app-name% %msg%\\n")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
{tls_input}
*.* action(type="omfile" file="{output}" template="audit" flushOnTXEnd="on" asyncWriting="off")
"""


@contextmanager
def rsyslog_collector(folder: Path, rsyslogd: str, pki=None) -> Iterator[Collector]:
    """rsyslogd on loopback: UDP, TCP and (given a PKI) TLS inputs, every message to a file."""
    folder.mkdir(parents=True, exist_ok=True)
    udp, tcp = free_port(), free_port()
    tls = free_port() if pki is not None else None
    tls_global = tls_input = ""
    if pki is not None:
        tls_global = (
            f' defaultNetstreamDriverCAFile="{pki.ca}"'
            f' defaultNetstreamDriverCertFile="{pki.server.certificate}"'
            f' defaultNetstreamDriverKeyFile="{pki.server.key}"'
        )
        tls_input = (
            f'input(type="imtcp" address="127.0.0.1" port="{tls}" streamDriver.name="gtls"'
            ' streamDriver.mode="1" streamDriver.authMode="anon")'
        )
    output = folder / "received.log"
    conf = folder / "rsyslog.conf"
    conf.write_text(
        RSYSLOG_CONF.format(
            folder=folder,
            tls_global=tls_global,
            udp=udp,
            tcp=tcp,
            tls_input=tls_input,
            output=output,
        )
    )
    log = (folder / "rsyslogd.out").open("wb")
    process = subprocess.Popen(
        [rsyslogd, "-n", "-f", str(conf), "-i", str(folder / "rsyslogd.pid")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def listening() -> bool:
            return process.poll() is None and all(_listening(p) for p in (tcp, tls) if p)

        if not poll_until(listening, 10):
            text = (folder / "rsyslogd.out").read_text(errors="replace")
            raise RuntimeError(f"rsyslogd did not start:\n{text}")
        yield Collector(udp, tcp, tls, output)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
