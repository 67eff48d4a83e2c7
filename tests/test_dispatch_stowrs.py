"""STOW-RS destinations: SEG and SR reach a real Orthanc (DICOMweb plugin) exactly once, an
outage is waited out, and against a recording server the bearer token, the size cap, a 202
partial answer and an error status are each handled as the standard says."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pytest
import yaml
from conftest import wait_until
from orthanc import orthanc_servers
from outputs_support import built_by_kind, synthetic_ct
from pipeline_rows import add_result, secondary_capture, seed_job
from pydicom import dcmread
from pydicom.uid import generate_uid

from node.config import ConfigError, NodeConfig, load_node_config
from node.db import connect
from node.dispatch.dispatcher import DestinationSender, Dispatcher
from node.dispatch.outbox import OutboxRow, OutboxState, enqueue, list_rows
from node.dispatch.sender import transport_for
from node.dispatch.stowrs import stow_outcome
from node.shared_types import OutputKind, RetryPolicy


class Recorder:
    """A DICOMweb server stand-in on a loopback port: parses each multipart request as a MIME
    reader would, records headers and instances, and answers STOW-RS JSON (202 with a
    FailedSOPSequence for the UIDs in ``fail``) or, with ``status``, that error."""

    def __init__(self, cert: tuple[Path, Path] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], list[str]]] = []
        self.fail: dict[str, int] = {}
        self.status: int | None = None
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
                message = BytesParser().parsebytes(head + body)
                uids = [
                    str(dcmread(BytesIO(part.get_payload(decode=True))).SOPInstanceUID)
                    for part in message.get_payload()
                ]
                recorder.requests.append((dict(self.headers), uids))
                status, answer = recorder.answer(uids)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if cert is not None:  # (certificate, key): serve https
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*cert)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/dicom-web/studies"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, uids: list[str]) -> tuple[int, dict]:
        if self.status is not None:
            return self.status, {"Message": "store is read-only"}

        def sequence(items: list[dict]) -> dict:
            return {"vr": "SQ", "Value": items}

        def ref(uid: str) -> dict:
            return {"00081155": {"vr": "UI", "Value": [uid]}}

        stored = [ref(uid) for uid in uids if uid not in self.fail]
        failed = [
            {**ref(uid), "00081197": {"vr": "US", "Value": [self.fail[uid]]}}
            for uid in uids
            if uid in self.fail
        ]
        answer = {"00081199": sequence(stored)}
        if failed:
            answer["00081198"] = sequence(failed)
        return (202 if failed else 200), answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.close()


@pytest.fixture
def tls_recorder(tmp_path):
    """A recorder serving https with a self-signed certificate for 127.0.0.1 (its own CA)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found: apt-get install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", key, "-out", cert, "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    server = Recorder((cert, key))
    server.cert = cert
    yield server
    server.close()


@pytest.fixture
def orthanc_factory(tmp_path):
    yield from orthanc_servers(tmp_path)


def stowrs_config(tmp_path, url: str, **fields: object) -> NodeConfig:
    return NodeConfig.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "destinations": {"pacs": {"kind": "stowrs", "url": url, "timeout_s": 10, **fields}},
            "dispatch": {"backoff_s": 0.2, "backoff_max_s": 1, "max_attempts": 1000},
        }
    )


def owe_secondary_captures(conn, config: NodeConfig, count: int) -> list[str]:
    study, series = generate_uid(), generate_uid()
    job_id = seed_job(conn, study, series)
    datasets = [secondary_capture(study, series, seed) for seed in range(count)]
    for ds in datasets:
        add_result(conn, config.storage.outputs_dir, job_id, ds, ("pacs",), kind="sc")
    return [ds.SOPInstanceUID for ds in datasets]


def sender_for(config: NodeConfig) -> DestinationSender:
    return DestinationSender(
        "pacs",
        transport_for(config.destinations["pacs"], "AINODE"),
        config.storage.database_path,
        config.storage.outputs_dir,
        RetryPolicy(max_attempts=5, backoff_s=0, backoff_max_s=0),
    )


def states(conn, config: NodeConfig) -> set[OutboxState]:
    return {row.state for row in list_rows(conn, config.storage.outputs_dir)}


@pytest.mark.orthanc
def test_seg_and_sr_reach_orthanc_exactly_once_after_an_outage(tmp_path, orthanc_factory):
    pacs = orthanc_factory(dicomweb=True)
    config = stowrs_config(tmp_path, pacs.stow_url)
    conn = connect(config.storage.database_path)
    _, source = synthetic_ct(tmp_path / "ct")
    _, by_kind = built_by_kind(source)
    results = [r for kind in (OutputKind.SEG, OutputKind.SR) for r in by_kind[kind]]
    study = str(results[0].dataset.StudyInstanceUID)
    dispatcher = Dispatcher(config)
    dispatcher.start()
    try:
        pacs.stop()
        job_id = seed_job(conn, study, generate_uid())
        for result in results:
            add_result(conn, config.storage.outputs_dir, job_id, result.dataset, ("pacs",))
        dispatcher.wake()
        rows = wait_until(
            lambda: [r for r in list_rows(conn, config.storage.outputs_dir) if r.attempts >= 2],
            what="failed attempts while Orthanc is down",
        )
        assert states(conn, config) == {OutboxState.PENDING}
        assert "ConnectionRefusedError" in rows[0].last_error

        pacs.start()
        wait_until(lambda: states(conn, config) == {OutboxState.SENT}, what="delivery")
        expected = sorted(r.sop_instance_uid for r in results)
        assert sorted(pacs.instance_uids(study)) == expected

        for result in results:  # a re-run job owes the same UIDs: Orthanc replaces them
            enqueue(conn, result.sop_instance_uid, "pacs", 0)
        dispatcher.wake()
        wait_until(lambda: states(conn, config) == {OutboxState.SENT}, what="re-delivery")
        assert sorted(pacs.instance_uids(study)) == expected
        assert pacs.statistics()["CountInstances"] == len(expected)
    finally:
        dispatcher.stop()
        conn.close()


@pytest.mark.parametrize("source", ["token_file", "token_env", None])
def test_bearer_token_is_read_at_send_time(tmp_path, recorder, monkeypatch, source):
    fields: dict[str, object] = {}
    if source == "token_file":
        (tmp_path / "token").write_text("  s3cret-file\n")
        fields["token_file"] = str(tmp_path / "token")
    elif source == "token_env":
        monkeypatch.setenv("AINODE_TEST_STOW_TOKEN", "s3cret-env")
        fields["token_env"] = "AINODE_TEST_STOW_TOKEN"
    config = stowrs_config(tmp_path, recorder.url, **fields)
    conn = connect(config.storage.database_path)
    uids = owe_secondary_captures(conn, config, 2)
    assert sender_for(config).send_due(conn)
    assert states(conn, config) == {OutboxState.SENT}
    [(headers, received)] = recorder.requests
    assert sorted(received) == sorted(uids)
    assert headers["Accept"] == "application/dicom+json"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    expected = {"token_file": "Bearer s3cret-file", "token_env": "Bearer s3cret-env"}
    assert headers.get("Authorization") == expected.get(source)
    conn.close()


@pytest.mark.parametrize("trust", ["ca_file", "system", "unverified"])
def test_https_checks_the_certificate_unless_told_not_to(tmp_path, tls_recorder, trust):
    fields = {"ca_file": str(tls_recorder.cert)} if trust == "ca_file" else {}
    config = stowrs_config(tmp_path, tls_recorder.url, verify_tls=trust != "unverified", **fields)
    conn = connect(config.storage.database_path)
    owe_secondary_captures(conn, config, 1)
    sender_for(config).send_due(conn)
    [row] = list_rows(conn, config.storage.outputs_dir)
    if trust == "system":  # self-signed: no system CA vouches for it
        assert row.state is OutboxState.PENDING
        assert "CERTIFICATE_VERIFY_FAILED" in row.last_error
    else:
        assert row.state is OutboxState.SENT
    conn.close()


def test_a_missing_token_fails_the_rows_without_sending(tmp_path, recorder):
    config = stowrs_config(tmp_path, recorder.url, token_env="AINODE_TEST_UNSET_TOKEN")
    conn = connect(config.storage.database_path)
    owe_secondary_captures(conn, config, 1)
    sender_for(config).send_due(conn)
    [row] = list_rows(conn, config.storage.outputs_dir)
    assert row.state is OutboxState.PENDING
    assert row.last_error == "environment variable AINODE_TEST_UNSET_TOKEN is unset or empty"
    assert recorder.requests == []
    conn.close()


def test_batches_stay_under_the_size_cap(tmp_path, recorder):
    config = stowrs_config(tmp_path, recorder.url, max_batch_mb=0.004)  # one 2 KiB SC fits
    conn = connect(config.storage.database_path)
    uids = owe_secondary_captures(conn, config, 3)
    sender_for(config).send_due(conn)
    assert states(conn, config) == {OutboxState.SENT}
    assert [received for _, received in recorder.requests] == [[uid] for uid in uids]
    conn.close()


def test_a_partial_answer_fails_only_the_refused_instance(tmp_path, recorder):
    config = stowrs_config(tmp_path, recorder.url)
    conn = connect(config.storage.database_path)
    uids = owe_secondary_captures(conn, config, 3)
    recorder.fail = {uids[1]: 0xC122}
    sender_for(config).send_due(conn)
    by_uid = {r.sop_instance_uid: r for r in list_rows(conn, config.storage.outputs_dir)}
    assert by_uid[uids[1]].state is OutboxState.PENDING
    assert by_uid[uids[1]].last_error == "STOW-RS failure reason 0xC122"
    assert {by_uid[uid].state for uid in (uids[0], uids[2])} == {OutboxState.SENT}
    conn.close()


def test_an_error_status_fails_every_row_with_the_status(tmp_path, recorder):
    config = stowrs_config(tmp_path, recorder.url)
    conn = connect(config.storage.database_path)
    owe_secondary_captures(conn, config, 2)
    recorder.status = 503
    sender_for(config).send_due(conn)
    errors = {r.last_error for r in list_rows(conn, config.storage.outputs_dir)}
    assert errors == {'STOW-RS answered HTTP 503: {"Message": "store is read-only"}'}
    conn.close()


def test_a_conflict_names_each_failure(tmp_path):
    rows = [_row(1, "1.2.3"), _row(2, "1.2.4")]
    answer = {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]}}
    outcome = stow_outcome(409, json.dumps(answer).encode(), rows)
    assert outcome == {
        1: "STOW-RS failed this instance without a reason",
        2: "STOW-RS answered HTTP 409 without storing this instance",
    }
    assert stow_outcome(200, b"not json", rows) == {1: None, 2: None}


def _row(row_id: int, uid: str) -> OutboxRow:
    return OutboxRow(
        id=row_id,
        sop_instance_uid=uid,
        sop_class_uid="",
        kind="sr",
        path=Path(f"{uid}.dcm"),
        destination="pacs",
        state=OutboxState.PENDING,
        attempts=0,
        next_attempt_at=0,
        last_error=None,
        sent_at=None,
        job_id=1,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"token": "s3cret"}, "put it in a file named by token_file or in an environment"),
        (
            {"token_file": "token", "token_env": "STOW_TOKEN"},
            "give token_file or token_env, not both",
        ),
        ({"url": "ftp://pacs/studies"}, "must start with http:// or https://"),
        ({"ca_file": "ca.pem"}, "ca_file is for an https:// url"),
    ],
)
def test_node_yaml_refuses_a_stowrs_destination_that_cannot_work(tmp_path, fields, message):
    destination = {"kind": "stowrs", "url": "http://pacs:8042/dicom-web/studies", **fields}
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"destinations": {"pacs": destination}}))
    with pytest.raises(ConfigError) as refused:
        load_node_config(path)
    assert "destinations.pacs.stowrs" in str(refused.value)
    assert message in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_token_file_and_ca_file_are_relative_to_node_yaml(tmp_path):
    destination = {
        "kind": "stowrs",
        "url": "https://pacs/dicom-web/studies",
        "token_file": "secrets/stow-token",
        "ca_file": "ca.pem",
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"destinations": {"pacs": destination}}))
    loaded = load_node_config(path).destinations["pacs"]
    assert loaded.token_file == tmp_path / "secrets" / "stow-token"
    assert loaded.ca_file == tmp_path / "ca.pem"
