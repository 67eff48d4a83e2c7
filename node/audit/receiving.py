"""The SCP's audit bookkeeping: who was let in or refused, and what each association
delivered, told to the trail as one DICOM Instances Transferred message per study when the
association ends (PS3.15 A.5.3.4 counts instances per SOP class, it does not list each)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from node.audit.events import (
    AssociationAccepted,
    AssociationRefused,
    Outcome,
    Party,
    StudyReceived,
    StudyRef,
)
from node.audit.trail import AuditTrail

__all__ = ["ReceiveAudit"]


@dataclass
class _Delivery:
    calling: Party
    called_ae: str
    refused: int = 0
    # study UID -> (Patient ID, SOP Class UID -> instances)
    studies: dict[str, tuple[str | None, Counter[str]]] = field(default_factory=dict)


class ReceiveAudit:
    """Per association (keyed by the caller's object id): accepted, stored, ended."""

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail
        self._lock = threading.Lock()
        self._open: dict[int, _Delivery] = {}

    def refused(self, calling: Party, called_ae: str, reason: str) -> None:
        self._trail.record(AssociationRefused(calling=calling, called_ae=called_ae, reason=reason))

    def accepted(self, key: int, calling: Party, called_ae: str) -> None:
        if not self._trail.enabled:
            return
        with self._lock:
            self._open[key] = _Delivery(calling, called_ae)
        self._trail.record(AssociationAccepted(calling=calling, called_ae=called_ae))

    def stored(self, key: int, study_uid: str, patient_id: str | None, sop_class: str) -> None:
        with self._lock:
            delivery = self._open.get(key)
            if delivery is None:
                return
            entry = delivery.studies.setdefault(study_uid, (patient_id, Counter()))
            entry[1][sop_class] += 1

    def failed(self, key: int) -> None:
        """An instance of the association was refused (it may name no study)."""
        with self._lock:
            delivery = self._open.get(key)
            if delivery is not None:
                delivery.refused += 1

    def ended(self, key: int, released: bool) -> None:
        """The association is over: one message per study it delivered."""
        with self._lock:
            delivery = self._open.pop(key, None)
        if delivery is None:
            return
        problems = []
        if delivery.refused:
            problems.append(f"{delivery.refused} instance(s) refused")
        if not released:
            problems.append("association aborted")
        outcome = Outcome.MINOR_FAILURE if problems else Outcome.SUCCESS
        for study_uid, (patient_id, classes) in delivery.studies.items():
            self._trail.record(
                StudyReceived(
                    peer=delivery.calling,
                    called_ae=delivery.called_ae,
                    study=StudyRef(study_uid, patient_id, tuple(sorted(classes.items()))),
                    result=outcome,
                    description="; ".join(problems) or None,
                )
            )
