"""A connection flood (issue #16): the node's threads stay bounded by its settings, the extras
are refused or cut at once, and allowed callers get in beside the flood and after it."""

from __future__ import annotations

import contextlib
import math
import selectors
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from node.ingest.admission import REFUSAL_LOG_INTERVAL_S, Admission
from tests.hostile_support import (
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    associate_rq,
    closed_by_peer,
    process_figures,
    read_pdu,
    settled_figures,
)
from tests.ingest_support import DCMTK_ENV, dcmtk_store, make_instances, running_node

MAX_ASSOCIATIONS = 4
MAX_PENDING = 8
REQUEST_TIMEOUT_S = 2.0
LISTENER = {
    "max_associations": MAX_ASSOCIATIONS,
    "max_pending_connections": MAX_PENDING,
    "association_request_timeout_s": REQUEST_TIMEOUT_S,
}
BARE, REQUESTING = 400, 200
#: Each open connection costs its association's thread and its DUL reactor's thread.
THREADS_PER_CONNECTION = 2
#: A transient, service-provider (presentation), local-limit-exceeded A-ASSOCIATE-RJ body.
LOCAL_LIMIT_EXCEEDED = b"\x00\x02\x03\x02"
PROMPTLY_S = 5.0


class _ThreadPeak(threading.Thread):
    """The most threads a process had while this ran."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._done = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, process_figures(self._pid).threads)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _answer(sock: socket.socket) -> str:
    """How the node answered an A-ASSOCIATE-RQ: accepted, limit (the transient RJ), closed."""
    reply = read_pdu(sock, time.monotonic() + PROMPTLY_S)
    if reply is None:
        return "closed" if closed_by_peer(sock, time.monotonic() + 0.1) else "no answer"
    if reply[0] == A_ASSOCIATE_AC:
        return "accepted"
    if reply[0] == A_ASSOCIATE_RJ and reply[1] == LOCAL_LIMIT_EXCEEDED:
        return "limit"
    return f"PDU type {reply[0]} {reply[1].hex()}"


def _closing_times(socks: list[socket.socket], deadline: float) -> list[float]:
    """Seconds from now until the node closed each connection (inf: not by ``deadline``)."""
    started = time.monotonic()
    times = [math.inf] * len(socks)
    with selectors.DefaultSelector() as selector:
        for number, sock in enumerate(socks):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, number)
        while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    times[key.data] = time.monotonic() - started
                    selector.unregister(key.fileobj)
    return times


def _echo(dcmtk, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aec", "AINODE", "-aet", "ECHOER", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=30,
        check=False,
    )


def _connect(port: int, request: bytes | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if request is not None:
        with contextlib.suppress(OSError):  # already closed by the node
            sock.sendall(request)
    return sock


def test_a_connection_flood_costs_bounded_threads_and_allowed_callers_get_in_after(
    tmp_path: Path, dcmtk
) -> None:
    with running_node(tmp_path / "node", listener=LISTENER) as node:
        pid = node.process.pid
        before = process_figures(pid)
        peak = _ThreadPeak(pid)
        peak.start()
        # Bare connections, left open: the node holds max_pending of them, cutting the
        # oldest for each new one, and an allowed caller gets in beside them at once.
        started = time.monotonic()
        bare = [_connect(node.port, None) for _ in range(BARE)]
        bare_s = time.monotonic() - started
        echo_beside = _echo(dcmtk, node.port)
        closing = _closing_times(bare, time.monotonic() + REQUEST_TIMEOUT_S + PROMPTLY_S)
        between = settled_figures(pid, before, timeout=REQUEST_TIMEOUT_S + 30)
        # Connections that all request an association at once.
        started = time.monotonic()
        requesting = [_connect(node.port, associate_rq()) for _ in range(REQUESTING)]
        requesting_s = time.monotonic() - started
        answers = [_answer(sock) for sock in requesting]
        for sock in requesting:
            sock.close()
        after = settled_figures(pid, before, timeout=REQUEST_TIMEOUT_S + 30)
        thread_peak = peak.stop()
        echo_after = _echo(dcmtk, node.port)
        files = make_instances(tmp_path / "in", 2)
        stored = dcmtk_store(dcmtk("storescu"), files, node.port, tmp_path / "work", timeout=30)
        for sock in bare:
            sock.close()
        log = node.log()
    closed_at_once = sum(t <= 1 for t in closing)
    bound = before.threads + THREADS_PER_CONNECTION * (MAX_ASSOCIATIONS + MAX_PENDING)
    print(
        f"{BARE} bare connections in {bare_s:.1f} s ({closed_at_once} closed within 1 s, "
        f"the last after {max(closing):.1f} s), "
        f"{REQUESTING} requesting in {requesting_s:.1f} s ("
        + ", ".join(f"{a} {answers.count(a)}" for a in sorted(set(answers)))
        + f"); threads {before.threads} before, peak {thread_peak} (bound {bound}), "
        f"{after.threads} after; fds {before.open_fds} before, {after.open_fds} after"
    )
    assert thread_peak <= bound, f"{thread_peak} threads, more than {bound}"
    assert max(closing) <= REQUEST_TIMEOUT_S + PROMPTLY_S
    assert closed_at_once >= BARE - MAX_PENDING  # the last max_pending wait their timeout
    assert between.threads <= before.threads, (before, between)
    assert echo_beside.returncode == 0, echo_beside.stdout + echo_beside.stderr
    assert set(answers) <= {"accepted", "limit", "closed"}, answers
    assert answers.count("accepted") <= MAX_ASSOCIATIONS
    assert answers.count("limit") > 0, "no association was refused local-limit-exceeded"
    assert after.threads <= before.threads, (before, after)
    assert after.open_fds <= before.open_fds, (before, after)
    assert echo_after.returncode == 0, echo_after.stdout + echo_after.stderr
    assert all(outcome.succeeded for outcome in stored), stored
    refusal_logs = log.count("connection flood:")
    flood_s = bare_s + requesting_s
    assert 1 <= refusal_logs <= flood_s / REFUSAL_LOG_INTERVAL_S + 2, refusal_logs


@dataclass(eq=False)  # hashed by identity, as associations are
class _Connection:
    """What ``Admission`` looks at of an association: whether it requested, and its socket."""

    requested: bool
    dul: Any


def _connection(requested: bool) -> tuple[_Connection, socket.socket]:
    ours, peer = socket.socketpair()
    return _Connection(requested, SimpleNamespace(socket=SimpleNamespace(socket=ours))), peer


def test_admission_cuts_the_oldest_pending_connection_and_refuses_beyond_the_total() -> None:
    admission = Admission(max_pending=2, max_associations=2)
    (old, old_peer), (new, new_peer) = _connection(False), _connection(False)
    associated, _ = _connection(True)
    peer = ("192.0.2.1", 104)
    assert admission.admit([associated], peer)
    assert admission.admit([old, associated, new], peer)  # two pending: the oldest is cut
    old_peer.settimeout(5)
    assert old_peer.recv(1) == b""
    new_peer.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        assert new_peer.recv(1) != b"", "the newer pending connection was cut"
    assert admission.admit([old, associated, new], peer)  # a cut one is not cut again
    assert not admission.admit([old, associated, new, _connection(False)[0]], peer)
