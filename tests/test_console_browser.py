"""The web console in Chromium against a real ``ainode serve``: an operator logs in with the
first admin token, watches a study go from received to SUCCEEDED, reads its timeline, retries
a failed job, promotes a shadow plugin version (routes.yaml on disk rewritten), rolls it back
and promotes it again, checks, saves and explains routes, and reads the outbox, latency and
action log; a viewer reads every page and finds every action disabled, saying why.

The node runs three python plugins from this test's folder: ``bright`` 1.0.0 in production
and 2.0.0 in shadow on CT (a threshold mask each, so the shadow report has a Dice below 1),
and ``flaky`` on MR, which fails until its "calibration" file exists. Every wait is a
condition with a deadline (Playwright's ``expect``); screenshots of each step go to
``$AINODE_ARTEFACTS`` (default ``test-artefacts/console``), at 1280 and 1920 pixels wide.
With ``CI`` set a missing Chromium fails the run instead of skipping.
"""

from __future__ import annotations

import re

import pytest
import yaml
from console_browser_support import (
    chromium_browser,
    console_opener,
    events_of,
    send_study,
    site,
)
from ingest_support import running_node

from node.console.credentials import add_entry, hash_password

pytestmark = [pytest.mark.viewer, pytest.mark.timeout(420)]
WARD = {"width": 1920, "height": 1080}
WAIT_MS = 120_000  # a study from the last instance to its results sent, on a busy machine


@pytest.fixture(scope="module")
def browser():
    yield from chromium_browser()


@pytest.fixture
def console_tab(browser, request):
    """``with console_tab(origin) as tab``: see ``console_opener``."""
    return console_opener(browser, request.node.name)


def test_operator_follows_a_study_retries_a_job_and_promotes_a_shadow_version(
    tmp_path, console_tab
):
    from playwright.sync_api import expect

    sections = site(tmp_path)
    origin = f"http://127.0.0.1:{sections['http']['port']}"
    with running_node(tmp_path, **sections) as node, console_tab(origin) as tab:
        page = tab.page
        token = (node.data_dir / "console" / "admin-token").read_text().strip()

        # -- log in with the first admin token ----------------------------------------------
        tab.go("overview")  # not logged in: the console asks for a login first
        expect(tab.by("login-page")).to_be_visible()
        tab.shot("01-login")
        tab.by("login-token").fill("not the token")
        tab.by("login-token-submit").click()
        expect(tab.by("login-error")).to_contain_text("Wrong user name, password or token")
        tab.by("login-token").fill(token)
        tab.by("login-token-submit").click()
        expect(tab.by("who")).to_contain_text("token:admin")
        expect(tab.by("who")).to_contain_text("admin")
        expect(tab.by("count-instances")).to_have_text("0")
        expect(tab.by("node-ae-title")).to_have_text("AINODE")

        # -- two studies arrive; the overview counts them live -------------------------------
        ct = send_study(tmp_path / "studies", node.port, "CT", 5)
        mr = send_study(tmp_path / "studies", node.port, "MR", 3)
        expect(tab.by("count-instances")).to_have_text("8", timeout=10_000)
        expect(tab.by("count-studies-total")).to_have_text("2")
        tab.shot("02-overview-received")

        # -- the CT study from received to SUCCEEDED -----------------------------------------
        tab.nav("studies")
        row = page.locator(f"[data-testid=study-row][data-uid='{ct}']")
        expect(row).to_contain_text("CT")
        expect(page.locator(f"[data-testid=study-row][data-uid='{mr}']")).to_contain_text("MR")
        row.get_by_role("link").click()
        expect(tab.by("study-uid")).to_have_text(ct)
        phase = tab.by("study-phase")
        expect(phase).to_have_attribute("data-phase", "receiving")  # stable after 8 s quiet
        expect(tab.by("series-row")).to_contain_text("CHEST")
        tab.shot("03-study-receiving")
        expect(phase).to_have_attribute("data-phase", "SUCCEEDED", timeout=WAIT_MS)
        production = page.locator("[data-testid=match-row][data-route='ct-bright']")
        expect(production).to_contain_text("bright@1.0.0")
        expect(production.get_by_test_id("match-job-state")).to_have_text("SUCCEEDED")
        shadow = page.locator("[data-testid=match-row][data-route='ct-bright-candidate']")
        expect(shadow).to_contain_text("bright@2.0.0")
        expect(shadow).to_contain_text("shadow")
        expect(shadow.get_by_test_id("match-job-state")).to_have_text("SUCCEEDED", timeout=WAIT_MS)

        # -- its timeline: received → stable → routed → job stages → sent --------------------
        timeline = tab.by("timeline")
        expect(timeline.locator("[data-event=sent]").first).to_be_visible(timeout=WAIT_MS)
        events = events_of(tab)
        for needed in ("received", "last received", "stable", "routed", "job queued"):
            assert needed in events, events
        assert events.count("job started") == 2 and events.count("job succeeded") == 2, events
        stages = [e for e in events if e.startswith("stage ")]
        assert stages, f"no job stage in the timeline: {events}"
        order = [
            events.index("received"),
            events.index("stable"),
            events.index("routed"),
            events.index("job started"),
            events.index(stages[0]),
            events.index("job succeeded"),
            events.index("sent"),
        ]
        assert order == sorted(order), events
        entries = page.locator("[data-testid=timeline-entry]")
        expect(entries.first.get_by_test_id("timeline-gap")).to_have_text("start")
        expect(entries.nth(1).get_by_test_id("timeline-gap")).to_have_text(re.compile(r"^\+\d"))
        routed = timeline.locator("[data-event=routed]")
        expect(routed).to_contain_text("ct-bright → bright")
        expect(routed).to_contain_text("ct-bright-candidate → bright (shadow)")
        expect(timeline.locator("[data-event=sent]").first).to_contain_text("to results")
        timeline.scroll_into_view_if_needed()
        tab.shot("04-study-timeline")

        # -- the failed MR job, retried from the jobs page ------------------------------------
        tab.nav("jobs")
        page.get_by_test_id("jobs-filter").select_option("FAILED")
        expect(page).to_have_url(re.compile(r"#/jobs\?state=FAILED$"))
        failed = page.locator("[data-testid=job-row][data-state=FAILED]")
        expect(failed).to_have_count(1, timeout=WAIT_MS)
        expect(failed.get_by_test_id("job-error")).to_contain_text("calibration table")
        expect(failed).to_contain_text("flaky")
        job_id = failed.get_attribute("data-job-id")
        tab.shot("05-jobs-failed")
        page.get_by_test_id("jobs-filter").select_option("")
        row = page.locator(f"[data-testid=job-row][data-job-id='{job_id}']")
        expect(row.get_by_test_id("job-state")).to_have_text("FAILED")
        expect(row.get_by_test_id("job-cancel")).to_be_disabled()
        (tmp_path / "calibration.table").write_text("fixed\n")
        row.get_by_test_id("job-retry").click()
        expect(tab.by("notice")).to_contain_text(f"Job {job_id}: queued again")
        expect(row.get_by_test_id("job-state")).to_have_text("SUCCEEDED", timeout=WAIT_MS)
        expect(row.get_by_test_id("job-retry")).to_be_disabled()
        assert tab.error_line() == ""
        tab.shot("06-jobs-retried")
        row.get_by_role("link", name=f"#{job_id}").click()  # the job: its results, delivered
        expect(page).to_have_url(re.compile(rf"#/jobs/{job_id}$"))
        expect(tab.by("job-detail-state")).to_have_text("SUCCEEDED")
        result = page.locator("[data-testid=result-row]")
        expect(result).to_have_count(1)  # flaky reports text only: one text SR
        expect(result).to_contain_text("text_sr")
        expect(result).to_contain_text("results SENT")
        expect(tab.by("main")).to_contain_text("Destinations")
        tab.shot("07-job")

        # -- plugins: production and shadow side by side, then the promotion ------------------
        tab.nav("plugins")
        card = page.locator("[data-testid=plugin-card][data-plugin=bright]")
        v1 = card.locator("[data-testid=plugin-version][data-version='1.0.0']")
        v2 = card.locator("[data-testid=plugin-version][data-version='2.0.0']")
        expect(v1.get_by_test_id("badge-production")).to_be_visible()
        expect(v2.get_by_test_id("badge-shadow")).to_be_visible()
        expect(v2.get_by_test_id("badge-production")).to_have_count(0)
        report = card.get_by_test_id("shadow-report")
        expect(report.get_by_test_id("shadow-row")).to_contain_text("bright@1.0.0")
        expect(report.get_by_test_id("shadow-row")).to_contain_text("bright@2.0.0")
        dice = float(report.get_by_test_id("shadow-dice").first.inner_text())
        assert 0.5 < dice < 1.0, dice  # the two thresholds differ by a few pixels
        tab.shot("08-plugins-shadow")
        before = (tmp_path / "routes.yaml").read_text()
        v2.get_by_test_id("plugin-promote").click()
        expect(tab.by("plugin-confirm")).to_contain_text("bright@2.0.0 in production")
        tab.by("plugin-confirm-yes").click()
        change = tab.by("routes-change")
        expect(change).to_have_attribute("data-action", "promote")
        expect(change).to_have_attribute("data-version", "2.0.0")
        expect(change.get_by_test_id("routes-changed")).to_contain_text("ct-bright")
        expect(change).to_contain_text("ct-bright: bright@1.0.0")
        after = (tmp_path / "routes.yaml").read_text()
        assert after != before
        routes = {r["name"]: r for r in yaml.safe_load(after)["routes"]}
        assert routes["ct-bright"]["run"] == ["bright@2.0.0"], after
        assert routes["ct-bright"].get("mode", "production") == "production"
        assert routes["ct-bright-candidate"].get("enabled", True) is False, after
        assert after.startswith("# routes for the console test"), "the operator's comment went"
        expect(v2.get_by_test_id("badge-production")).to_be_visible()
        expect(v1.get_by_test_id("badge-production")).to_have_count(0)
        expect(v2.get_by_test_id("badge-shadow")).to_have_count(0)  # its shadow route is off
        tab.shot("09-plugins-promoted")

        # -- and rolled back: production pins 1.0.0 again, the shadow route runs again ----------
        card.get_by_test_id("plugin-rollback").click()
        expect(tab.by("plugin-confirm")).to_contain_text("Roll bright back")
        tab.by("plugin-confirm-yes").click()
        expect(change).to_have_attribute("data-action", "rollback")
        expect(change).to_have_attribute("data-version", "1.0.0")
        expect(change).to_contain_text("ct-bright: bright@2.0.0")
        rolled = yaml.safe_load((tmp_path / "routes.yaml").read_text())["routes"]
        routes = {r["name"]: r for r in rolled}
        assert routes["ct-bright"]["run"] == ["bright@1.0.0"], rolled
        assert routes["ct-bright-candidate"].get("enabled", True) is True, rolled
        expect(v1.get_by_test_id("badge-production")).to_be_visible()
        expect(v2.get_by_test_id("badge-shadow")).to_be_visible()
        tab.shot("10-plugins-rolled-back")
        # promoted once more, for good
        v2.get_by_test_id("plugin-promote").click()
        tab.by("plugin-confirm-yes").click()
        expect(change).to_have_attribute("data-action", "promote")
        expect(v2.get_by_test_id("badge-production")).to_be_visible()
        after = (tmp_path / "routes.yaml").read_text()
        assert yaml.safe_load(after)["routes"][0]["run"] == ["bright@2.0.0"], after

        # -- routes: the promoted file in the editor, checked; explain the CT study ------------
        tab.nav("routes")
        area = tab.by("routes-text")
        expect(area).to_have_value(after)
        tab.by("routes-check").click()
        expect(tab.by("routes-check-result")).to_have_attribute("data-ok", "true")
        area.fill(after.replace("send_to: [results]", "send_to: [nowhere]", 1))
        expect(tab.by("routes-dirty")).to_be_visible()
        tab.by("routes-check").click()
        expect(tab.by("routes-check-result")).to_have_attribute("data-ok", "false")
        expect(tab.by("routes-error").first).to_contain_text("nowhere")
        tab.by("routes-save").click()  # the node refuses it: checked before it is written
        expect(tab.by("routes-check-result")).to_contain_text("not saved")
        expect(tab.by("routes-error").first).to_contain_text("unknown destination 'nowhere'")
        assert (tmp_path / "routes.yaml").read_text() == after
        tab.by("explain-uid").fill("1.2.3.999")  # no such study: the error line says so
        tab.by("explain-run").click()
        expect(tab.by("error-line")).to_be_visible()
        expect(tab.by("error-text")).to_contain_text("404")
        expect(tab.by("error-text")).to_contain_text("no study 1.2.3.999")
        tab.shot("11-routes-error-line")
        tab.by("explain-uid").fill(ct)
        tab.by("explain-run").click()
        expect(tab.by("explain-text")).to_contain_text("ct-bright")
        expect(tab.by("error-line")).to_be_hidden()
        assert (tmp_path / "routes.yaml").read_text() == after  # Check writes nothing
        tab.shot("12-routes-check-explain")
        edited = after + "# reviewed on the ward\n"
        area.fill(edited)
        tab.by("routes-save").click()
        expect(tab.by("routes-saved")).to_contain_text("Saved and reloaded")
        expect(tab.by("routes-dirty")).to_be_hidden()
        assert (tmp_path / "routes.yaml").read_text() == edited

        # -- outbox, latency, actions ----------------------------------------------------------
        tab.nav("outbox")
        destinations = tab.by("outbox-destinations")
        expect(destinations.locator("tr[data-destination=results]")).to_be_visible()
        expect(tab.by("outbox-retry-dead")).to_be_disabled()
        expect(tab.by("outbox-retry-dead")).to_have_attribute("title", "no dead letters")
        tab.shot("13-outbox")
        tab.nav("latency")
        day = tab.by("latency-day")
        expect(day.locator("[data-testid=latency-row][data-plugin=bright]").first).to_be_visible()
        tab.shot("14-latency")
        tab.nav("actions")
        promotions = page.locator("[data-testid=action-row][data-action='plugin.promote']")
        expect(promotions).to_have_count(2)
        expect(promotions.first).to_contain_text("bright@2.0.0")
        expect(page.locator("[data-testid=action-row][data-action='job.retry']")).to_contain_text(
            job_id
        )
        edit = page.locator("[data-testid=action-row][data-action='routes.edit']")
        expect(edit).to_have_count(2)  # the refused save and the saved one
        expect(edit.first.get_by_test_id("action-diff")).to_contain_text("+ # reviewed on the ward")
        expect(edit.nth(1)).to_contain_text("refused")
        rollback = page.locator("[data-testid=action-row][data-action='plugin.rollback']")
        expect(rollback.get_by_test_id("action-diff")).to_contain_text("- run: [bright@2.0.0]")
        expect(rollback.get_by_test_id("action-diff")).to_contain_text("+ run: [bright@1.0.0]")
        tab.shot("15-actions")

        # -- the same pages on a ward workstation ----------------------------------------------
        page.set_viewport_size(WARD)
        tab.nav("overview")
        expect(tab.by("count-jobs-SUCCEEDED")).to_have_text("3")
        expect(tab.by("count-jobs-FAILED")).to_have_text("0")
        expect(tab.by("count-outbox-results-SENT")).not_to_have_text("0")
        tab.shot("16-overview-1920")
        tab.go(f"studies/{ct}")
        expect(tab.by("study-phase")).to_have_attribute("data-phase", "SUCCEEDED")
        expect(tab.by("timeline").locator("[data-event=sent]").first).to_be_visible()
        tab.shot("17-study-1920")
        tab.nav("plugins")
        expect(card.get_by_test_id("shadow-row").first).to_be_visible()
        tab.shot("18-plugins-1920")

        assert not tab.problems, "\n".join(tab.problems)


def test_a_viewer_reads_every_page_but_may_not_act(tmp_path, console_tab):
    """A viewer logs in with a password: every page reads, every action is disabled and says
    why, and no patient name shows (show_patient_names is off)."""
    from playwright.sync_api import expect

    sections = site(tmp_path)
    users = tmp_path / "data" / "console" / "users.yaml"
    users.parent.mkdir(parents=True)
    add_entry(
        users, "users", {"name": "ward", "role": "viewer", "password": hash_password("s3cret")}
    )
    origin = f"http://127.0.0.1:{sections['http']['port']}"
    with running_node(tmp_path, **sections) as node, console_tab(origin) as tab:
        page = tab.page
        mr = send_study(tmp_path / "studies", node.port, "MR", 2)
        tab.go("overview")
        tab.by("login-user").fill("ward")
        tab.by("login-password").fill("s3cret")
        tab.by("login-submit").click()
        expect(tab.by("who")).to_contain_text("ward")
        expect(tab.by("who")).to_contain_text("viewer")
        expect(tab.by("count-instances")).to_have_text("2")

        tab.nav("studies")
        expect(page.locator(f"[data-testid=study-row][data-uid='{mr}']")).to_be_visible()
        assert "Synthetic" not in page.inner_text("main"), "a patient name is shown"
        tab.nav("jobs")
        failed = page.locator("[data-testid=job-row][data-state=FAILED]")
        expect(failed).to_have_count(1, timeout=WAIT_MS)
        failed_id = failed.get_attribute("data-job-id")
        retry = failed.get_by_test_id("job-retry")
        expect(retry).to_be_disabled()
        expect(retry).to_have_attribute("title", re.compile("needs the admin role"))
        tab.shot("01-viewer-jobs")

        tab.nav("plugins")
        promote = page.locator("[data-testid=plugin-promote][data-version='2.0.0']")
        expect(promote).to_be_disabled()
        expect(promote).to_have_attribute("title", re.compile("needs the admin role"))
        expect(page.locator("[data-testid=plugin-rollback]").first).to_be_disabled()
        tab.nav("routes")
        expect(tab.by("routes-text")).to_have_value(re.compile("ct-bright"))
        expect(tab.by("routes-save")).to_be_disabled()
        tab.by("routes-check").click()  # a viewer may check
        expect(tab.by("routes-check-result")).to_have_attribute("data-ok", "true")
        tab.shot("02-viewer-routes")

        # the API refuses a viewer's change even if the page were bypassed
        status = page.evaluate(
            """async (id) => {
                 const me = await (await fetch('/api/me')).json();
                 const answer = await fetch(`/api/jobs/${id}/retry`, {method: 'POST',
                   headers: {'X-CSRF-Token': me.csrf_token}});
                 return answer.status;
               }""",
            failed_id,
        )
        assert status == 403
        assert not tab.problems, "\n".join(tab.problems)
