"""The console's REST API (studies, jobs, outbox, latency, actions) against a real ``ainode serve``.

One node serves the module: a study goes in with C-STORE, and three routes give it a job that
succeeds (delivered to a folder), one whose deliveries die (a peer that is not there) and one
that fails until its plugin is "healed" and the job is retried through the API.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import free_port, wait_until
from console_support import (
    PASSWORD,
    VIEWER_TOKEN,
    Api,
    query,
    send_study,
    start_console_node,
    write_plugin,
)
from ingest_support import stop_node
from openapi_spec_validator import validate

from node.console.latency import WINDOWS, product_latencies
from node.db import connect

PATIENT = ("Synthetic", "SYNTH-001")  # what make_instances writes

ROUTES = """
routes:
  - name: report
    when: {modality: CT, body_part: chest}
    run: [quick-report]
    send_to: [archive]
  - name: dead-end
    when: {modality: CT, body_part: chest}
    run: [quick-report]
    send_to: [nowhere]
  - name: broken
    when: {modality: CT, body_part: chest}
    run: [flaky]
    send_to: [archive]
"""

EXTRA_ROUTE = """
  - name: extra
    when: {modality: CT, body_part: chest}
    run: [quick-report]
    send_to: [archive]
"""


def _jobs_of(database: Path, study: str) -> list:
    return query(
        database,
        "SELECT j.id, j.state, m.route_name FROM jobs j JOIN route_matches m "
        "ON m.id = j.route_match_id JOIN study_versions v ON v.id = m.study_version_id "
        "WHERE v.study_instance_uid = ? ORDER BY j.id",
        study,
    )


def _settled(database: Path, study: str, jobs: int) -> bool:
    """Every job of the study finished and every delivery sent or dead."""
    states = [row["state"] for row in _jobs_of(database, study)]
    owed = query(database, "SELECT 1 FROM outbox WHERE state = 'PENDING'")
    return len(states) == jobs and set(states) <= {"SUCCEEDED", "FAILED"} and not owed


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("console-api")
    plugins = folder / "plugins"
    write_plugin(plugins, "quick-report")
    write_plugin(plugins, "flaky", fails=True)
    (folder / "routes.yaml").write_text(ROUTES)
    node, http_port = start_console_node(
        folder,
        stability={"stable_after_s": 1, "after_release_s": 0.2, "poll_interval_s": 0.1},
        routes_file=str(folder / "routes.yaml"),
        plugin_dirs=[str(plugins)],
        jobs={"workers": 1, "timeout_s": 120, "max_attempts": 1, "backoff_s": 0.2},
        destinations={
            "archive": {"kind": "folder", "path": str(folder / "archive"), "send_as": ["text_sr"]},
            "nowhere": {
                "kind": "dicom",
                "ae_title": "NOWHERE",
                "host": "127.0.0.1",
                "port": free_port(),  # nothing listens there: its deliveries die
                "timeout_s": 1,
                "send_as": ["text_sr"],
            },
        },
        dispatch={"backoff_s": 0.1, "backoff_max_s": 0.2, "max_attempts": 2},
    )
    try:
        database = node.data_dir / "ainode.sqlite3"
        study = send_study(folder / "in-a", node)
        wait_until(lambda: _settled(database, study, 3), timeout=120, what="three jobs settled")
        yield Api(http_port, folder, database, study, node)
    finally:
        stop_node(node)


ADMIN_ACTIONS = [
    ("POST", "/api/studies/{study}/reroute", {}),
    ("POST", "/api/jobs/1/retry", None),
    ("POST", "/api/jobs/1/cancel", None),
    ("POST", "/api/outbox/retry-dead", {}),
]
READS = [
    "/api/summary",
    "/api/studies",
    "/api/studies/{study}",
    "/api/studies/{study}/timeline",
    "/api/jobs",
    "/api/jobs/1",
    "/api/outbox",
    "/api/latency",
    "/api/actions",
]


def test_reads_need_a_login(api: Api) -> None:
    for path in READS:
        path = path.format(study=api.study)
        assert api.call("GET", path, token=None)[0] == 401, path
        assert api.call("GET", path, token="not-a-token")[0] == 401, path
        assert api.call("GET", path, token=VIEWER_TOKEN)[0] == 200, path


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ACTIONS)
def test_actions_need_an_admin(api: Api, method: str, path: str, body: dict | None) -> None:
    path = path.format(study=api.study)
    status, answer = api.call(method, path, body, token=None)
    assert status == 401 and "log in" in answer["detail"]
    status, answer = api.call(method, path, body, token=VIEWER_TOKEN)
    assert status == 403 and "viewer role" in answer["detail"]


def test_a_session_must_send_its_csrf_token(api: Api) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{api.port}/api/login",
        data=json.dumps({"username": "alice", "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        cookie = response.headers["Set-Cookie"].split(";")[0]
        csrf = json.loads(response.read())["csrf_token"]
    session = {"Cookie": cookie}
    for method, path, body in ADMIN_ACTIONS:
        path = path.format(study=api.study)
        status, answer = api.call(method, path, body, token=None, headers=session)
        assert status == 403 and "X-CSRF-Token" in answer["detail"], (path, answer)
    with_csrf = {**session, "X-CSRF-Token": csrf}
    body = {"destination": "archive"}
    status, answer = api.call("POST", "/api/outbox/retry-dead", body, token=None, headers=with_csrf)
    assert (status, answer) == (200, {"retried": 0})
    assert api.get("/api/actions?limit=1")[0]["user"] == "alice"
    assert api.call("GET", "/api/summary", token=None, headers=session)[0] == 200


def test_summary_is_the_status_page(api: Api) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{api.port}/status", timeout=10) as response:
        status = json.loads(response.read())
    assert api.get("/api/summary") == status
    assert status["instances"] >= 3 and status["ae_title"] == "AINODE"


def test_a_sent_study_is_listed_with_its_series_versions_and_jobs(api: Api) -> None:
    listed = {s["study_instance_uid"]: s for s in api.get("/api/studies")}
    study = listed[api.study]
    assert study["state"] == "stable" and study["instances"] == 3
    assert study["modalities"] == ["CT"] and study["study_date"] == "20240101"
    assert api.study in {s["study_instance_uid"] for s in api.get("/api/studies?state=stable")}
    receiving = api.get("/api/studies?state=receiving")
    assert api.study not in {s["study_instance_uid"] for s in receiving}
    assert len(api.get("/api/studies?limit=1")) == 1

    detail = api.get(f"/api/studies/{api.study}")
    assert [s["instances"] for s in detail["series"]] == [3]
    assert detail["series"][0]["modality"] == "CT"
    [version] = detail["versions"]
    assert version["version"] == 1 and version["instance_count"] == 3
    assert version["routed_at"] >= version["stable_at"]
    by_route = {m["route"]: m for m in version["matches"]}
    assert {"report", "dead-end", "broken"} <= set(by_route)
    assert by_route["report"]["job_state"] == "SUCCEEDED", [
        j["error"] for j in api.get("/api/jobs")
    ]
    assert by_route["report"]["destinations"] == ["archive"]
    assert by_route["report"]["plugin"] == "quick-report"
    status, answer = api.call("GET", "/api/studies/1.2.3.4")
    assert status == 404 and "1.2.3.4" in answer["detail"]


TIMELINE_EVENTS = (
    "received",
    "last received",
    "stable",
    "routed",
    "job queued",
    "job started",
    "stage load",
    "stage inference",
    "stage build",
    "job succeeded",
    "sent",
)


def test_the_timeline_follows_the_study_through_the_pipeline(api: Api) -> None:
    events = api.get(f"/api/studies/{api.study}/timeline")
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    names = [e["event"] for e in events]
    for name in TIMELINE_EVENTS:
        assert name in names, (name, names)
    assert names.index("received") < names.index("stable") < names.index("routed")
    assert names.index("routed") < names.index("job queued")
    report_job = _job_id(api, "report")
    mine = [e for e in events if e["job_id"] == report_job]
    assert [e["event"] for e in mine][:2] == ["job queued", "job started"]
    assert [e["event"] for e in mine][-1] == "sent"
    assert mine[-1]["detail"] == "to archive: 1 of 1 result(s)"
    job = api.get(f"/api/jobs/{report_job}")
    inference = next(e for e in mine if e["event"] == "stage inference")
    expected = job["started_at"] + job["timings"]["load"] + job["timings"]["inference"]
    assert inference["at"] == pytest.approx(expected)
    assert api.call("GET", "/api/studies/1.2.3.4/timeline")[0] == 404


def _job_id(api: Api, route: str) -> int:
    return next(r["id"] for r in _jobs_of(api.database, api.study) if r["route_name"] == route)


def test_a_job_shows_its_results_and_where_they_went(api: Api) -> None:
    jobs = api.get("/api/jobs")
    assert [j["id"] for j in jobs] == sorted((j["id"] for j in jobs), reverse=True)
    report = api.get(f"/api/jobs/{_job_id(api, 'report')}")
    assert report["state"] == "SUCCEEDED" and report["route"] == "report"
    assert report["study_instance_uid"] == api.study and report["mode"] == "production"
    [result] = report["results"]
    assert result["kind"] == "text_sr"
    [delivery] = result["deliveries"]
    assert delivery["destination"] == "archive" and delivery["state"] == "SENT"
    dead = api.get(f"/api/jobs/{_job_id(api, 'dead-end')}")
    assert [d["state"] for d in dead["results"][0]["deliveries"]] == ["DEAD"]
    assert api.get("/api/jobs?state=SUCCEEDED&limit=1")[0]["state"] == "SUCCEEDED"
    status, answer = api.call("GET", "/api/jobs/999999")
    assert status == 404 and "999999" in answer["detail"]


def test_a_failed_job_is_retried_and_the_action_logged(api: Api) -> None:
    job_id = _job_id(api, "broken")
    failed = api.get(f"/api/jobs/{job_id}")
    assert failed["state"] == "FAILED" and "broken on purpose" in failed["error"]
    status, answer = api.call("POST", f"/api/jobs/{job_id}/cancel")
    assert status == 409 and "FAILED" in answer["detail"]
    (api.folder / "plugins" / "flaky" / "healed").touch()

    status, answer = api.call("POST", f"/api/jobs/{job_id}/retry")
    assert (status, answer) == (200, {"id": job_id, "state": "QUEUED"})
    done = wait_until(
        lambda: (j := api.get(f"/api/jobs/{job_id}"))["state"] == "SUCCEEDED" and j,
        timeout=60,
        what="the retried job to succeed",
    )
    assert done["error"] is None and done["attempts"] == 1
    status, answer = api.call("POST", f"/api/jobs/{job_id}/retry")
    assert status == 409 and "SUCCEEDED" in answer["detail"]
    status, answer = api.call("POST", "/api/jobs/999999/retry")
    assert status == 404

    actions = api.get("/api/actions", token=VIEWER_TOKEN)
    ok = next(a for a in actions if a["action"] == "job.retry" and a["outcome"] == "ok")
    assert ok["user"] == "token:admin" and ok["target"] == f"job {job_id}"
    assert ok["before"]["state"] == "FAILED" and ok["after"]["state"] == "QUEUED"
    refused = [a for a in actions if a["outcome"] != "ok"]
    assert any("SUCCEEDED" in a["outcome"] and a["action"] == "job.retry" for a in refused)
    assert any(a["target"] == "job 999999" for a in refused)
    assert any(a["action"] == "job.cancel" and "FAILED" in a["outcome"] for a in refused)
    assert [a["at"] for a in actions] == sorted((a["at"] for a in actions), reverse=True)


def test_the_outbox_and_dead_letters_sent_again(api: Api) -> None:
    outbox = api.get("/api/outbox")
    assert outbox["destinations"]["archive"].get("SENT", 0) >= 1
    assert outbox["destinations"]["nowhere"]["DEAD"] >= 1
    dead = [row for row in outbox["rows"] if row["state"] == "DEAD"]
    assert dead and {row["destination"] for row in dead} == {"nowhere"}
    assert all(row["last_error"] for row in dead)

    status, answer = api.call("POST", "/api/outbox/retry-dead", {"destination": "elsewhere"})
    assert status == 404 and "archive, nowhere" in answer["detail"]
    status, answer = api.call("POST", "/api/outbox/retry-dead", {"destination": "nowhere"})
    assert (status, answer) == (200, {"retried": len(dead)})
    wait_until(lambda: _settled(api.database, api.study, 3), timeout=60, what="dead again")
    record = api.get("/api/actions?limit=20")
    assert any(a["action"] == "outbox.retry-dead" and a["target"] == "nowhere" for a in record)


def test_latency_is_product_latencies_on_the_same_record(api: Api) -> None:
    for window in WINDOWS:
        answer = api.get(f"/api/latency?window={window}")
        with closing(connect(api.database)) as conn:
            expected = [asdict(p) for p in product_latencies(conn, WINDOWS[window])]
        assert answer == expected
    assert any(row["plugin"] == "quick-report" and row["modality"] == "CT" for row in answer)
    assert api.call("GET", "/api/latency?window=year")[0] == 422


def test_reroute_adds_what_the_current_routes_match(api: Api) -> None:
    before = api.get(f"/api/studies/{api.study}")["versions"][0]["matches"]
    routes = api.folder / "routes.yaml"
    routes.write_text(routes.read_text() + EXTRA_ROUTE)
    wait_until(lambda: "reloaded 4 route(s)" in api.node.log(), what="the routes reloaded")
    status, answer = api.call("POST", f"/api/studies/{api.study}/reroute", {})
    assert status == 200, answer
    assert answer == {
        "study_instance_uid": api.study,
        "version": 1,
        "routed": True,
        "matches_added": 1,
        "detail": "routed again with the current routes: 1 new match(es)",
    }
    after = api.get(f"/api/studies/{api.study}")["versions"][0]["matches"]
    kept = {m["route"]: m["job_id"] for m in after}
    assert all(kept[m["route"]] == m["job_id"] for m in before)  # old matches keep their jobs
    wait_until(
        lambda: api.get(f"/api/studies/{api.study}")["versions"][0]["matches"][-1]["job_id"],
        timeout=30,
        what="a job for the new match",
    )
    assert api.call("POST", f"/api/studies/{api.study}/reroute", {"version": 7})[0] == 404
    assert api.call("POST", "/api/studies/1.2.3.4/reroute")[0] == 404
    actions = api.get("/api/actions")
    [logged] = [a for a in actions if a["outcome"] == "ok" and a["action"] == "study.reroute"]
    assert logged["before"]["matches"] + 1 == logged["after"]["matches"]


def test_patient_names_stay_out_of_answers_and_the_log(api: Api) -> None:
    answers = [
        api.get("/api/studies"),
        api.get(f"/api/studies/{api.study}"),
        api.get(f"/api/studies/{api.study}/timeline"),
        api.get("/api/jobs"),
        api.get("/api/actions"),
    ]
    text = json.dumps(answers)
    for value in PATIENT:
        assert value not in text
    assert api.get(f"/api/studies/{api.study}")["patient_name"] is None
    for value in PATIENT:
        assert value not in api.node.log()


def test_patient_names_shown_when_configured_and_no_routing_stage(tmp_path: Path) -> None:
    node, http_port = start_console_node(
        tmp_path,
        http={"console": {"show_patient_names": True}},
        stability={"stable_after_s": 0.5, "after_release_s": 0.1, "poll_interval_s": 0.05},
        routes_file=str(tmp_path / "no-routes.yaml"),
    )
    try:
        api = Api(http_port, tmp_path, node.data_dir / "ainode.sqlite3", "", node)
        study = send_study(tmp_path / "in", node)
        listed = wait_until(
            lambda: [s for s in api.get("/api/studies") if s["state"] == "stable"],
            what="the study stable",
        )
        shown = (listed[0]["patient_name"], listed[0]["patient_id"])
        assert shown == ("Synthetic^Patient", PATIENT[1])
        assert api.get(f"/api/studies/{study}")["patient_id"] == PATIENT[1]
        status, answer = api.call("POST", f"/api/studies/{study}/reroute")
        assert status == 409 and "no routing stage" in answer["detail"]
    finally:
        stop_node(node)


def test_the_openapi_document_is_valid(api: Api) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{api.port}/api/openapi.json") as response:
        document = json.loads(response.read())
    validate(document)
    paths = document["paths"]
    for path in ("/api/studies/{uid}/timeline", "/api/jobs/{job_id}/retry", "/api/latency"):
        assert path in paths
    assert "Rerouted" in document["components"]["schemas"]
