"""The console browser test's site and page helpers: three python plugins and the routes
that run them, the node.yaml sections for ``running_node``, Chromium under Playwright, and a
console tab that keeps screenshots and collects page and console errors."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from conftest import REPO, free_port
from ingest_support import make_instances
from pydicom.uid import generate_uid
from runtime_support import write_plugin
from viewer_page import launch_args
from viewer_server import CHROMIUM

from node.scu import Peer, send

ARTEFACTS = Path(os.environ.get("AINODE_ARTEFACTS", REPO / "test-artefacts" / "console"))
LAPTOP = {"width": 1280, "height": 800}

ROUTES = """\
# routes for the console test
routes:
  - name: ct-bright
    when: {modality: CT}
    run: [bright@1.0.0]
    send_to: [results]
  - name: ct-bright-candidate
    mode: shadow
    when: {modality: CT}
    run: [bright@2.0.0]
    send_to: [review]
  - name: mr-flaky
    when: {modality: MR}
    run: [flaky]
    send_to: [results]
"""

# version 2 draws its mask at a higher threshold: the shadow report compares the two
BRIGHT = """
    import numpy as np
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from models.api import (
        AlgorithmIdentification, Finding, Findings, Measurement, Report, Segment,
    )

    THRESHOLD_HU = {"1.0.0": -1000.0, "2.0.0": -995.0}
    MM3 = Code("mm3", "UCUM", "cubic millimeter")


    class Bright:
        def __init__(self, manifest):
            self.name, self.version = manifest.name, manifest.version

        def load(self, device):
            pass

        def run(self, series):
            mask = series.pixels > THRESHOLD_HU[self.version]
            row, column = series.pixel_spacing
            volume = float(mask.sum() * row * column * 1.25)
            return Findings(
                algorithm=AlgorithmIdentification(self.name, self.version),
                segments=(
                    Segment(
                        key="bright",
                        label="Bright tissue",
                        category=codes.SCT.MorphologicallyAbnormalStructure,
                        type=codes.SCT.Nodule,
                        mask=mask,
                        color_rgb=(255, 160, 0),
                    ),
                ),
                findings=(
                    Finding(
                        tracking_id="Bright 1",
                        finding_type=codes.SCT.Nodule,
                        segment_key="bright",
                        measurements=(Measurement(codes.SCT.Volume, volume, MM3),),
                    ),
                ),
                report=Report(f"Bright tissue of {volume:.0f} mm3.", "Test result only."),
            )
"""

FLAKY = """
    from pathlib import Path

    from models.api import AlgorithmIdentification, Findings, Report

    CALIBRATION = Path({calibration!r})


    class Flaky:
        def __init__(self, manifest):
            self.name, self.version = manifest.name, manifest.version

        def load(self, device):
            pass

        def run(self, series):
            if not CALIBRATION.exists():
                raise RuntimeError(f"calibration table {{CALIBRATION.name}} is missing")
            return Findings(
                algorithm=AlgorithmIdentification(self.name, self.version),
                report=Report("Calibrated run.", "Test result only."),
            )
"""


def chromium_or_skip() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[test]')")
    if missing:
        message = "console browser tests need: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def site(folder: Path) -> dict:
    """Plugins, routes.yaml and node.yaml sections for ``running_node``."""
    plugins = folder / "plugins"
    for version in ("1.0.0", "2.0.0"):
        write_plugin(
            plugins / f"bright-{version}",
            name="bright",
            version=version,
            entry="plugin:Bright",
            code=BRIGHT,
        )
    calibration = folder / "calibration.table"
    write_plugin(
        plugins / "flaky",
        name="flaky",
        entry="plugin:Flaky",
        code=FLAKY.format(calibration=str(calibration)),
    )
    (folder / "routes.yaml").write_text(ROUTES)
    return {
        "stability": {"stable_after_s": 8, "after_release_s": None, "poll_interval_s": 0.1},
        "routes_file": str(folder / "routes.yaml"),
        "plugin_dirs": [str(plugins)],
        "jobs": {"workers": 2, "timeout_s": 120, "max_attempts": 1, "backoff_s": 0},
        "destinations": {
            "results": {"kind": "folder", "path": str(folder / "results")},
            "review": {"kind": "folder", "path": str(folder / "review"), "shadow": True},
        },
        "dispatch": {"backoff_s": 0.2, "backoff_max_s": 2},
        "http": {"port": free_port()},
    }


def chromium_browser() -> Iterator:
    """Debian's Chromium under Playwright, closed when the generator is; skips (fails in CI)
    where either is missing."""
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(**launch_args())
        try:
            yield chromium
        finally:
            chromium.close()


class Console:
    """A tab on the console: where it is, its screenshots, and what went wrong in it."""

    def __init__(self, page, origin: str, artefacts: Path) -> None:
        self.page = page
        self.origin = origin
        self.artefacts = artefacts
        self.problems: list[str] = []
        artefacts.mkdir(parents=True, exist_ok=True)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)

    def _console(self, message) -> None:
        # a failed fetch is logged as "Failed to load resource"; the page's own error line
        # shows those, and the tests provoke some (the first /api/me before login)
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(f"console error: {message.text}")

    def by(self, testid: str):
        return self.page.get_by_test_id(testid)

    def go(self, route: str) -> None:
        self.page.goto(f"{self.origin}/console/#/{route}")

    def nav(self, name: str) -> None:
        self.by(f"nav-{name}").click()

    def shot(self, name: str) -> Path:
        path = self.artefacts / f"{name}.png"
        self.page.evaluate("window.scrollTo(0, 0)")  # the sticky header stays at the top
        self.page.screenshot(path=str(path), full_page=True)
        # readable means no sideways scrolling, on a laptop as on a ward workstation
        wider = self.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if wider > 0:
            self.problems.append(f"{name}: the page is {wider} px wider than the window")
        return path

    def error_line(self) -> str:
        line = self.by("error-line")
        return line.inner_text() if line.is_visible() else ""


def console_opener(browser, test_name: str) -> Callable[[str], AbstractContextManager[Console]]:
    """Opens a tab in a fresh browser context: ``with open_console(origin) as tab``. The last
    screen is kept under the test's name, pass or fail; open it inside ``running_node`` so
    that it is taken while the node still answers."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name)

    @contextmanager
    def open_console(origin: str) -> Iterator[Console]:
        context = browser.new_context(viewport=LAPTOP)
        tab = Console(context.new_page(), origin, ARTEFACTS / name)
        try:
            yield tab
        finally:
            try:
                tab.shot("zz-final")
            finally:
                context.close()

    return open_console


def send_study(folder: Path, port: int, modality: str, count: int) -> str:
    study = generate_uid()
    paths = make_instances(folder / modality, count, study_uid=study, modality=modality)
    report = send(paths, Peer("AINODE", "127.0.0.1", port), calling_ae="MODALITY")
    assert report.ok, report
    return study


def events_of(tab: Console) -> list[str]:
    return tab.page.locator("[data-testid=timeline-entry]").evaluate_all(
        "els => els.map(e => e.dataset.event)"
    )
