"""The console's plugins, routes and promotion API against a running node: promotion rewrites
routes.yaml and the node reloads it; refused without admin; explain equals the CLI's."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
import yaml
from conftest import free_port, wait_until
from ingest_support import make_instances, running_node
from runtime_support import write_plugin

from node.console.credentials import add_entry, hash_token
from node.scu import Peer, send

REPO = Path(__file__).resolve().parent.parent
VIEWER_TOKEN = "viewer-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"
PLUGIN_CODE = """
class Plugin:
    def load(self, device):
        pass
"""
ROUTES = """\
# the site's comment stays
routes:
  - name: ct-production
    when: {modality: CT}
    run: [fake-ct@1.0]
  - name: ct-shadow       # version 2 beside production
    mode: shadow
    when: {modality: CT}
    run: [fake-ct@2.0]
"""


def _call(base: str, method: str, path: str, token: str | None, body: object = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            text = answer.read().decode()
            return answer.status, json.loads(text) if text else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode() or "null")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    folder = tmp_path_factory.mktemp("console-routes")
    for version in ("1.0", "2.0"):
        write_plugin(
            folder / "plugins" / f"fake-ct-{version}",
            name="fake-ct",
            version=version,
            entry="plugin:Plugin",
            code=PLUGIN_CODE,
        )
    (folder / "routes.yaml").write_text(ROUTES)
    users = folder / "data" / "console" / "users.yaml"
    users.parent.mkdir(parents=True)
    for name, role, token in (("ward", "viewer", VIEWER_TOKEN), ("admin", "admin", ADMIN_TOKEN)):
        add_entry(users, "tokens", {"name": name, "role": role, "sha256": hash_token(token)})
    http_port = free_port()
    with running_node(
        folder,
        http={"port": http_port},
        routes_file=str(folder / "routes.yaml"),
        plugin_dirs=[str(folder / "plugins")],
        jobs={"workers": 1},
    ) as running:
        yield SimpleNamespace(
            base=f"http://127.0.0.1:{http_port}",
            folder=folder,
            port=running.port,
            config=running.config_path,
            admin=ADMIN_TOKEN,
            log=running.log,
        )


def test_actions_are_refused_without_admin(node) -> None:
    for method, path, body in (
        ("POST", "/api/plugins/fake-ct/promote", {"version": "2.0"}),
        ("POST", "/api/plugins/fake-ct/rollback", {"version": "1.0"}),
        ("PUT", "/api/routes", {"text": ROUTES, "expected_digest": "0"}),
    ):
        assert _call(node.base, method, path, None, body)[0] == 401, path
        status, answer = _call(node.base, method, path, VIEWER_TOKEN, body)
        assert status == 403 and "needs admin" in answer["detail"], path
    for path in ("/api/plugins", "/api/routes", "/api/shadow"):
        assert _call(node.base, "GET", path, None)[0] == 401
        assert _call(node.base, "GET", path, VIEWER_TOKEN)[0] == 200
    assert (node.folder / "routes.yaml").read_text() == ROUTES


def _versions(node) -> dict[str, tuple[bool, bool]]:
    status, plugins = _call(node.base, "GET", "/api/plugins", VIEWER_TOKEN)
    assert status == 200
    return {p["version"]: (p["production"], p["shadow"]) for p in plugins if p["name"] == "fake-ct"}


def test_routes_check_and_a_stale_or_broken_edit(node) -> None:
    status, routes = _call(node.base, "GET", "/api/routes", VIEWER_TOKEN)
    assert status == 200 and routes["check"] == {"ok": True, "errors": []}
    broken = ROUTES.replace("fake-ct@2.0", "fake-ct@9.9")
    status, check = _call(node.base, "POST", "/api/routes/check", VIEWER_TOKEN, {"text": broken})
    assert status == 200 and not check["ok"] and "9.9" in "\n".join(check["errors"])
    admin = node.admin
    edit = {"text": broken, "expected_digest": routes["digest"]}
    assert _call(node.base, "PUT", "/api/routes", admin, edit)[0] == 422
    stale = {"text": ROUTES + "\n", "expected_digest": "0" * 64}
    status, answer = _call(node.base, "PUT", "/api/routes", admin, stale)
    assert status == 409 and "changed since it was loaded" in answer["detail"]
    assert (node.folder / "routes.yaml").read_text() == ROUTES


def test_promote_then_roll_back(node) -> None:
    assert _versions(node) == {"1.0": (True, False), "2.0": (False, True)}
    admin = node.admin
    status, change = _call(
        node.base, "POST", "/api/plugins/fake-ct/promote", admin, {"version": "2.0"}
    )
    assert status == 200, change
    assert change["previous"] == {"ct-production": "fake-ct@1.0"}
    assert change["routes_changed"] == ["ct-production", "ct-shadow"]
    on_disk = yaml.safe_load((node.folder / "routes.yaml").read_text())
    assert on_disk["routes"][0]["run"] == ["fake-ct@2.0"]
    assert on_disk["routes"][1]["enabled"] is False
    assert "# the site's comment stays" in (node.folder / "routes.yaml").read_text()
    assert _versions(node) == {"1.0": (False, False), "2.0": (True, False)}
    wait_until(
        lambda: "routes: reloaded 2 route(s)" in node.log(), what="the node to reload routes.yaml"
    )

    status, answer = _call(
        node.base, "POST", "/api/plugins/fake-ct/promote", admin, {"version": "2.0"}
    )
    assert status == 409 and "shadow" in answer["detail"]

    status, change = _call(node.base, "POST", "/api/plugins/fake-ct/rollback", admin, {})
    assert status == 200, change
    assert change["version"] == "1.0"  # what the promotion replaced, from the action log
    after = yaml.safe_load((node.folder / "routes.yaml").read_text())
    assert after["routes"][0]["run"] == ["fake-ct@1.0"]
    assert after["routes"][1]["enabled"] is True  # 2.0 runs in shadow again
    assert _versions(node) == {"1.0": (True, False), "2.0": (False, True)}
    status, actions = _call(node.base, "GET", "/api/actions", VIEWER_TOKEN)
    assert status == 200
    done = [(a["action"], a["user"], a["outcome"]) for a in actions[:3]]
    assert done[0] == ("plugin.rollback", "token:admin", "ok")
    assert done[1][0] == "plugin.promote" and done[1][2] != "ok"  # the refused second promote
    assert done[2] == ("plugin.promote", "token:admin", "ok")


def test_explain_equals_the_cli(node) -> None:
    files = make_instances(node.folder / "in", 2)
    report = send(files, Peer("AINODE", "127.0.0.1", node.port), calling_ae="STORESCU")
    assert report.failed == ()
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    command = ["routes", "explain", study_uid, "--config", str(node.config)]
    cli = subprocess.run(
        [sys.executable, "-m", "node", *command], capture_output=True, text=True, cwd=REPO
    )
    assert cli.returncode == 0, cli.stderr
    status, answer = _call(node.base, "GET", f"/api/routes/explain/{study_uid}", VIEWER_TOKEN)
    assert status == 200 and answer["text"] == cli.stdout
    assert _call(node.base, "GET", "/api/routes/explain/1.2.3.4", VIEWER_TOKEN)[0] == 404
