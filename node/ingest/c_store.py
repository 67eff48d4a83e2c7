"""A C-STORE as the receive path hands it on: the request, the statuses, the reply.

Both receive paths (``direct_store`` off the PDUs, pynetdicom's own through ``scp``) build a
``StoreRequest`` and call the same store handler, which answers a ``StoreReply``. These types
sit below both so that neither path imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from pynetdicom.association import Association


@dataclass(frozen=True)
class StoreRequest:
    """A received C-STORE request, as the SCP's store handler sees it."""

    context_id: int
    transfer_syntax: str
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    #: The dataset as the peer encoded it (no File Meta).
    dataset: bytes


class StoreStatus(IntEnum):
    """C-STORE response statuses the SCP returns (PS3.4 Annex B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    DATASET_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    MISSING_UID = 0xC001
    STORAGE_FAILED = 0xC002


@dataclass(frozen=True)
class StoreReply:
    """The status a store handler answers with (PS3.4 Annex B.2.3)."""

    status: int
    error_comment: str | None = None

    @classmethod
    def failure(cls, code: StoreStatus, comment: str) -> StoreReply:
        return cls(int(code), comment[:64])  # Error Comment is LO: at most 64 characters


StoreHandler = Callable[[Association, StoreRequest], StoreReply]
"""Stores one instance and says how it went; called on the DUL thread; must not raise."""
