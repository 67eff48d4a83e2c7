"""Which studies each open association is delivering to, so that a release marks a study only
when no other association is still sending to it (``node.assembler`` shortens its quiet
timer on a release)."""

from __future__ import annotations

import threading
from collections import Counter


class OpenDeliveries:
    """Studies per open association, counted across associations; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_association: dict[int, set[str]] = {}
        self._senders: Counter[str] = Counter()

    def remember(self, association: int, study_uid: str) -> None:
        """``association`` (its ``id``) delivered an instance of ``study_uid``."""
        with self._lock:
            studies = self._by_association.setdefault(association, set())
            if study_uid not in studies:
                studies.add(study_uid)
                self._senders[study_uid] += 1

    def forget(self, association: int) -> list[str]:
        """Drop an association's deliveries; return the studies no open association is
        still sending to."""
        with self._lock:
            finished = []
            for study in self._by_association.pop(association, set()):
                self._senders[study] -= 1
                if self._senders[study] <= 0:
                    del self._senders[study]
                    finished.append(study)
            return finished
