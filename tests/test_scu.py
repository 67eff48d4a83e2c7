"""The C-STORE/C-ECHO SCU: addresses, the lost-response fix, and a 10,000-instance send.

pynetdicom 3.0.4's requestor can lose a C-STORE response to its own reactor thread (see
``node.scu``); ``test_a_widened_race_loses_pynetdicoms_response_and_none_of_ours`` makes the
race happen on every store (docs/upstream/pynetdicom_lost_response.py), and
``test_ten_thousand_instances_on_one_association`` sends at full speed. (Waiting for the race
to show by chance, as an earlier slow test did, proved nothing on a quiet machine.)
"""

from __future__ import annotations

import runpy
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import CTImageStorage

from node.pynetdicom_seam import FAST_PATH
from node.scu import Peer, _ReactorGate, associate, echo, send
from tests.conftest import REPO, free_port, wait_until
from tests.ingest_support import DCMTK_ENV, _listening, make_instances


@pytest.fixture
def dcmtk_scp(dcmtk, tmp_path: Path) -> Iterator[int]:
    """DCMTK storescp that answers every C-STORE with Success and keeps nothing."""
    port = free_port()
    process = subprocess.Popen(
        [dcmtk("storescp"), "--ignore", "-aet", "STORESCP", str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port), timeout=20, what="storescp to listen")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AINODE@127.0.0.1:11112", Peer("AINODE", "127.0.0.1", 11112)),
        ("PACS@pacs.example.org:104", Peer("PACS", "pacs.example.org", 104)),
        ("X@[::1]:4242", Peer("X", "::1", 4242)),
    ],
)
def test_peer_parses_aet_host_port(text: str, expected: Peer) -> None:
    assert Peer.parse(text) == expected
    assert Peer.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["AINODE@host", "127.0.0.1:104", "WAY_TOO_LONG_AE_TITLE@h:104", "A@h:0", "A@h:70000"]
)
def test_peer_rejects_malformed_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        Peer.parse(text)


class _FakeReactor(threading.Thread):
    """Runs the pynetdicom reactor's pause protocol against a gate."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._kill = False
        self.gate = _ReactorGate(self)  # type: ignore[arg-type]
        self.passes = 0

    def run(self) -> None:
        while not self._kill:
            self.gate.wait()
            self.passes += 1


def test_gate_clear_returns_only_once_the_reactor_is_parked() -> None:
    reactor = _FakeReactor()
    reactor.start()
    try:
        for _ in range(200):
            wait_until(lambda: reactor.passes, timeout=5, what="the reactor to run")
            reactor.passes = 0
            reactor.gate.clear()
            assert reactor.gate._parked, "clear() returned while the reactor could still run"
            reactor.gate.set()
    finally:
        reactor._kill = True
        reactor.gate.set()
        reactor.join(timeout=5)


def test_a_widened_race_loses_pynetdicoms_response_and_none_of_ours() -> None:
    """The race ``_ReactorGate`` closes, held open on every store: pynetdicom's own requestor
    loses the response, an association from ``associate`` none (all on the stock path)."""
    race = runpy.run_path(str(REPO / "docs" / "upstream" / "pynetdicom_lost_response.py"))
    lost = race["lost_responses"](race["stock_associate"], 1)
    assert lost == 1, "pynetdicom no longer loses it: is the fix released? then the gate can go"
    context = PresentationContext()
    context.abstract_syntax = CTImageStorage
    context.transfer_syntax = [ExplicitVRLittleEndian]

    def ours(port: int) -> Association:
        return associate(Peer("SCP", "127.0.0.1", port), [context], timeout_s=2)

    assert race["lost_responses"](ours, 3) == (0 if FAST_PATH else 3)


@pytest.mark.dcmtk
def test_echo_reports_success(dcmtk_scp: int) -> None:
    assert echo(Peer("STORESCP", "127.0.0.1", dcmtk_scp)) == 0x0000


@pytest.mark.dcmtk
def test_ten_thousand_instances_on_one_association(tmp_path: Path, dcmtk_scp: int) -> None:
    files = make_instances(tmp_path / "in", 10_000)
    progress: list[int] = []
    report = send(
        files,
        Peer("STORESCP", "127.0.0.1", dcmtk_scp),
        timeout_s=10,
        progress=lambda done, total: progress.append(done),
    )
    assert report.failed == ()
    assert report.sent == 10_000
    assert progress[-1] == 10_000 and progress == sorted(progress)
