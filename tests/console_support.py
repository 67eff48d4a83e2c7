"""A console test's node: users made before it starts, a bearer-token HTTP client, a study.

``start_console_node`` writes ``<data>/console/users.yaml`` first (an admin user with a
password, an admin token and a viewer token), so the node makes no admin token of its own.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pydicom
from conftest import free_port, wait_until
from ingest_support import RunningNode, make_instances, start_node

from node.console.credentials import add_entry, hash_password, hash_token
from node.scu import Peer, send

ADMIN_TOKEN = "admin-token-for-the-api-tests"
VIEWER_TOKEN = "viewer-token-for-the-api-tests"
PASSWORD = "a long test password"

#: a python plugin that writes a one-line report; ``fails``: until a ``healed`` file is beside it
PLUGIN = """
from pathlib import Path

from models.api import AlgorithmIdentification, Findings, Report
from models.errors import PermanentPluginError


class Plugin:
    def __init__(self, manifest):
        self.name, self.version = manifest.name, manifest.version

    def load(self, device):
        pass

    def run(self, series):
        if {fails} and not (Path(__file__).parent / "healed").exists():
            raise PermanentPluginError("broken on purpose until healed")
        return Findings(
            algorithm=AlgorithmIdentification(self.name, self.version),
            report=Report(findings="Nothing measured.", impression="A test report."),
        )
"""


@dataclass
class Api:
    """A running node's HTTP side (bearer token unless told otherwise) and a study sent to it."""

    port: int
    folder: Path
    database: Path
    study: str
    node: RunningNode

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        token: str | None = ADMIN_TOKEN,
        headers: dict | None = None,
    ) -> tuple[int, object]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            text = error.read().decode()
            return error.code, json.loads(text) if text.startswith("{") else text

    def get(self, path: str, **options) -> object:
        status, answer = self.call("GET", path, **options)
        assert status == 200, (path, status, answer)
        return answer


def write_plugin(plugins: Path, name: str, fails: bool = False) -> None:
    """A python plugin for CT that returns a report (see ``PLUGIN``)."""
    folder = plugins / name
    folder.mkdir(parents=True)
    (folder / "plugin.yaml").write_text(
        f"name: {name}\nversion: 1.0.0\nrunner: python\nentry: plugin:Plugin\n"
        "input: {modalities: [CT]}\n"
    )
    (folder / "plugin.py").write_text(textwrap.dedent(PLUGIN.format(name=name, fails=fails)))


def write_users(data: Path) -> None:
    """Users made before the first start, so the node makes no admin token of its own."""
    users = data / "console" / "users.yaml"
    users.parent.mkdir(parents=True)
    add_entry(
        users, "users", {"name": "alice", "role": "admin", "password": hash_password(PASSWORD)}
    )
    for name, role, token in (("admin", "admin", ADMIN_TOKEN), ("mon", "viewer", VIEWER_TOKEN)):
        add_entry(users, "tokens", {"name": name, "role": role, "sha256": hash_token(token)})


def start_console_node(folder: Path, **sections: object) -> tuple[RunningNode, int]:
    """``ainode serve`` with the console on a free port, answering HTTP."""
    http_port = free_port()
    write_users(folder / "node" / "data")
    http = {"port": http_port, **sections.pop("http", {})}
    node = start_node(folder / "node", http=http, **sections)
    probe = Api(http_port, folder, node.data_dir / "ainode.sqlite3", "", node)
    wait_until(lambda: probe.call("GET", "/api/me")[0] == 200, timeout=30, what="the console")
    return node, http_port


def send_study(folder: Path, node: RunningNode) -> str:
    """Three CT instances of a new chest study, sent with C-STORE; returns its UID."""
    paths = make_instances(folder, 3)
    report = send(paths, Peer("AINODE", "127.0.0.1", node.port), calling_ae="MODALITY")
    assert report.ok, report
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def query(database: Path, sql: str, *params: object) -> list[sqlite3.Row]:
    """Rows read straight from the node's database (the schema may not be there yet: none)."""
    conn = sqlite3.connect(database, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
