"""Audit messages reach a real syslog collector (rsyslogd) over UDP, TCP and TLS."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.audit.events import AssociationRefused, Party
from node.audit.messages import AuditSource
from node.audit.settings import CollectorSettings, SyslogTransport
from node.audit.syslog import MSGID, SyslogForwarder
from node.audit.trail import AuditTrail
from tests.audit_support import check_message, rsyslog_collector
from tests.conftest import wait_until
from tests.tls_support import make_pki

pytestmark = pytest.mark.syslog

SOURCE = AuditSource(ae_title="AINODE", source_id="AINODE")


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory, rsyslogd: str):
    folder = tmp_path_factory.mktemp("rsyslog")
    pki = make_pki(folder / "pki")
    with rsyslog_collector(folder, rsyslogd, pki) as running:
        yield running, pki


@pytest.mark.parametrize("transport", list(SyslogTransport))
def test_messages_arrive_at_rsyslog(collector, transport: SyslogTransport, tmp_path: Path) -> None:
    running, pki = collector
    port = {
        SyslogTransport.UDP: running.udp_port,
        SyslogTransport.TCP: running.tcp_port,
        SyslogTransport.TLS: running.tls_port,
    }[transport]
    settings = CollectorSettings(
        host="127.0.0.1",
        port=port,
        transport=transport,
        ca_file=pki.ca if transport == SyslogTransport.TLS else None,
    )
    trail = AuditTrail(tmp_path / "audit.log", SOURCE, SyslogForwarder(settings), "ainode-test")
    marker = f"caller-{transport.value}"
    for number in range(3):
        trail.record(
            AssociationRefused(
                calling=Party(f"{marker}-{number}", "127.0.0.1"), called_ae="AINODE", reason="x"
            )
        )

    def arrived() -> list[str]:
        return [line for line in running.messages() if marker in line]

    lines = wait_until(lambda: len(arrived()) == 3 and arrived(), timeout=10, what="3 messages")
    trail.close()
    for line in lines:
        msgid, app_name, xml = line.split(" ", 2)
        assert (msgid, app_name) == (MSGID, "ainode-test")
        check_message(xml.removeprefix("\ufeff"))
