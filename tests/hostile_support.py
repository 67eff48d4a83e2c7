"""Helpers for the hostile-peer tests: raw PDUs on a socket, and what the node process holds.

The figures come from /proc (Linux), so a test can say that a run left no thread, file
descriptor or memory behind, and wait, with a deadline, for them to come back.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AddressInformation

from tests.conftest import poll_until

PDU_HEADER = struct.Struct(">BBL")
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
#: Presentation context ids ``associate_rq`` proposes: Verification (implicit), CT Image
#: Storage (explicit), CT Image Storage (implicit).
ECHO_CONTEXT, CT_EXPLICIT_CONTEXT, CT_IMPLICIT_CONTEXT = 1, 3, 5
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


@dataclass(frozen=True)
class ProcessFigures:
    """What a process holds: resident memory, open file descriptors, threads."""

    rss_bytes: int
    open_fds: int
    threads: int

    def __str__(self) -> str:
        return f"RSS {self.rss_bytes / 2**20:.1f} MiB, {self.open_fds} fds, {self.threads} threads"


def process_figures(pid: int) -> ProcessFigures:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return ProcessFigures(
        rss_bytes=int(status["VmRSS"].split()[0]) * 1024,
        open_fds=len(list(Path(f"/proc/{pid}/fd").iterdir())),
        threads=int(status["Threads"]),
    )


def settled_figures(pid: int, baseline: ProcessFigures, timeout: float) -> ProcessFigures:
    """The process's figures once its fds and threads are back to ``baseline`` (or what they
    are at the deadline, for the test to report)."""

    def back() -> ProcessFigures | None:
        now = process_figures(pid)
        settled = now.open_fds <= baseline.open_fds and now.threads <= baseline.threads
        return now if settled else None

    return poll_until(back, timeout) or process_figures(pid)


def associate_rq(calling_ae: str = "FUZZER", called_ae: str = "AINODE") -> bytes:
    """A valid A-ASSOCIATE-RQ PDU as pynetdicom encodes it: three presentation contexts
    (``ECHO_CONTEXT``...), and user information with a maximum length, implementation
    class and version, and a role selection item."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 104)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 11112)
    contexts = []
    for context_id, sop_class, syntax in (
        (ECHO_CONTEXT, Verification, ImplicitVRLittleEndian),
        (CT_EXPLICIT_CONTEXT, CTImageStorage, ExplicitVRLittleEndian),
        (CT_IMPLICIT_CONTEXT, CTImageStorage, ImplicitVRLittleEndian),
    ):
        context = build_context(sop_class, [syntax])
        context.context_id = context_id
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "FUZZER_1"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CTImageStorage
    role.scu_role = True
    role.scp_role = False
    primitive.user_information = [maximum, implementation, version, role]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def release_rq() -> bytes:
    return PDU_HEADER.pack(0x05, 0, 4) + bytes(4)


def read_pdu(sock: socket.socket, deadline: float) -> tuple[int, bytes] | None:
    """The next whole PDU (type, body); None if the connection closed or the deadline came."""
    header = _read_exactly(sock, 6, deadline)
    if header is None:
        return None
    pdu_type, _, length = PDU_HEADER.unpack(header)
    body = _read_exactly(sock, min(length, 1 << 20), deadline)
    return None if body is None else (pdu_type, body)


def _read_exactly(sock: socket.socket, count: int, deadline: float) -> bytes | None:
    data = b""
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(count - len(data))
        except (TimeoutError, OSError):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def closed_by_peer(sock: socket.socket, deadline: float) -> bool:
    """Read until the node closes the connection; False if it has not by ``deadline``."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:  # reset by the node
            return True
