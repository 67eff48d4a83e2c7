"""What the audit trail records: one frozen dataclass per kind of auditable event.

Events carry only what the message needs (AE titles, addresses, Study UIDs, the Patient ID of
a transfer); ``node.audit.messages`` turns them into PS3.15 A.5 XML. They are plain data so a
job's worker process can hand them back to the node in its ``WorkResult``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

__all__ = [
    "ApplicationActivity",
    "AssociationAccepted",
    "AssociationRefused",
    "AuditEvent",
    "AuditLogUsed",
    "ConfigurationChanged",
    "EventKind",
    "IndexQueried",
    "InstancesSent",
    "Outcome",
    "Party",
    "StudyDeleted",
    "StudyReceived",
    "StudyRef",
    "TransferBegun",
    "UserAuthenticated",
]


class EventKind(StrEnum):
    """The kinds the local file and ``ainode audit`` name."""

    APPLICATION_START = "application-start"
    APPLICATION_STOP = "application-stop"
    ASSOCIATION_ACCEPTED = "association-accepted"
    ASSOCIATION_REFUSED = "association-refused"
    STUDY_RECEIVED = "study-received"
    TRANSFER_BEGUN = "transfer-begun"
    INSTANCES_SENT = "instances-sent"
    CONFIGURATION_CHANGED = "configuration-changed"
    LOGIN = "login"
    LOGOUT = "logout"
    QUERY = "query"
    STUDY_DELETED = "study-deleted"
    AUDIT_LOG_USED = "audit-log-used"


class Outcome(IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True)
class Party:
    """Another application the node dealt with: a DICOM AE, a STOW-RS URL or a folder."""

    user_id: str  # the AE title, URL or folder path
    host: str | None = None  # network address, when there is one
    ae_title: str | None = None  # when it is a DICOM application entity


@dataclass(frozen=True)
class StudyRef:
    """One study in a transfer: what PS3.15 asks for (SOP classes, counts, the patient)."""

    study_instance_uid: str
    patient_id: str | None
    sop_classes: tuple[tuple[str, int], ...]  # (SOP Class UID, number of instances)

    @property
    def instances(self) -> int:
        return sum(count for _, count in self.sop_classes)


@dataclass(frozen=True)
class AuditEvent:
    """Common to every event: when it happened (epoch seconds)."""

    at: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> EventKind:
        raise NotImplementedError

    @property
    def ae_titles(self) -> tuple[str, ...]:
        """The AE titles (or other peer names) ``ainode audit --ae`` matches."""
        return ()

    @property
    def study_uids(self) -> tuple[str, ...]:
        return ()

    @property
    def outcome(self) -> Outcome:
        return Outcome.SUCCESS

    @property
    def outcome_description(self) -> str | None:
        """EventOutcomeDescription: what went wrong, or why a peer was refused."""
        return getattr(self, "description", None)


@dataclass(frozen=True)
class ApplicationActivity(AuditEvent):
    """The node started or stopped (Application Activity)."""

    started: bool

    @property
    def kind(self) -> EventKind:
        return EventKind.APPLICATION_START if self.started else EventKind.APPLICATION_STOP


@dataclass(frozen=True)
class AssociationAccepted(AuditEvent):
    """A peer was let in: its calling AE and address passed the access checks."""

    calling: Party
    called_ae: str

    @property
    def kind(self) -> EventKind:
        return EventKind.ASSOCIATION_ACCEPTED

    @property
    def ae_titles(self) -> tuple[str, ...]:
        return (self.calling.user_id, self.called_ae)


@dataclass(frozen=True)
class AssociationRefused(AuditEvent):
    """A peer was turned away (unknown calling or called AE, the association limit)."""

    calling: Party
    called_ae: str
    reason: str

    @property
    def kind(self) -> EventKind:
        return EventKind.ASSOCIATION_REFUSED

    @property
    def ae_titles(self) -> tuple[str, ...]:
        return (self.calling.user_id, self.called_ae)

    @property
    def outcome(self) -> Outcome:
        return Outcome.MINOR_FAILURE

    @property
    def outcome_description(self) -> str | None:
        return self.reason


@dataclass(frozen=True)
class _Transfer(AuditEvent):
    """Instances of one study moving between the node and ``peer``."""

    peer: Party
    study: StudyRef
    result: Outcome = Outcome.SUCCESS
    description: str | None = None  # why it was not a success

    @property
    def ae_titles(self) -> tuple[str, ...]:
        return (self.peer.user_id,)

    @property
    def study_uids(self) -> tuple[str, ...]:
        return (self.study.study_instance_uid,)

    @property
    def outcome(self) -> Outcome:
        return self.result


@dataclass(frozen=True)
class StudyReceived(_Transfer):
    """What one association delivered of one study (DICOM Instances Transferred, received)."""

    called_ae: str = ""

    @property
    def kind(self) -> EventKind:
        return EventKind.STUDY_RECEIVED

    @property
    def ae_titles(self) -> tuple[str, ...]:
        return (self.peer.user_id, self.called_ae)


@dataclass(frozen=True)
class TransferBegun(_Transfer):
    """The node starts sending a study's instances (Begin Transferring DICOM Instances)."""

    @property
    def kind(self) -> EventKind:
        return EventKind.TRANSFER_BEGUN


@dataclass(frozen=True)
class InstancesSent(_Transfer):
    """Results or a series went to a destination or a vendor's node, or failed to."""

    destination: str = ""  # the node.yaml destination or vendor plugin it went to

    @property
    def kind(self) -> EventKind:
        return EventKind.INSTANCES_SENT

    @property
    def ae_titles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for n in (self.peer.user_id, self.destination) if n))


@dataclass(frozen=True)
class ConfigurationChanged(AuditEvent):
    """A configuration file was re-read while the node runs (routes.yaml reloaded)."""

    path: str
    result: Outcome = Outcome.SUCCESS
    description: str | None = None

    @property
    def kind(self) -> EventKind:
        return EventKind.CONFIGURATION_CHANGED

    @property
    def outcome(self) -> Outcome:
        return self.result


@dataclass(frozen=True)
class UserAuthenticated(AuditEvent):
    """A person logged in or out (or failed to), e.g. at the web console."""

    user: str
    address: str | None = None
    logout: bool = False
    result: Outcome = Outcome.SUCCESS
    description: str | None = None

    @property
    def kind(self) -> EventKind:
        return EventKind.LOGOUT if self.logout else EventKind.LOGIN

    @property
    def outcome(self) -> Outcome:
        return self.result


@dataclass(frozen=True)
class IndexQueried(AuditEvent):
    """Someone asked what the node holds (``ainode studies``, later the console): Query."""

    user: str
    query: str  # what was asked, e.g. "studies --limit 50"

    @property
    def kind(self) -> EventKind:
        return EventKind.QUERY


@dataclass(frozen=True)
class AuditLogUsed(AuditEvent):
    """Someone read the audit trail (``ainode audit``): PS3.15 Audit Log Used."""

    user: str
    path: str

    @property
    def kind(self) -> EventKind:
        return EventKind.AUDIT_LOG_USED


@dataclass(frozen=True)
class StudyDeleted(AuditEvent):
    """Retention deleted a study's instances and rows (DICOM Study Deleted)."""

    study: StudyRef
    reason: str  # "retention period", "disk below the watermark", ...

    @property
    def kind(self) -> EventKind:
        return EventKind.STUDY_DELETED

    @property
    def study_uids(self) -> tuple[str, ...]:
        return (self.study.study_instance_uid,)
