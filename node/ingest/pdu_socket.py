"""The accepted connection's socket as pynetdicom's DUL reads it: whole PDUs, memory that
follows what arrived, quick ACKs for senders that keep Nagle on, and timeouts in the kernel."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

from pynetdicom.transport import AssociationSocket

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

#: A PDU's buffer starts at most this large and doubles as bytes arrive: memory follows what
#: was received, not what a PDU header declares (up to 4 GiB).
FIRST_READ_BYTES = 1 << 20


def set_kernel_timeouts(sock: socket.socket, timeout: float | None) -> None:
    """Bound every blocking ``recv``/``send`` on ``sock`` in the kernel (``SO_RCVTIMEO``,
    ``SO_SNDTIMEO``): a Python socket timeout would make every read non-blocking plus a poll,
    measurably slower for CT-sized PDUs."""
    if timeout is None:
        return
    seconds = int(timeout)
    limit = struct.pack("@ll", seconds, int((timeout - seconds) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)


class PduSocket(AssociationSocket):
    """Reads a whole PDU with ``recv_into`` instead of a loop of 4 KiB ``recv`` calls, into a
    buffer that grows with what arrives (``FIRST_READ_BYTES``)."""

    #: Until the A-ASSOCIATE-RQ is read: a peer trickling bytes is cut off at this time.
    deadline: float | None = None
    #: The DUL thread is inside ``recv``: part of a PDU came, the rest has not yet.
    reading = False

    def recv(self, nr_bytes: int) -> bytearray:
        self.reading = True
        try:
            return self._recv(nr_bytes)
        finally:
            self.reading = False

    def _recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        buffer = bytearray(min(nr_bytes, FIRST_READ_BYTES))
        received = 0
        while received < nr_bytes:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise TimeoutError("no whole A-ASSOCIATE-RQ within the request timeout")
            if received == len(buffer):
                buffer.extend(bytes(min(received, nr_bytes - received)))
            count = sock.recv_into(memoryview(buffer)[received:], len(buffer) - received)
            if not count:  # the peer closed the connection
                del buffer[received:]
                return buffer
            received += count
        if _QUICKACK is not None:
            # Linux clears quick-ACK mode as it pleases; set it again after each read so a
            # sender with Nagle on (DCMTK's default) never waits ~40 ms for our delayed ACK
            # before it may send the rest of a small C-STORE.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return buffer
