"""The systemd unit passes ``systemd-analyze verify`` (its ExecStart pointed at this venv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "packaging" / "systemd" / "ainode.service"
INSTALLED = "/opt/ainode/venv/bin/ainode"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is missing: scripts/install-test-peers.sh installs it")
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} serve --config /etc/ainode/node.yaml" in text
    # verify checks that the binary exists: the venv's own stands in for the installed one
    ainode = Path(sys.executable).parent / "ainode"
    assert ainode.exists()
    unit = tmp_path / "ainode.service"
    unit.write_text(text.replace(INSTALLED, str(ainode)))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_systemd_unit_is_hardened() -> None:
    settings = dict(
        line.split("=", 1)
        for line in UNIT.read_text().splitlines()
        if "=" in line[:40] and not line.startswith("#")
    )
    assert settings["User"] == "ainode"
    assert settings["ProtectSystem"] == "strict"
    assert settings["ReadWritePaths"] == "/var/lib/ainode"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["Restart"] == "on-failure"
    for flag in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "ProtectKernelTunables"):
        assert settings[flag] == "yes"
