"""The node on stock pynetdicom: what an upgrade to a version the seam does not know runs.

``node.pynetdicom_seam`` decides at import; ``AINODE_PYNETDICOM_VERSION`` stands in for the
installed version. ``test_the_network_tests_pass_on_the_stock_path`` runs the suite's network
tests in a pytest of its own with 9.9.9 set, so every ``ainode serve`` they start and every
send they make takes pynetdicom's own association code; the tests below marked ``stock_only``
run only there: a few hundred instances from our SCU and from DCMTK, a malformed PDU, and
our SCU sending to DCMTK storescp, each instance compared with what was sent.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from node.pynetdicom_seam import FAST_PATH, VERSION_ENV, check_version
from node.scu import Peer, echo, send
from tests.conftest import REPO, dcmtk_tool, free_port, wait_until
from tests.ingest_support import DCMTK_ENV, _listening, make_instances, running_node

#: The line the seam logs on an unknown version (in a node's log: stderr, unformatted when
#: it is imported before the command line sets logging up).
WARNING = "pynetdicom 9.9.9 is not a version ainode knows (3.0.x)"
#: The network tests run again on the stock path: SCP behaviours (echoscu, refusals, host
#: pins, the association limit, duplicates, the disk watermark, the CLI), re-sends, TLS both
#: ways, the dispatcher's sender against in-process peers, and this module's own.
NETWORK_TESTS = (
    "tests/test_ingest_scp.py",
    "tests/test_ingest_resend.py",
    "tests/test_security_tls.py",
    "tests/test_dispatch_sender.py",
    "tests/test_scu.py::test_echo_reports_success",
    "tests/test_pynetdicom_fallback.py",
)

stock_only = pytest.mark.skipif(
    FAST_PATH, reason="stock path only: test_the_network_tests_pass_on_the_stock_path runs it"
)
fast_only = pytest.mark.skipif(not FAST_PATH, reason="checks the fallback from the fast path")


def _same_datasets(sent: list[Path], received: list[Path]) -> None:
    """Every sent instance arrived once, element for element (the File Meta aside)."""
    by_uid = {str(dcmread(path).SOPInstanceUID): dcmread(path) for path in received}
    assert len(by_uid) == len(received) == len(sent)
    for path in sent:
        original = dcmread(path)
        assert by_uid[str(original.SOPInstanceUID)] == original, path


@fast_only
def test_only_3_0_is_known_and_an_unknown_version_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert check_version("3.0.4") and check_version("3.0.0") and check_version("3.0.11")
    assert not caplog.records
    assert not check_version("3.1.0")
    assert not check_version("not a version")
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert "pynetdicom 3.1.0 is not a version ainode knows" in caplog.records[0].message


@fast_only
def test_a_monkeypatched_version_string_puts_the_node_on_the_stock_path() -> None:
    """A fresh interpreter whose pynetdicom says 3.1.0: the listener takes pynetdicom's own
    request handler (so its own Association and DUL), and the warning is logged once."""
    script = """
import logging, pynetdicom
pynetdicom.__version__ = "3.1.0"
logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler
from node import pynetdicom_seam, scu
from node.ingest.listener import ListeningServer
ae = AE()
ae.add_supported_context(Verification)
server = ae.make_server(("127.0.0.1", 0), server_class=ListeningServer)
print(pynetdicom_seam.FAST_PATH, server.RequestHandlerClass is RequestHandler)
server.server_close()
"""
    env = {k: v for k, v in os.environ.items() if k != VERSION_ENV}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING node.pynetdicom_seam: pynetdicom 3.1.0 is not a version ainode knows (3.0.x): "
        "serving and sending with pynetdicom's own association code, without ainode's fast "
        "receive path or its fix for lost C-STORE responses"
    ]


@fast_only
def test_the_network_tests_pass_on_the_stock_path(tmp_path: Path) -> None:
    inner = tmp_path / "inner"
    env = dict(os.environ, **{VERSION_ENV: "9.9.9"})
    pytest_args = ["-q", "-rfEs", "-p", "no:cacheprovider", f"--basetemp={inner}"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args, *NETWORK_TESTS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary)[1])  # type: ignore[index]
    assert passed >= 25, summary
    logs = sorted(inner.rglob("node-*.log"))
    assert len(logs) >= 10, "the network tests started fewer nodes than they do"
    assert [log for log in logs if WARNING not in log.read_text(errors="replace")] == []


@stock_only
def test_the_stock_node_keeps_what_our_scu_and_dcmtk_send_intact(tmp_path: Path) -> None:
    ours = make_instances(tmp_path / "ours", 300)
    theirs = make_instances(tmp_path / "theirs", 40, start=1000)
    storescu, echoscu = dcmtk_tool("storescu"), dcmtk_tool("echoscu")
    with running_node(tmp_path / "node") as node:
        peer = Peer("AINODE", "127.0.0.1", node.port)
        report = send(ours, peer, calling_ae="OURSCU", timeout_s=10)
        assert (report.sent, report.failed) == (300, ())
        sent = list(ours)
        if storescu and echoscu:
            for tool, args in ((echoscu, []), (storescu, [*map(str, theirs)])):
                command = [tool, "-aec", "AINODE", "127.0.0.1", str(node.port), *args]
                run = subprocess.run(command, env=DCMTK_ENV, capture_output=True, timeout=120)
                assert run.returncode == 0, run.stderr
            sent += theirs
        conn = sqlite3.connect(node.database)

        def indexed() -> list[tuple[str]] | None:
            rows = conn.execute("SELECT path FROM instances").fetchall()
            return rows if len(rows) == len(sent) else None

        rows = wait_until(indexed, timeout=30, what="every instance indexed")
        log = node.log()
    assert WARNING in log
    _same_datasets(sent, [node.spool / path for (path,) in rows])


@stock_only
def test_the_stock_node_ends_a_malformed_pdu_and_serves_on(tmp_path: Path) -> None:
    """An A-ASSOCIATE-RQ whose body does not decode: pynetdicom's own DUL answers A-ABORT,
    and the next caller is served."""
    with running_node(tmp_path / "node") as node:
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 16) + bytes(16))
            answer = b""
            try:
                while chunk := sock.recv(4096):
                    answer += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        assert answer[:1] == b"\x07", answer[:16]  # A-ABORT
        assert echo(Peer("AINODE", "127.0.0.1", node.port), timeout_s=10) == 0x0000


@stock_only
def test_our_stock_scu_sends_to_dcmtk_storescp_intact(tmp_path: Path, dcmtk) -> None:
    files = make_instances(tmp_path / "in", 300)
    received = tmp_path / "received"
    received.mkdir()
    port = free_port()
    command = [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(received), str(port)]
    process = subprocess.Popen(
        command, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: _listening(port), timeout=20, what="storescp to listen")
        peer = Peer("STORESCP", "127.0.0.1", port)
        assert echo(peer, timeout_s=10) == 0x0000
        report = send(files, peer, timeout_s=10)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert (report.sent, report.failed) == (300, ())
    _same_datasets(files, sorted(received.iterdir()))
