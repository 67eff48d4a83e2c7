"""Deterministic UIDs for result objects.

Every UID an output carries is derived from the job key (study, route, plugin) and what the
UID names (output kind, series or instance, tracking id), not from the study version. A job
that runs twice (a crash, a redelivered Celery message) and the job of a newer version of the
study (a late or changed instance) both send the same identities, so a PACS that overwrites a
re-sent SOP Instance UID keeps one set of results per product, the newest (README "Re-sends").

UIDs use the ``2.25`` root (ISO/IEC 9834-8): the decimal value of a name-based UUID (v5).
"""

from __future__ import annotations

import uuid

from node.shared_types import OutputKind

# Fixed namespace for ainode result UIDs; changing it would change every UID ever derived.
AINODE_UID_NAMESPACE = uuid.UUID("6f1c7e1e-3b0a-5a4e-9d5e-7a1b2c3d4e5f")


def uid_from_name(name: str) -> str:
    """The ``2.25`` UID of the UUIDv5 of ``name`` in ainode's namespace (at most 44 chars)."""
    return f"2.25.{uuid.uuid5(AINODE_UID_NAMESPACE, name).int}"


class ResultUids:
    """The UIDs of one job key's results, the same for every version of the study."""

    def __init__(self, job_id: str) -> None:
        if not job_id:
            raise ValueError("job_id must not be empty: result UIDs are derived from it")
        self._prefix = f"ainode/job/{job_id}"

    def series(self, kind: OutputKind) -> str:
        return uid_from_name(f"{self._prefix}/{kind.value}/series")

    def instance(self, kind: OutputKind, index: int = 0) -> str:
        return uid_from_name(f"{self._prefix}/{kind.value}/instance/{index}")

    def tracking(self, tracking_id: str) -> str:
        """Tracking UID of a finding or segment; the SEG and the SR share it."""
        return uid_from_name(f"{self._prefix}/tracking/{tracking_id}")


def device_observer_uid(plugin_name: str, plugin_version: str) -> str:
    """The device-observer UID of a plugin version: the same across jobs, by design."""
    return uid_from_name(f"ainode/device/{plugin_name}/{plugin_version}")
