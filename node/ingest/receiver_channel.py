"""What a receiver process and the node's process say to each other over their pipe.

A receiver (``node.ingest.receiver``) journals each instance, then sends it as ``Received``;
the node's process (``node.ingest.receivers``) files what it gets in sequence order and
answers ``Filed``. When a whole journal segment is filed the receiver asks for ``Sync``; the
node makes the spool and index durable and answers ``Synced``, and only then does the receiver
retire the segment. The journal is thus written by one process only (the receiver) and the
index by one process only (the node). Messages are pickled by ``multiprocessing.connection``
between processes of the same node.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.ingest.move import Journaled

__all__ = [
    "Failed",
    "Filed",
    "Listening",
    "Received",
    "Released",
    "Stop",
    "Stopped",
    "Sync",
    "Synced",
]


# -- from a receiver ------------------------------------------------------------------------


@dataclass(frozen=True)
class Listening:
    """The receiver serves; everything up to ``filed_through`` in its journal is filed (the
    node replayed the journal before starting it)."""

    pid: int
    filed_through: int


@dataclass(frozen=True)
class Failed:
    """The receiver could not start (a port, a TLS file, the journal): why."""

    reason: str


@dataclass(frozen=True)
class Received:
    """One journaled instance for the node to file."""

    item: Journaled


@dataclass(frozen=True)
class Released:
    """An association that delivered these studies was released; records up to ``after``
    were sent before it (the release counts once they are filed)."""

    studies: tuple[str, ...]
    at: float
    after: int


@dataclass(frozen=True)
class Sync:
    """Records up to ``through`` complete a segment: make them durable to retire it."""

    through: int


@dataclass(frozen=True)
class Stopped:
    """The receiver stopped serving; ``last`` is the last record it sent."""

    last: int


# -- from the node --------------------------------------------------------------------------


@dataclass(frozen=True)
class Filed:
    """Every record up to ``through`` is in the spool and the index (not yet durably)."""

    through: int


@dataclass(frozen=True)
class Synced:
    """Every record up to ``through`` is durable in the spool and the index."""

    through: int


@dataclass(frozen=True)
class Stop:
    """Stop serving (a clean stop of the node)."""
