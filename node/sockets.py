"""Socket options the receive path sets on accepted connections."""

from __future__ import annotations

import socket
import struct


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
