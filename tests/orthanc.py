"""A real Orthanc PACS for tests: its own temp folder, loopback ports, stopped by PID.

``OrthancServer`` writes a JSON config into a temp dir, starts ``/usr/sbin/Orthanc`` with
it, waits (with a deadline) until the REST API answers, and can be stopped and started again
on the same ports and storage (the outage tests need a PACS that goes away and comes back).
The node under test is registered as a DICOM modality, so Orthanc can C-STORE to it.

A test module makes its fixture with ``orthanc_servers``::

    @pytest.fixture
    def orthanc_factory(tmp_path):
        yield from orthanc_servers(tmp_path)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import poll_until

ORTHANC_BINARY = Path(os.environ.get("AINODE_ORTHANC", "/usr/sbin/Orthanc"))
ORTHANC_AE = "ORTHANC"
DICOMWEB_PLUGIN = Path(
    os.environ.get("AINODE_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
)
DICOMWEB_ROOT = "/dicom-web"
DICOMWEB_CONFIG = {"DicomWeb": {"Enable": True, "Root": f"{DICOMWEB_ROOT}/"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Modality:
    """A DICOM peer Orthanc knows by name (the node under test)."""

    name: str
    ae_title: str
    host: str
    port: int


class OrthancError(RuntimeError):
    """Orthanc did not start, or its REST API answered with an error."""


class OrthancServer:
    """One Orthanc process with its own storage, HTTP port and DICOM port."""

    def __init__(
        self,
        workdir: Path,
        modalities: tuple[Modality, ...] = (),
        plugins: tuple[Path, ...] = (),
        extra_config: dict | None = None,
    ) -> None:
        """``plugins`` are shared libraries Orthanc loads (its ``Plugins`` list);
        ``extra_config`` adds top-level sections (e.g. ``DicomWeb``)."""
        self.workdir = Path(workdir)
        self.plugins = plugins
        self.extra_config = extra_config or {}
        self.http_port = _free_port()
        self.dicom_port = _free_port()
        self.ae_title = ORTHANC_AE
        self.modalities = modalities
        self.process: subprocess.Popen[bytes] | None = None
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"

    # -- life cycle --------------------------------------------------------------------------
    def write_config(self) -> None:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "ainode-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [str(plugin) for plugin in self.plugins],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 30,
            "TcpNoDelay": True,
            "OverwriteInstances": True,  # a re-sent UID replaces: counts stay exact
            "StableAge": 1,
            "SaveJobs": False,
            "DicomModalities": {
                m.name: {"AET": m.ae_title, "Host": m.host, "Port": m.port} for m in self.modalities
            },
            **self.extra_config,
        }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self.write_config()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it until it exits
        try:
            self.process = subprocess.Popen(
                [str(ORTHANC_BINARY), str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        finally:
            log.close()
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with {process.returncode}; log: {self._log_tail()}"
                )
            return self._answers() and self._dicom_listening()

        if poll_until(ready, timeout, interval=0.1):
            return
        self.stop()
        raise OrthancError(f"Orthanc not ready after {timeout:.0f}s; log: {self._log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process we started, by its PID: SIGTERM, then SIGKILL at the deadline."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _answers(self) -> bool:
        try:
            self.get("/system")
        except (OSError, OrthancError):
            return False
        return True

    def _dicom_listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    # -- REST ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60):
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/octet-stream")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OrthancError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        content = data.decode(errors="replace")
        try:
            return json.loads(content) if content else None
        except json.JSONDecodeError:
            return data

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, body: object):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.request("POST", path, data)

    def upload(self, path: Path) -> dict:
        """Store one Part-10 file over REST; returns Orthanc's answer (ID, ParentStudy, ...)."""
        return self.post("/instances", Path(path).read_bytes())

    def store_to(self, modality: str, resources: list[str], timeout: float = 300) -> dict:
        """Ask Orthanc to C-STORE resources (Orthanc IDs) to a registered modality (synchronous)."""
        body = json.dumps({"Resources": resources, "Synchronous": True, "Timeout": 0}).encode()
        return self.request("POST", f"/modalities/{modality}/store", body, timeout=timeout)

    @property
    def stow_url(self) -> str:
        """The STOW-RS endpoint, when started with the DICOMweb plugin."""
        return f"{self.url}{DICOMWEB_ROOT}/studies"

    def instances_in_study(self, study_instance_uid: str) -> list[dict]:
        """Every instance of the study (Orthanc's expanded form, MainDicomTags included)."""
        return self.post(
            "/tools/find",
            {
                "Level": "Instance",
                "Query": {"StudyInstanceUID": study_instance_uid},
                "Expand": True,
            },
        )

    def series_in_study(self, study_instance_uid: str) -> list[dict]:
        return self.post(
            "/tools/find",
            {"Level": "Series", "Query": {"StudyInstanceUID": study_instance_uid}, "Expand": True},
        )

    def instance_uids(self, study_instance_uid: str) -> list[str]:
        return [
            item["MainDicomTags"]["SOPInstanceUID"]
            for item in self.instances_in_study(study_instance_uid)
        ]

    def download(self, orthanc_id: str, target: Path) -> Path:
        data = self.request("GET", f"/instances/{orthanc_id}/file")
        Path(target).write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())
        return Path(target)

    def statistics(self) -> dict:
        return self.get("/statistics")


def orthanc_available() -> bool:
    return ORTHANC_BINARY.exists() and os.access(ORTHANC_BINARY, os.X_OK)


def orthanc_servers(tmp_path: Path) -> Iterator:
    """Body of an ``orthanc_factory`` fixture: yields a function that starts Orthanc servers
    (skipping the test when Orthanc, or with ``dicomweb`` its DICOMweb plugin, is absent) and
    stops them all afterwards."""
    if not orthanc_available():
        pytest.skip(f"Orthanc not found at {ORTHANC_BINARY}: apt-get install orthanc")
    servers: list[OrthancServer] = []

    def make(modalities: tuple[Modality, ...] = (), dicomweb: bool = False) -> OrthancServer:
        if dicomweb and not DICOMWEB_PLUGIN.exists():
            pytest.skip(f"{DICOMWEB_PLUGIN} not found: apt-get install orthanc-dicomweb")
        server = OrthancServer(
            tmp_path / f"orthanc{len(servers)}",
            modalities,
            plugins=(DICOMWEB_PLUGIN,) if dicomweb else (),
            extra_config=DICOMWEB_CONFIG if dicomweb else None,
        )
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
