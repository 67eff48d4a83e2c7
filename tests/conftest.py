"""Shared fixtures: where the corpus and the real DICOM peers are, free ports, deadlines.

Tests that need an external tool or the shared corpus skip with a reason that says what to
install or where to put it; CI installs everything (``make test``), so there nothing skips.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AINODE_SHARED", REPO.parent / "shared"))


def corpus_path() -> Path:
    return Path(os.environ.get("AINODE_CORPUS", SHARED / "dicom-corpus"))


def validator_path() -> Path:
    return Path(os.environ.get("AINODE_VALIDATOR", SHARED / "tools" / "validate-dicom"))


def dcmtk_tool(name: str) -> str | None:
    """The DCMTK binary ``name``: pynetdicom installs Python apps with the same names
    (storescu, storescp, echoscu) that can shadow DCMTK's on PATH, so look in /usr/bin first
    and check the version banner."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and Path(candidate).exists():
            banner = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, check=False
            ).stdout
            if "dcmtk" in banner.lower():
                return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


T = TypeVar("T")


def poll_until(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """``predicate``'s first truthy result, or its last (falsy) one at the deadline: the one
    place the suite waits; a predicate may raise to give up early (a process that died)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def wait_until(
    predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test at the deadline."""
    result = poll_until(predicate, timeout, interval)
    if not result:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
    return result


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("AINODE_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow test: set AINODE_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def corpus() -> Path:
    path = corpus_path()
    if not (path / "CATALOG.md").exists():
        if os.environ.get("CI"):  # CI must run the real-data tests, not skip them silently
            pytest.fail(f"DICOM corpus not found at {path} (set AINODE_CORPUS)")
        pytest.skip(f"DICOM corpus not found at {path} (set AINODE_CORPUS)")
    return path


@pytest.fixture(scope="session")
def dcmtk() -> Callable[[str], str]:
    if dcmtk_tool("storescu") is None:
        pytest.skip("DCMTK not installed: apt-get install dcmtk")

    def tool(name: str) -> str:
        path = dcmtk_tool(name)
        assert path, f"DCMTK tool {name} missing"
        return path

    return tool


@pytest.fixture(scope="session")
def rsyslogd() -> str:
    """rsyslogd, the syslog collector the audit trail tests send to (marker ``syslog``)."""
    path = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin")
    if path is None:
        reason = "rsyslog not installed: apt-get install rsyslog rsyslog-gnutls"
        if os.environ.get("CI"):  # CI installs it (scripts/install-test-peers.sh)
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def validate_dicom() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ../shared/tools/validate-dicom; returns the completed process (check returncode)."""
    path = validator_path()
    if not path.exists():
        pytest.skip(f"validator not found at {path} (set AINODE_VALIDATOR)")
    if shutil.which("dciodvfy") is None or dcmtk_tool("dsrdump") is None:
        pytest.skip("validator needs dicom3tools and dcmtk: apt-get install dicom3tools dcmtk")

    def run(*paths: Path, sources: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
        args = ["bash", str(path)]
        for source in sources:
            args += ["-s", str(source)]
        args += [str(p) for p in paths]
        env = dict(os.environ, VALIDATE_PYTHON=os.environ.get("VALIDATE_PYTHON", sys.executable))
        return subprocess.run(
            args, capture_output=True, text=True, errors="replace", env=env, check=False
        )

    return run


# -- outputs: the small synthetic CT and every output kind built on it (test_outputs_*) -------
@pytest.fixture(scope="module")
def ct_input(tmp_path_factory: pytest.TempPathFactory):
    from outputs_support import synthetic_ct

    return synthetic_ct(tmp_path_factory.mktemp("ct"))[1]


@pytest.fixture(scope="module")
def built(ct_input):
    """(Findings, {OutputKind: [ResultInstance]}) of ``full_findings`` on ``ct_input``."""
    from outputs_support import built_by_kind

    return built_by_kind(ct_input)
