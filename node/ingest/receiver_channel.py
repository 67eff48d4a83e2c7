"""What a receiver process and the node's process say to each other over their pipe.

A receiver (``node.ingest.receiver``) journals each instance, then sends it as ``Received``;
the node's process (``node.ingest.receivers``) files what it gets in sequence order and
answers ``Mark(FILED)``. When a whole journal segment is filed the receiver asks
``Mark(SYNC_WANTED)``; the node makes the spool and index durable and answers
``Mark(SYNCED)``, and only then does the receiver retire the segment. The journal is thus
written by one process only (the receiver) and the index by one process only (the node).
Messages are pickled by ``multiprocessing.connection`` between processes of the same node.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from node.ingest.move import Journaled

__all__ = ["Failed", "Listening", "Mark", "MarkKind", "Received", "Released", "Stop"]


class MarkKind(Enum):
    """What a ``Mark`` says of the records up to its sequence."""

    #: node → receiver: in the spool and the index (not yet durably)
    FILED = "filed"
    #: receiver → node: they complete a journal segment; make them durable to retire it
    SYNC_WANTED = "sync-wanted"
    #: node → receiver: durable in the spool and the index
    SYNCED = "synced"
    #: receiver → node: the receiver stopped serving; this is its last record
    STOPPED = "stopped"


@dataclass(frozen=True)
class Mark:
    """A sequence number in a receiver's journal, and what holds up to it."""

    kind: MarkKind
    through: int


@dataclass(frozen=True)
class Listening:
    """From a receiver: it serves; everything up to ``filed_through`` in its journal is
    filed (the node replayed the journal before starting it)."""

    pid: int
    filed_through: int


@dataclass(frozen=True)
class Failed:
    """From a receiver: it could not start (a port, a TLS file, the journal), and why."""

    reason: str


@dataclass(frozen=True)
class Received:
    """From a receiver: one journaled instance for the node to file. ``item`` comes without
    its dataset: the node reads those ``length`` bytes at ``offset`` of the receiver's
    journal segment ``segment`` (one copy out of the page cache, instead of pickling half a
    megabyte through the pipe). The segment stays until the node has filed the record."""

    item: Journaled
    segment: int
    offset: int
    length: int


@dataclass(frozen=True)
class Released:
    """From a receiver: an association that delivered these studies was released; records
    up to ``after`` were sent before it (the release counts once they are filed)."""

    studies: tuple[str, ...]
    at: float
    after: int


@dataclass(frozen=True)
class Stop:
    """From the node: stop serving (a clean stop of the node)."""
