"""Audit events as DICOM audit messages (PS3.15 A.5: the ``AuditMessage`` XML schema).

Which message each event becomes (PS3.15 A.5.3):

- node start/stop: Application Activity (110100), Application Start/Stop (110120/110121);
- association accepted: User Authentication (110114), Login (110122), the peer the requestor;
- association refused: Security Alert (110113), Node Authentication (110126), minor failure;
- study received, result or series sent: DICOM Instances Transferred (110104), action C for
  what the node received and R for what it read and sent; Begin Transferring DICOM
  Instances (110102) before a send;
- routes reloaded: Security Alert (110113), Software Configuration (110131);
- console login/logout: User Authentication (110114), Login/Logout (110122/110123);
- the index listed (``ainode studies``): Query (110112), the query text as the object's
  ParticipantObjectQuery under the Study Root C-FIND SOP class, the nearest DICOM query;
- the audit trail read (``ainode audit``): Audit Log Used (110101);
- a study deleted by retention: DICOM Study Deleted (110105), action D.
"""

from __future__ import annotations

import base64
import getpass
import os
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from node.audit.events import (
    ApplicationActivity,
    AssociationAccepted,
    AssociationRefused,
    AuditEvent,
    AuditLogUsed,
    ConfigurationChanged,
    IndexQueried,
    InstancesSent,
    Party,
    StudyDeleted,
    StudyReceived,
    StudyRef,
    TransferBegun,
    UserAuthenticated,
)

__all__ = ["AuditSource", "Code", "event_time", "operating_system_user", "render"]


@dataclass(frozen=True)
class Code:
    """A coded value: ``csd-code``, ``codeSystemName``, ``originalText``."""

    value: str
    scheme: str
    meaning: str


APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
AUDIT_LOG_USED = Code("110101", "DCM", "Audit Log Used")
BEGIN_TRANSFERRING = Code("110102", "DCM", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DCM", "DICOM Study Deleted")
QUERY = Code("110112", "DCM", "Query")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
LOGIN = Code("110122", "DCM", "Login")
LOGOUT = Code("110123", "DCM", "Logout")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
SOFTWARE_CONFIGURATION = Code("110131", "DCM", "Software Configuration")
APPLICATION = Code("110150", "DCM", "Application")
APPLICATION_LAUNCHER = Code("110151", "DCM", "Application Launcher")
DESTINATION_ROLE = Code("110152", "DCM", "Destination Role ID")
SOURCE_ROLE = Code("110153", "DCM", "Source Role ID")
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
NODE_ID = Code("110182", "DCM", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
URI = Code("12", "RFC-3881", "URI")
APPLICATION_SERVER = Code("4", "DCM", "Application Server process tier in a multi-tier system")

#: Study Root Query/Retrieve Information Model - FIND: the SOP class a query is recorded under
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

# ParticipantObjectTypeCode and ParticipantObjectTypeCodeRole (PS3.15 A.5.1)
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_SECURITY_RESOURCE = "1", "3", "13"


@dataclass(frozen=True)
class AuditSource:
    """Who writes the messages: the node's AE title, host and audit source identity."""

    ae_title: str
    source_id: str
    site_id: str | None = None
    hostname: str = field(default_factory=socket.gethostname)
    process_id: int = field(default_factory=os.getpid)


def event_time(at: float) -> str:
    """xsd:dateTime in UTC with milliseconds (also the syslog TIMESTAMP)."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _code(parent: ET.Element, tag: str, code: Code) -> None:
    ET.SubElement(
        parent,
        tag,
        {"csd-code": code.value, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def _participant(
    root: ET.Element,
    user_id: str,
    requestor: bool,
    role: Code | None = None,
    *,
    ae_title: str | None = None,
    host: str | None = None,
    machine_name: bool = False,
) -> None:
    attrs = {"UserID": user_id, "UserIsRequestor": "true" if requestor else "false"}
    if ae_title:
        attrs["AlternativeUserID"] = f"AETITLES={ae_title}"
    if host:
        attrs["NetworkAccessPointID"] = host
        attrs["NetworkAccessPointTypeCode"] = "1" if machine_name else "2"
    element = ET.SubElement(root, "ActiveParticipant", attrs)
    if role is not None:
        _code(element, "RoleIDCode", role)


def _node(root: ET.Element, source: AuditSource, requestor: bool, role: Code | None) -> None:
    """The node itself as an active participant."""
    _participant(
        root,
        str(source.process_id),
        requestor,
        role,
        ae_title=source.ae_title,
        host=source.hostname,
        machine_name=True,
    )


def _peer(root: ET.Element, peer: Party, requestor: bool, role: Code | None) -> None:
    _participant(root, peer.user_id, requestor, role, ae_title=peer.ae_title, host=peer.host)


def _object(
    root: ET.Element, object_id: str, type_code: str, role: str, id_type: Code
) -> ET.Element:
    element = ET.Element(
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": object_id,
            "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role,
        },
    )
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    root.append(element)
    return element


def _study_objects(root: ET.Element, study: StudyRef) -> None:
    element = _object(
        root, study.study_instance_uid, SYSTEM_OBJECT, ROLE_REPORT, STUDY_INSTANCE_UID
    )
    for sop_class, count in study.sop_classes:
        ET.SubElement(element, "SOPClass", {"UID": sop_class, "NumberOfInstances": str(count)})
    if study.patient_id:
        _object(root, study.patient_id, PERSON, ROLE_PATIENT, PATIENT_NUMBER)


def _detail(element: ET.Element, kind: str, text: str) -> None:
    value = base64.b64encode(text.encode()).decode("ascii")
    ET.SubElement(element, "ParticipantObjectDetail", {"type": kind, "value": value})


def _identification(event: AuditEvent, action: str, event_id: Code, type_code: Code | None):
    element = ET.Element(
        "EventIdentification",
        {
            "EventActionCode": action,
            "EventDateTime": event_time(event.at),
            "EventOutcomeIndicator": str(int(event.outcome)),
        },
    )
    _code(element, "EventID", event_id)
    if type_code is not None:
        _code(element, "EventTypeCode", type_code)
    if event.outcome_description:
        ET.SubElement(element, "EventOutcomeDescription").text = event.outcome_description
    return element


def _body(event: AuditEvent, source: AuditSource) -> tuple[ET.Element, ET.Element, ET.Element]:
    """EventIdentification, the active participants and the participant objects (kept apart:
    the schema puts AuditSourceIdentification between the last two)."""
    people = ET.Element("people")
    objects = ET.Element("objects")
    match event:
        case ApplicationActivity(started=started):
            head = _identification(
                event, "E", APPLICATION_ACTIVITY, APPLICATION_START if started else APPLICATION_STOP
            )
            _node(people, source, False, APPLICATION)
            _participant(people, operating_system_user(), True, APPLICATION_LAUNCHER)
        case AssociationAccepted(calling=calling):
            head = _identification(event, "E", USER_AUTHENTICATION, LOGIN)
            _peer(people, calling, True, None)
            _node(people, source, False, None)
        case AssociationRefused(calling=calling, reason=reason):
            head = _identification(event, "E", SECURITY_ALERT, NODE_AUTHENTICATION)
            _peer(people, calling, True, None)
            _node(people, source, False, APPLICATION)
            subject = calling.host or calling.user_id
            alert = _object(objects, subject, SYSTEM_OBJECT, ROLE_SECURITY_RESOURCE, NODE_ID)
            _detail(alert, "Alert Description", reason)
        case StudyReceived(peer=peer, study=study):
            head = _identification(event, "C", INSTANCES_TRANSFERRED, None)
            _peer(people, peer, True, SOURCE_ROLE)
            _node(people, source, False, DESTINATION_ROLE)
            _study_objects(objects, study)
        case TransferBegun(peer=peer, study=study) | InstancesSent(peer=peer, study=study):
            begun = isinstance(event, TransferBegun)
            code = BEGIN_TRANSFERRING if begun else INSTANCES_TRANSFERRED
            head = _identification(event, "E" if begun else "R", code, None)
            _node(people, source, True, SOURCE_ROLE)
            _peer(people, peer, False, DESTINATION_ROLE)
            _study_objects(objects, study)
        case ConfigurationChanged(path=path):
            head = _identification(event, "E", SECURITY_ALERT, SOFTWARE_CONFIGURATION)
            _node(people, source, True, APPLICATION)
            uri = Path(path).absolute().as_uri()
            _object(objects, uri, SYSTEM_OBJECT, ROLE_SECURITY_RESOURCE, URI)
        case UserAuthenticated(user=user, address=address, logout=logout):
            head = _identification(event, "E", USER_AUTHENTICATION, LOGOUT if logout else LOGIN)
            _participant(people, user, True, None, host=address)
            _node(people, source, False, APPLICATION)
        case StudyDeleted(study=study, reason=reason):
            head = _identification(event, "D", STUDY_DELETED, None)
            _node(people, source, True, APPLICATION)
            _study_objects(objects, study)
            _detail(objects[0], "Reason", reason)
        case IndexQueried(user=user, query=query):
            head = _identification(event, "E", QUERY, None)
            _participant(people, user, True, SOURCE_ROLE)
            _node(people, source, False, DESTINATION_ROLE)
            asked = _object(objects, STUDY_ROOT_FIND, SYSTEM_OBJECT, ROLE_REPORT, SOP_CLASS_UID)
            ET.SubElement(asked, "ParticipantObjectQuery").text = base64.b64encode(
                query.encode()
            ).decode("ascii")
        case AuditLogUsed(user=user, path=path):
            head = _identification(event, "R", AUDIT_LOG_USED, None)
            _participant(people, user, True, None)
            _node(people, source, False, APPLICATION)
            uri = Path(path).absolute().as_uri()
            log = _object(objects, uri, SYSTEM_OBJECT, ROLE_SECURITY_RESOURCE, URI)
            name = ET.Element("ParticipantObjectName")
            name.text = "Security Audit Log"
            log.insert(1, name)
        case _:
            raise TypeError(f"no audit message for {type(event).__name__}")
    return head, people, objects


def operating_system_user() -> str:
    """Who runs this process (started the node, ran a command): the operating system user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def render(event: AuditEvent, source: AuditSource) -> str:
    """The event as one ``AuditMessage`` XML document (UTF-8 text, no line breaks added)."""
    head, people, objects = _body(event, source)
    root = ET.Element("AuditMessage")
    root.append(head)
    root.extend(people)
    audit_source = {"AuditSourceID": source.source_id}
    if source.site_id:
        audit_source["AuditEnterpriseSiteID"] = source.site_id
    identification = ET.SubElement(root, "AuditSourceIdentification", audit_source)
    _code(identification, "AuditSourceTypeCode", APPLICATION_SERVER)
    root.extend(objects)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")
