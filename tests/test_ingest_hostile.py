"""Hostile peers against a running node: what a connection may cost before it associates."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

from tests.ingest_support import DCMTK_ENV, RunningNode, make_instances, running_node

#: A PDU header claiming a 2 GiB A-ASSOCIATE-RQ, and a little of its body.
HUGE_ASSOCIATE_RQ = struct.pack(">BBL", 1, 0, 0x7FFFFFFF) + bytes(100)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _closed_by_peer(sock: socket.socket, deadline: float) -> bool:
    """Read until the node closes the connection; False if it has not by ``deadline``."""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(4096):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def _echo(dcmtk, node: RunningNode, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [dcmtk("echoscu"), "-aec", "AINODE", "-aet", "ECHOER", "127.0.0.1", str(node.port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=timeout,
        check=False,
    )


def test_a_huge_declared_pdu_before_association_costs_no_memory_and_is_aborted(
    tmp_path: Path, dcmtk
) -> None:
    with running_node(tmp_path / "node", listener={"max_pdu": 0}) as node:
        baseline = _rss_bytes(node.process.pid)
        peak = baseline
        closed = []
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
                sock.sendall(HUGE_ASSOCIATE_RQ)
                closed.append(_closed_by_peer(sock, time.monotonic() + 5))
                peak = max(peak, _rss_bytes(node.process.pid))
        echo = _echo(dcmtk, node)
        log = node.log()
    assert peak - baseline < 100 * 1024 * 1024, f"RSS {baseline} -> {peak}"
    assert all(closed), "the node kept a connection that declared a 2 GiB A-ASSOCIATE-RQ"
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert log.count("before association, over 65536") == 3


def test_idle_connections_neither_take_association_slots_nor_stay_long(
    tmp_path: Path, dcmtk
) -> None:
    sections = {"listener": {"max_associations": 4, "association_request_timeout_s": 1}}
    with running_node(tmp_path / "node", **sections) as node:
        idle = [socket.create_connection(("127.0.0.1", node.port), timeout=5) for _ in range(20)]
        try:
            started = time.monotonic()
            echo = _echo(dcmtk, node)
            echo_s = time.monotonic() - started
        finally:
            for sock in idle:
                sock.close()
        # Connections that trickle their A-ASSOCIATE-RQ a byte at a time are cut off too.
        trickling = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(5)]
        header = struct.pack(">BBL", 1, 0, 1000)
        deadline = time.monotonic() + 6
        open_ = set(range(5))
        sent = 0
        while open_ and time.monotonic() < deadline:
            for number in list(open_):
                try:
                    trickling[number].sendall(header[sent % 6 : sent % 6 + 1])
                    trickling[number].settimeout(0.05)
                    if trickling[number].recv(64) == b"":
                        open_.discard(number)
                except TimeoutError:
                    pass
                except OSError:  # reset by the node
                    open_.discard(number)
            sent += 1
        for sock in trickling:
            sock.close()
        assert _echo(dcmtk, node).returncode == 0
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert echo_s < 3, f"C-ECHO took {echo_s:.1f} s beside 20 idle connections"
    assert not open_, f"{len(open_)} trickling connections still open after 6 s"


def _store_to(dcmtk, node: RunningNode, called_ae: str, files: list[Path]) -> str:
    result = subprocess.run(
        [dcmtk("storescu"), "-v", "-aec", called_ae, "127.0.0.1", str(node.port), *map(str, files)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


def test_an_association_to_another_called_ae_title_is_refused(tmp_path: Path, dcmtk) -> None:
    files = make_instances(tmp_path / "in", 2)
    access = {"accept_any": True, "called_ae_aliases": ["AI-ALIAS"]}
    with running_node(tmp_path / "node", access=access) as node:
        wrong = _store_to(dcmtk, node, "NOTAINODE", files[:1])
        alias = _store_to(dcmtk, node, "AI-ALIAS", files[1:])
        log = node.log()
        spooled = list(node.spool.rglob("*.dcm"))
    assert "Called AE Title Not Recognized" in wrong, wrong
    assert "Success" in alias, alias
    assert len(spooled) == 1
    assert "called AE 'NOTAINODE' is not ours" in log
