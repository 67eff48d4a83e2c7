"""``GET /status`` and ``/metrics`` of a running node tell IT what the record holds."""

from __future__ import annotations

import json
import urllib.request

from conftest import free_port, wait_until
from ingest_support import make_instances, running_node

from node.scu import Peer, send


def _get(port: int, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def test_status_and_metrics_count_what_was_stored(tmp_path):
    http_port = free_port()
    files = make_instances(tmp_path / "in", 5)
    with running_node(tmp_path / "node", http={"port": http_port}) as node:
        report = send(files, Peer("AINODE", "127.0.0.1", node.port), calling_ae="STORESCU")
        assert report.failed == ()

        status = wait_until(
            lambda: (s := json.loads(_get(http_port, "/status")[2]))["instances"] == 5 and s,
            what="the status page to count five instances",
        )
        assert status["ae_title"] == "AINODE"
        assert status["studies_by_state"] == {"receiving": 1}
        assert status["stored_bytes"] == sum(p.stat().st_size for p in node.spool.rglob("*.dcm"))

        code, content_type, metrics = _get(http_port, "/metrics")
        assert code == 200 and content_type.startswith("text/plain")
        assert "ainode_instances 5.0" in metrics
        assert 'ainode_studies{state="receiving"} 1.0' in metrics
        code, content_type, body = _get(http_port, "/healthz")
        assert (code, content_type.split(";")[0], body) == (200, "text/plain", "ok\n")
