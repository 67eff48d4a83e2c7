"""ainode in a container: packaging/container/Containerfile, built by
scripts/build-node-image.py from the repository and the local base, answers C-ECHO, stops on
SIGTERM with exit 0."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from node.scu import AssociationFailed, Peer, echo
from tests.conftest import free_port, poll_until
from tests.container_support import ENGINE

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.containers

UID = 10001  # the image's user


def _build_script():
    spec = importlib.util.spec_from_file_location(
        "build_node_image", ROOT / "scripts" / "build-node-image.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


def _answers(peer: Peer) -> bool:
    try:
        return echo(peer, "PROBE", timeout_s=5) == 0
    except AssociationFailed:
        return False


def test_container_answers_echo_and_stops_on_sigterm(tmp_path: Path) -> None:
    try:
        image = _build_script().node_image()
    except LookupError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    port = free_port()
    etc = tmp_path / "etc"
    etc.mkdir()
    config = {
        "listener": {"ae_title": "AINODE", "host": "127.0.0.1", "port": port},
        "access": {"accept_any": True},
        "storage": {"data_dir": "/var/lib/ainode", "min_free_mb": 1},
    }
    (etc / "node.yaml").write_text(yaml.safe_dump(config))
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, UID, UID)
    name = f"ainode-packaging-{port}"
    started = _podman(
        "run",
        "--detach",
        "--name",
        name,
        "--runtime",
        ENGINE["runtime"],
        *ENGINE["run_options"],
        "--network",
        "host",
        "--volume",
        f"{etc}:/etc/ainode:ro",
        "--volume",
        f"{data}:/var/lib/ainode",
        image,
    )
    assert started.returncode == 0, started.stderr
    try:
        peer = Peer("AINODE", "127.0.0.1", port)

        def answers() -> bool:
            state = _podman("inspect", name, "--format", "{{.State.Running}}").stdout.strip()
            assert state == "true", _podman("logs", name).stderr
            return _answers(peer)

        assert poll_until(answers, 60, interval=0.2), _podman("logs", name).stderr
        stopped = _podman("stop", "--time", "60", name, timeout=90)
        assert stopped.returncode == 0, stopped.stderr
        code = _podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        logs = _podman("logs", name)
        assert code == "0", logs.stdout + logs.stderr
        assert "stopped stages" in logs.stdout + logs.stderr
        assert (data / "ainode.sqlite3").exists()
    finally:
        _podman("rm", "--force", name)
