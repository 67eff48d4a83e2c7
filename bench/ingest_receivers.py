"""The receivers ``bench/ingest.py`` compares: DCMTK storescp, ainode in each storage mode,
and Orthanc keeping what it acknowledges (``SyncStorageArea: true``), each on its own port.

Not a test. ainode runs under ``bench/ingest_node.py`` (phase timers); with the journal its
mover files instances after the Success, so ``Server.wait_filed`` lets the bench wait for
it between rounds (and say how long) instead of measuring the next receiver against it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from tls_support import Pki, dcmtk_tls_args, tls_section  # noqa: E402

# DCMTK 3.6.7 leaves Nagle on unless told; every receiver gets the same senders.
ENV = dict(os.environ, TCP_NODELAY="1")
ORTHANC = Path("/usr/sbin/Orthanc")


def dcmtk(name: str) -> str:
    path = Path("/usr/bin") / name
    if not path.exists():
        sys.exit(f"DCMTK {name} not found in /usr/bin: apt-get install dcmtk")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    ae_title: str
    process: subprocess.Popen[bytes]
    store_dir: Path
    stats_path: Path | None = None  # phase timers of an instrumented ainode
    sender_args: tuple[str, ...] = ()  # storescu's TLS options for this receiver
    plain_name: str | None = None  # the plain receiver this TLS one is compared with
    database: Path | None = None  # ainode's index: the bench waits for its mover
    emptied: bool = False  # the bench empties its store folder after every round (DCMTK)

    def take_stats(self) -> dict[str, dict[str, float]] | None:
        """Phase seconds since the last call (``bench/ingest_node.py`` writes them on SIGUSR1)."""
        if self.stats_path is None:
            return None
        self.stats_path.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.stats_path.exists():
            if time.monotonic() > deadline:
                sys.exit(f"{self.name} wrote no phase timers")
            time.sleep(0.01)
        return json.loads(self.stats_path.read_text())

    def wait_filed(self, expected: int, timeout: float = 300) -> float:
        """Seconds until ainode's index holds ``expected`` instances (0 for other receivers,
        and at once for ainode without the journal, which indexes before the Success)."""
        if self.database is None:
            return 0.0
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while True:
            conn = sqlite3.connect(self.database, timeout=30)
            try:
                count = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            finally:
                conn.close()
            if count >= expected:
                return time.perf_counter() - started
            if time.monotonic() > deadline:
                sys.exit(f"{self.name} indexed {count} of {expected} instances")
            time.sleep(0.01)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server on port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)  # let the probe's association go before measuring
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on {port} after 30 s")


def start_dcmtk(work: Path, pki: Pki | None = None) -> Server:
    port = free_port()
    name = "DCMTK storescp +B" + (" TLS" if pki else "")
    out = work / ("storescp-tls" if pki else "storescp")
    out.mkdir()
    tls = dcmtk_tls_args(pki.server, pki) if pki else []
    process = subprocess.Popen(
        [dcmtk("storescp"), "+B", "--fork", *tls, "-aet", "STORESCP", "-od", str(out), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port, process)
    sender = tuple(dcmtk_tls_args(pki.client, pki)) if pki else ()
    plain = "DCMTK storescp +B" if pki else None
    return Server(name, port, "STORESCP", process, out, None, sender, plain, emptied=True)


def start_orthanc(work: Path, *, sync: bool = True) -> Server:
    """Debian's Orthanc with its SQLite index and file storage in the work folder;
    ``SyncStorageArea: true`` fsyncs each file before the Success, as ainode does."""
    if not ORTHANC.exists():
        sys.exit(f"{ORTHANC} not found: apt-get install orthanc")
    name = "Orthanc sync" if sync else "Orthanc nosync"
    folder = work / name.replace(" ", "-")
    storage = folder / "storage"
    storage.mkdir(parents=True)
    port = free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpServerEnabled": True,
        "HttpPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "OrthancExplorerEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "TcpNoDelay": True,
        "SyncStorageArea": sync,
        "StorageCompression": False,
        "SaveJobs": False,
        "Plugins": [],
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(  # DCMTK inside Orthanc reads TCP_NODELAY from ENV as well
        [str(ORTHANC), str(path)],
        cwd=folder,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port, process)
    return Server(name, port, "ORTHANC", process, storage)


def start_ainode(
    work: Path,
    *,
    durable: bool = True,
    durability: str = "fsync",
    journal: bool = False,
    repo: Path = REPO,
    name: str | None = None,
    pki: Pki | None = None,
    processes: int = 1,
) -> Server:
    """``ainode serve`` under ``bench/ingest_node.py`` (this checkout's, or ``repo``'s); with
    ``pki``, a TLS listener only. ``durable=False``: the bench-only no-fsync wrapper.
    ``processes``: ``listener.processes`` (with ``journal``)."""
    port = free_port()
    kind = "receivers" if processes > 1 else "journal" if journal else "files"
    default = f"ainode {kind} {durability}"
    name = name or (default if durable else "ainode-nofsync")
    data = work / name.replace(" ", "-")
    storage: dict[str, object] = {"data_dir": str(data), "min_free_mb": 64}
    if (repo / "node" / "ingest" / "mover.py").exists():  # older trees know neither setting
        storage |= {"durability": durability, "journal": journal}
    config = {
        "listener": {
            "ae_title": "AINODE",
            "host": "127.0.0.1",
            "port": port,
            "max_associations": 16,
            "max_pdu": 0,
            **({"processes": processes} if processes > 1 else {}),
        },
        "access": {"accept_any": True},
        "storage": storage,
        "stability": {"stable_after_s": 3600, "after_release_s": None},
    }
    if pki is not None:
        config["listener"] |= {"plain": False, "tls_port": port, "port": free_port()}
        config["tls"] = tls_section(pki)
    path = work / f"{name.replace(' ', '-')}.yaml"
    path.write_text(yaml.safe_dump(config))
    stats = work / f"{name.replace(' ', '-')}-stats.json"
    # The wrapper is always this checkout's: an older ``repo`` may not have one.
    command = [sys.executable, str(REPO / "bench" / "ingest_node.py"), "--config", str(path)]
    command += ["--stats", str(stats), "--repo", str(repo)]
    command += [] if durable else ["--no-durability"]
    command += ["--log-level", "INFO"] if processes > 1 else []  # "... listening" below
    log = work / f"{name.replace(' ', '-')}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=log_file)
    wait_listening(port, process)
    deadline = time.monotonic() + 60
    while processes > 1 and "receiver processes listening" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"{name}: the receivers did not all start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    server = Server(name, port, "AINODE", process, data / "spool", stats)
    server.database = data / "ainode.sqlite3"
    if pki is not None:
        server.sender_args = tuple(dcmtk_tls_args(pki.client, pki))
    server.take_stats()  # drop the listening probe's
    return server
