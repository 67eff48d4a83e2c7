"""Reproduce pynetdicom's lost C-STORE response in seconds (pynetdicom 3.0.4, no DCMTK).

    python pynetdicom_lost_response.py [STORES]

starts a pynetdicom Storage SCP on loopback and sends STORES (default 5) C-STOREs, each on
its own association with Nagle off, with two delays that a GIL switch or a busy CPU makes by
chance (about once in a few thousand stores), made long enough to happen every time: the
requestor's reactor is held for 50 ms after its checkpoint's ``wait()`` has let it through,
with ``_is_paused`` still True, and ``send_c_store`` is held for 100 ms after handing over its
request, before it reads the response. Prints how many responses were lost and exits 1 if
any were. Stock 3.0.4 loses every one (each waits out the 2 s DIMSE timeout and aborts);
with pynetdicom-lost-response.patch applied none is lost. ainode's suite runs the same
against its own fix (``tests/test_scu.py``).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association

#: How long the reactor is held with ``_is_paused`` still True, and the sender after sending.
REACTOR_HELD_S = 0.05
SENDER_HELD_S = 0.1


class HeldCheckpoint:
    """The association's reactor checkpoint, holding the reactor thread after each ``wait()``
    has let it through: a ``send_c_store`` in that time sees ``_is_paused`` still True."""

    def __init__(self, inner: Any, reactor: threading.Thread) -> None:
        self.inner = inner
        self.reactor = reactor

    def set(self) -> None:
        self.inner.set()

    def clear(self) -> None:
        self.inner.clear()

    def is_set(self) -> bool:
        return bool(self.inner.is_set())

    def wait(self, timeout: float | None = None) -> bool:
        result = bool(self.inner.wait(timeout))
        if threading.current_thread() is self.reactor:
            time.sleep(REACTOR_HELD_S)
        return result


def widen_the_race(assoc: Association) -> None:
    """Hold the reactor as it passes its checkpoint, and the sender between handing over its
    request and reading the response."""
    assoc._reactor_checkpoint = HeldCheckpoint(assoc._reactor_checkpoint, assoc)
    send_msg = assoc.dimse.send_msg

    def held(primitive: Any, context_id: int) -> None:
        send_msg(primitive, context_id)
        time.sleep(SENDER_HELD_S)

    assoc.dimse.send_msg = held  # type: ignore[method-assign]


def nodelay(event: evt.Event) -> None:
    """Nagle off, as a sender that cares for throughput has it: the response comes at once."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def stock_associate(port: int) -> Association:
    """pynetdicom's own requestor, Nagle off, a 2 s DIMSE timeout."""
    scu = AE("SCU")
    scu.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    scu.dimse_timeout = 2
    handlers = [(evt.EVT_CONN_OPEN, nodelay)]
    return scu.associate("127.0.0.1", port, ae_title="SCP", evt_handlers=handlers)


def instance() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = "RACE"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def lost_responses(associate: Callable[[int], Association], stores: int) -> int:
    """C-STOREs to a pynetdicom SCP on loopback, each on its own association from
    ``associate(port)`` with the race widened; how many responses never came."""
    scp = AE("SCP")
    scp.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
    lost = 0
    try:
        for _ in range(stores):
            assoc = associate(server.server_address[1])
            assert assoc.is_established, "the SCP refused the association"
            widen_the_race(assoc)
            time.sleep(0.01)  # the reactor is in its loop now, mostly inside the window
            if "Status" not in assoc.send_c_store(instance()):
                lost += 1  # the DIMSE timeout ran out, and pynetdicom aborted
            elif assoc.is_established:
                assoc.release()
    finally:
        server.shutdown()
    return lost


def main(stores: int) -> int:
    lost = lost_responses(stock_associate, stores)
    print(f"pynetdicom: {lost} of {stores} C-STORE responses lost")
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
