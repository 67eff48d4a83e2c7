"""DICOM TLS (PS3.15 Annex B) with real peers: DCMTK's storescu/echoscu, Orthanc, our SCU.

A node listens plain and TLS side by side; the TLS port takes DCMTK with a certificate our
test CA signed, refuses one without (when client certificates are required), one signed by
a CA nobody trusts and a plain-text caller, and keeps serving after each. A caller pinned
to a certificate or a subject is refused with another certificate. Orthanc with
``DicomTlsEnabled`` receives results over TLS.
"""

from __future__ import annotations

import shutil
import sqlite3
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from node.config import ConfigError, load_node_config
from node.destination_settings import DicomDestination
from node.dispatch.outbox import OutboxRow, OutboxState
from node.dispatch.sender import transport_for
from node.scu import AssociationFailed, Peer, echo, send
from node.tls import TlsSettings
from tests.conftest import free_port, wait_until
from tests.ingest_support import DCMTK_ENV, RunningNode, make_instances, running_node
from tests.orthanc import OrthancServer, orthanc_available
from tests.tls_support import Pki, dcmtk_tls_args, make_pki, tls_section

pytestmark = pytest.mark.dcmtk


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def _dcmtk(tool: str, args: list[str], port: int, *, aet: str = "SCANNER", files=()) -> str:
    """Run a DCMTK tool against the node on ``port``; its output (stdout and stderr)."""
    result = subprocess.run(
        [tool, "-aet", aet, "-aec", "AINODE", *args, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
        check=False,
    )
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


def _stored(node: RunningNode) -> int:
    with sqlite3.connect(node.database) as conn:
        return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


def test_dcmtk_stores_over_tls_beside_the_plain_listener(tmp_path: Path, dcmtk, pki: Pki) -> None:
    tls_port = free_port()
    files = make_instances(tmp_path / "in", 3)
    with running_node(
        tmp_path / "node", listener={"tls_port": tls_port}, tls=tls_section(pki)
    ) as node:
        stored = _dcmtk(dcmtk("storescu"), dcmtk_tls_args(pki.client, pki), tls_port, files=files)
        assert "rc=0" in stored, stored
        assert _stored(node) == 3
        # the plain listener beside it still answers, and TLS echo too
        assert "rc=0" in _dcmtk(dcmtk("echoscu"), [], node.port)
        assert "rc=0" in _dcmtk(dcmtk("echoscu"), dcmtk_tls_args(None, pki), tls_port)


def test_callers_without_a_valid_certificate_are_refused_and_the_listener_goes_on(
    tmp_path: Path, dcmtk, pki: Pki
) -> None:
    tls_port = free_port()
    with running_node(
        tmp_path / "node",
        listener={"tls_port": tls_port, "require_client_certificate": True},
        tls=tls_section(pki),
    ) as node:
        echoscu = dcmtk("echoscu")
        anonymous = _dcmtk(echoscu, dcmtk_tls_args(None, pki), tls_port)
        assert "rc=0" not in anonymous, anonymous
        untrusted = _dcmtk(echoscu, dcmtk_tls_args(pki.untrusted_client, pki), tls_port)
        assert "rc=0" not in untrusted, untrusted
        plain_on_tls = _dcmtk(echoscu, ["-to", "5", "-ta", "5"], tls_port)
        assert "rc=0" not in plain_on_tls, plain_on_tls
        wait_until(lambda: "TLS handshake with 127.0.0.1:" in node.log(), 10, what="the log")
        assert node.process.poll() is None
        # after all that, a valid caller is served on both ports
        assert "rc=0" in _dcmtk(echoscu, dcmtk_tls_args(pki.client, pki), tls_port)
        assert "rc=0" in _dcmtk(echoscu, [], node.port)
        files = make_instances(tmp_path / "in", 1)
        stored = _dcmtk(dcmtk("storescu"), dcmtk_tls_args(pki.client, pki), tls_port, files=files)
        assert "rc=0" in stored, stored


def test_a_caller_pinned_to_a_certificate_or_subject_needs_exactly_that_one(
    tmp_path: Path, dcmtk, pki: Pki
) -> None:
    tls_port = free_port()
    callers = [
        {"ae_title": "PINNED", "certificate": str(pki.client.certificate)},
        {"ae_title": "BYNAME", "subject": pki.client_subject},
        {"ae_title": "PROBE"},
    ]
    with running_node(
        tmp_path / "node",
        listener={"tls_port": tls_port},
        access={"accept_any": False, "callers": callers},
        tls=tls_section(pki),
    ) as node:
        echoscu = dcmtk("echoscu")
        ok = dcmtk_tls_args(pki.client, pki)
        other = dcmtk_tls_args(pki.other_client, pki)
        assert "rc=0" in _dcmtk(echoscu, ok, tls_port, aet="PINNED")
        assert "rc=0" in _dcmtk(echoscu, ok, tls_port, aet="BYNAME")
        for aet in ("PINNED", "BYNAME"):
            refused = _dcmtk(echoscu, other, tls_port, aet=aet)
            assert "Calling AE Title Not Recognized" in refused, refused
            plain = _dcmtk(echoscu, [], node.port, aet=aet)
            assert "Calling AE Title Not Recognized" in plain, plain
        assert "presented a certificate other than its pinned one" in node.log()
        assert "is pinned to a TLS certificate and presented none" in node.log()


def test_our_scu_speaks_tls_and_checks_the_node_certificate(tmp_path: Path, pki: Pki) -> None:
    tls_port = free_port()
    files = make_instances(tmp_path / "in", 2)
    with running_node(
        tmp_path / "node", listener={"tls_port": tls_port}, tls=tls_section(pki)
    ) as node:
        settings = TlsSettings(
            certificate=pki.client.certificate, key=pki.client.key, ca_bundle=pki.ca
        )
        peer = Peer("AINODE", "127.0.0.1", tls_port)
        assert echo(peer, "SCANNER", 10, tls=settings.client_context()) == 0
        report = send(files, peer, "SCANNER", 10, tls=settings.client_context())
        assert report.ok and report.sent == 2
        assert _stored(node) == 2
        # a CA that did not sign the node's certificate: no association
        stranger = TlsSettings(ca_bundle=pki.untrusted_client.certificate)
        with pytest.raises(AssociationFailed, match="over TLS"):
            echo(peer, "SCANNER", 10, tls=stranger.client_context())
        # the same port does not speak plain DICOM
        with pytest.raises(AssociationFailed):
            echo(peer, "SCANNER", 5)
        assert node.process.poll() is None


@pytest.mark.orthanc
def test_orthanc_receives_results_over_tls(tmp_path: Path, pki: Pki) -> None:
    if not orthanc_available():
        pytest.skip("Orthanc not installed")
    orthanc = OrthancServer(
        tmp_path / "orthanc",
        extra_config={
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki.server.certificate),
            "DicomTlsPrivateKey": str(pki.server.key),
            "DicomTlsTrustedCertificates": str(pki.ca),
            "DicomTlsRemoteCertificateRequired": True,
        },
    )
    orthanc.start()
    try:
        files = make_instances(tmp_path / "results", 2, study_uid="1.2.826.0.1.3680043.8.498.7")
        rows = [_row(number, path) for number, path in enumerate(files, 1)]
        destination = DicomDestination(
            ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port, tls=True
        )
        transport = transport_for(destination, "AINODE", TlsSettings(**tls_section(pki)))
        outcome = transport.deliver(rows)
        assert outcome == {1: None, 2: None}
        assert len(orthanc.instances_in_study("1.2.826.0.1.3680043.8.498.7")) == 2
        # Orthanc requires our certificate: without one it refuses, and says so
        bare = transport_for(destination, "AINODE", TlsSettings(ca_bundle=pki.ca))
        refused = bare.deliver(rows)
        assert all(reason and "over TLS" in reason for reason in refused.values()), refused
    finally:
        orthanc.stop()


def _row(number: int, path: Path) -> OutboxRow:
    from pydicom import dcmread

    header = dcmread(path, stop_before_pixels=True)
    return OutboxRow(
        id=number,
        sop_instance_uid=str(header.SOPInstanceUID),
        sop_class_uid=str(header.SOPClassUID),
        kind="sc",
        path=path,
        destination="pacs",
        state=OutboxState.PENDING,
        attempts=0,
        next_attempt_at=0,
        last_error=None,
        sent_at=None,
        job_id=1,
    )


def _config(tmp_path: Path, pki: Pki, **tls: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listener": {"tls_port": 2762},
                "storage": {"data_dir": str(tmp_path / "data")},
                "tls": {**tls_section(pki), **tls},
            }
        )
    )
    return path


def test_tls_settings_are_checked_when_node_yaml_loads(tmp_path: Path, pki: Pki) -> None:
    mismatched = _config(tmp_path, pki, key=str(pki.client.key))
    with pytest.raises(ConfigError, match="belong together"):
        load_node_config(mismatched)
    inline = _config(tmp_path, pki, key_password="secret")
    with pytest.raises(ConfigError, match="key_password_file"):
        load_node_config(inline)
    no_identity = tmp_path / "bare.yaml"
    no_identity.write_text(yaml.safe_dump({"listener": {"tls_port": 2762}}))
    with pytest.raises(ConfigError, match=r"tls_port needs tls\.certificate"):
        load_node_config(no_identity)
    encrypted = _config(
        tmp_path,
        pki,
        key=str(pki.encrypted_server_key),
        key_password_file=str(pki.key_password_file),
    )
    config = load_node_config(encrypted)
    assert config.tls.server_context(False).minimum_version is ssl.TLSVersion.TLSv1_2
    wrong_password = tmp_path / "wrong.password"
    wrong_password.write_text("nope\n")
    with pytest.raises(ConfigError, match="password"):
        load_node_config(
            _config(
                tmp_path,
                pki,
                key=str(pki.encrypted_server_key),
                key_password_file=str(wrong_password),
            )
        )


def test_a_destination_with_tls_true_gets_a_tls_transport_from_node_yaml(
    tmp_path: Path, pki: Pki
) -> None:
    from node.dispatch.dispatcher import Dispatcher

    path = tmp_path / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "tls": tls_section(pki),
                "destinations": {
                    "pacs": {
                        "kind": "dicom",
                        "ae_title": "PACS",
                        "host": "127.0.0.1",
                        "port": 2762,
                        "tls": True,
                    },
                    "plain": {"kind": "dicom", "ae_title": "OLD", "host": "127.0.0.1", "port": 104},
                },
            }
        )
    )
    senders = Dispatcher(load_node_config(path)).senders
    tls = senders["pacs"].transport.tls  # type: ignore[attr-defined]
    assert isinstance(tls, ssl.SSLContext) and tls.check_hostname
    assert tls.minimum_version is ssl.TLSVersion.TLSv1_2
    assert senders["plain"].transport.tls is None  # type: ignore[attr-defined]
