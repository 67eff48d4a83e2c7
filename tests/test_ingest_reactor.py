"""The receive path serves C-STORE and C-ECHO on the DUL thread, without hand-offs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pynetdicom.dul import DULServiceProvider

from node.config import load_node_config
from node.ingest.index import Index
from node.ingest.scp import StorageSCP
from node.ingest.spool import Spool
from node.scu import Peer, echo, send
from tests.conftest import free_port
from tests.ingest_support import make_instances, write_config


class _ThreadRecordingSCP(StorageSCP):
    """The node's SCP, noting which thread ran each handler."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.threads: list[threading.Thread] = []

    def store(self, assoc, request):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread())
        return super().store(assoc, request)

    def _on_echo(self, event):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread())
        return super()._on_echo(event)


@pytest.fixture
def scp(tmp_path: Path) -> _ThreadRecordingSCP:
    config = load_node_config(write_config(tmp_path, free_port()))
    spool = Spool(config.storage.spool_dir, 0)
    index = Index(config.storage.database_path)
    server = _ThreadRecordingSCP(config, spool, index)
    server.start()
    yield server
    server.stop()
    index.close()


def test_stores_and_echoes_are_served_on_the_thread_that_read_them(
    scp: _ThreadRecordingSCP, tmp_path: Path
) -> None:
    host, port = scp.address
    peer = Peer("AINODE", host, port)
    report = send(make_instances(tmp_path / "in", 5), peer, "SENDER", timeout_s=10)
    assert report.sent == 5 and report.failed == ()
    assert echo(peer, "SENDER", timeout_s=10) == 0x0000
    assert len(scp.threads) == 6
    assert all(isinstance(thread, DULServiceProvider) for thread in scp.threads)
    assert len(set(scp.threads)) == 2  # one DUL thread per association
