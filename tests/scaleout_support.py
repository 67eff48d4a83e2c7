"""A node with the Celery executor and its ``ainode worker`` processes, for the scale-out
tests: each worker has its own data folder and shares no folder with the node.

The test plugin ``gated-ct`` builds every output kind (``outputs_support.full_findings``) and,
while the gate file of its folder exists, waits before it returns (after writing a
``running-<pid>`` marker), so a test can kill a worker in the middle of a job.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from conftest import REPO, free_port, poll_until
from ingest_support import RunningNode, start_node, stop_node

PLUGIN_CODE = """
import os
import time
from pathlib import Path

from tests.outputs_support import full_findings

HERE = Path(__file__).resolve().parent


class Plugin:
    def __init__(self, manifest):
        self.name, self.version = manifest.name, manifest.version

    def load(self, device):
        pass

    def run(self, series):
        gates = os.environ.get("AINODE_TEST_GATES")
        if gates:
            gate = Path(gates) / HERE.name
            (gate.parent / f"running-{HERE.name}-{os.getpid()}").touch()
            deadline = time.monotonic() + 300
            while gate.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return full_findings(series, report=True)
"""


def write_gated_plugin(folder: Path, name: str, version: str = "1.0.0") -> Path:
    plugin = folder / f"{name}-{version}"
    plugin.mkdir(parents=True, exist_ok=True)
    manifest = {"name": name, "version": version, "runner": "python", "entry": "plugin:Plugin"}
    (plugin / "plugin.yaml").write_text(yaml.safe_dump(manifest))
    (plugin / "plugin.py").write_text(PLUGIN_CODE)
    return plugin


@dataclass
class Worker:
    name: str
    config: Path
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "node", "worker", "--config", str(self.config)],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # kill() takes the pool's child along
            )

    def kill(self) -> None:
        """SIGKILL the worker and its pool child: a machine gone in the middle of a job."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    folder: Path
    broker_url: str
    node_sections: dict
    token: str
    gates: Path
    node: RunningNode | None = None
    http_port: int = 0
    workers: list[Worker] = field(default_factory=list)

    def start_node(self) -> RunningNode:
        self.node = start_node(
            self.folder / "node", self.node.port if self.node else None, **self.node_sections
        )
        return self.node

    def add_worker(self, name: str, plugin_dirs: list[Path]) -> Worker:
        home = self.folder / name
        home.mkdir(parents=True, exist_ok=True)
        (home / "token").write_text(self.token)
        config = {
            "name": name,
            "node_url": f"http://127.0.0.1:{self.http_port}",
            "token_file": "token",
            "data_dir": "data",
            "plugin_dirs": [str(p) for p in plugin_dirs],
            "heartbeat_s": 1,
        }
        (home / "worker.yaml").write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            "AINODE_BROKER_URL": self.broker_url,
            "AINODE_TEST_GATES": str(self.gates),
        }
        worker = Worker(name, home / "worker.yaml", home / "worker.log", env)
        worker.start()
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.node is not None:
            stop_node(self.node)
        os.environ.pop("AINODE_BROKER_URL", None)

    def logs(self) -> str:
        parts = [f"--- node\n{self.node.log()[-4000:]}" if self.node else ""]
        parts += [f"--- {w.name}\n{w.log()[-3000:]}" for w in self.workers]
        return "\n".join(parts)


def make_cluster(folder: Path, broker_url: str, sections: dict) -> Cluster:
    """Node settings for the Celery executor (HTTP on a free port, a worker token)."""
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    (folder / "worker-token").write_text(token)
    gates = folder / "gates"
    gates.mkdir()
    http_port = free_port()
    jobs = {
        "executor": "celery",
        "celery": {"worker_token_file": str(folder / "worker-token")},
        "timeout_s": 120,
        "max_attempts": 3,
        "backoff_s": 0.5,
        **sections.pop("jobs", {}),
    }
    os.environ["AINODE_BROKER_URL"] = broker_url  # the node reads it from its environment
    node_sections = {
        "stability": {"stable_after_s": 1, "after_release_s": 0.2, "poll_interval_s": 0.1},
        "http": {"port": http_port},
        "jobs": jobs,
        **sections,
    }
    return Cluster(folder, broker_url, node_sections, token, gates, http_port=http_port)


def workers_seen(database: Path, names: set[str]) -> bool:
    import sqlite3

    try:
        conn = sqlite3.connect(database, timeout=10)
        try:
            rows = conn.execute("SELECT name FROM workers WHERE last_seen > ?", (time.time() - 10,))
            return names <= {r[0] for r in rows}
        finally:
            conn.close()
    except sqlite3.Error:
        return False


def wait_for_workers(cluster: Cluster, timeout: float = 60) -> None:
    assert cluster.node is not None
    names = {w.name for w in cluster.workers}
    if not poll_until(
        lambda: workers_seen(cluster.node.data_dir / "ainode.sqlite3", names), timeout
    ):
        raise AssertionError(f"workers {names} never reported:\n{cluster.logs()}")
