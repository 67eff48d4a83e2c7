"""Acceptance 7, as far as a test can go: the README's two set-up commands are real.

CI (``.ci/run``) runs the test command on a clean clone; here we check that the quick start
names exactly two commands, that both are Makefile targets whose recipes do what the README
says, and that the embedded default configuration they serve is valid.
"""

from __future__ import annotations

import re
import subprocess

from node.config import load_node_config
from tests.conftest import REPO


def _quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the quick start has no ```sh block"
    return [line.split("#", 1)[0].strip() for line in block[1].splitlines() if line.strip()]


def _dry_run(target: str) -> str:
    result = subprocess.run(
        ["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quick_start_is_two_make_targets_that_install_serve_and_test() -> None:
    assert _quick_start_commands() == ["make run", "make test"]
    run = _dry_run("run")
    assert "pip install" in run and "ainode serve --config config/node.yaml" in run
    test = _dry_run("test")
    assert "install-test-peers.sh" in test and "'.[test" in test and "pytest" in test
    peers = (REPO / "scripts" / "install-test-peers.sh").read_text()
    assert "dcmtk" in peers and "dicom3tools" in peers
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_the_served_default_configuration_is_valid() -> None:
    config = load_node_config(REPO / "config" / "node.yaml")
    assert config.listener.ae_title == "AINODE" and config.listener.port == 11112
    assert config.storage.data_dir == (REPO / "data").resolve()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'ainode = "node.cli:main"' in pyproject
