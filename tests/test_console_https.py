"""The console over HTTPS (``http.tls``): the node's certificate, a Secure session cookie,
HSTS; and refused over plain HTTP."""

from __future__ import annotations

import json
import shutil
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port
from ingest_support import running_node
from tls_support import Pki, make_pki, tls_section


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_console_over_https_sets_secure_cookies(tmp_path: Path, pki: Pki) -> None:
    port = free_port()
    with running_node(tmp_path, http={"port": port, "tls": True}, tls=tls_section(pki)) as node:
        token = (node.data_dir / "console" / "admin-token").read_text().strip()
        context = ssl.create_default_context(cafile=str(pki.ca))
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}/api/login",
            data=json.dumps({"token": token}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            cookie = answer.headers["Set-Cookie"]
            assert answer.headers["Strict-Transport-Security"].startswith("max-age=")
            assert json.loads(answer.read())["role"] == "admin"
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"secure", "httponly", "samesite"} <= attributes
        assert "samesite=strict" in cookie.lower()
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
