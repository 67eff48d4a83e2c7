"""Our SEG, TID 1500 SR and text SR as a hospital sees them: in the OHIF Viewer (3.13.2, the
npm build ``scripts/fetch-ohif.sh`` pins), reading DICOMweb from a real Orthanc, in Chromium.

Each demo phantom goes through its reference plugin chain and the output builders once per
session; sources and results are stored in one Orthanc; each test opens the study in a fresh
tab, loads one result the way a user does (double-click its thumbnail, "Yes" to the prompt) and
reads OHIF's own state and pixels. Screenshots go to ``$AINODE_ARTEFACTS`` (default
``test-artefacts/viewer``). With ``CI`` set a missing peer fails the run instead of skipping.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset
from viewer_page import (
    OhifPage,
    colour_cosine,
    drawn_pixels,
    launch_args,
    mask_on_canvas,
)
from viewer_products import PHANTOMS, Product, make_product, measurement_groups
from viewer_server import REPO, dicomweb_orthanc, missing_peers, serving

from node.shared_types import OutputKind

pytestmark = [pytest.mark.viewer, pytest.mark.timeout(900)]
ARTEFACTS = Path(os.environ.get("AINODE_ARTEFACTS", REPO / "test-artefacts" / "viewer"))
KEYS = [phantom.key for phantom in PHANTOMS]
# a segment counts as drawn when it changes at least this share of its mask's canvas pixels
DRAWN_SHARE = 0.3
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@pytest.fixture(scope="session")
def peers() -> None:
    missing = missing_peers()
    if missing:
        message = "viewer tests need: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def products(peers, tmp_path_factory) -> dict[str, Product]:
    return {p.key: make_product(p, tmp_path_factory.mktemp(f"viewer-{p.key}")) for p in PHANTOMS}


@pytest.fixture(scope="session")
def origin(peers, products, tmp_path_factory) -> Iterator[str]:
    """Orthanc holding every source and result, and OHIF in front of it: the page's origin."""
    orthanc = dicomweb_orthanc(tmp_path_factory.mktemp("viewer-orthanc"))
    orthanc.start()
    try:
        for product in products.values():
            for path in (*product.sources, *product.files):
                orthanc.upload(path)
        with serving(REPO / ".cache" / "ohif" / "3.13.2" / "dist", orthanc.http_port) as server:
            yield server.origin
    finally:
        orthanc.stop()


@pytest.fixture(scope="session")
def browser(peers):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(**launch_args())
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def ohif(browser, origin, request) -> Iterator[OhifPage]:
    """A fresh tab; its final screenshot is kept as an artefact, pass or fail."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    page = OhifPage(context.new_page(), origin, ARTEFACTS / name)
    try:
        yield page
    finally:
        try:
            page.screenshot("final")
        finally:
            context.close()


def open_result(ohif: OhifPage, product: Product, kind: OutputKind, settled: str) -> bool:
    ohif.open_study(product.study_instance_uid)
    uid = ohif.display_set_of(str(product.results[kind].SeriesInstanceUID))
    return ohif.load(uid, settled.replace("DISPLAY_SET", uid))


def assert_no_problems(ohif: OhifPage, what: str) -> None:
    problems = ohif.problems.all()
    assert not problems, f"{what}: OHIF reported {len(problems)} problem(s):\n" + "\n".join(
        problems
    )


# -- SEG -------------------------------------------------------------------------------------
# hydrated: the viewport is back on the referenced images with the SEG as a labelmap over them
SEG_SHOWN = """!window.services.viewportGridService.getDisplaySetsUIDsForViewport(
  window.services.viewportGridService.getActiveViewportId()).includes('DISPLAY_SET')
&& window.services.segmentationService.getSegmentations().some(s =>
  s.segmentationId === 'DISPLAY_SET' && Object.values(s.segments).some(Boolean)
  && window.services.segmentationService.getSegmentationRepresentations(
       window.services.viewportGridService.getActiveViewportId(),
       {segmentationId: s.segmentationId}).length > 0)"""


@pytest.mark.parametrize("key", [p.key for p in PHANTOMS if OutputKind.SEG in p.outputs])
def test_seg_every_segment_listed_and_drawn(key: str, products, ohif: OhifPage) -> None:
    product = products[key]
    seg = product.results[OutputKind.SEG]
    expected = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    settled = open_result(ohif, product, OutputKind.SEG, SEG_SHOWN)
    ohif.screenshot("seg-loaded")
    assert_no_problems(ohif, f"{key} SEG")
    assert settled, f"{key} SEG: OHIF never showed the segmentation; log tail: {ohif.log[-5:]}"

    (segmentation,) = [s for s in ohif.segmentations() if s["shown"]]
    listed = {s["label"]: s for s in segmentation["segments"]}
    missing = [label for label in expected if label not in listed]
    assert not missing, (
        f"{key} SEG: {len(expected)} segments in the file, OHIF lists {len(listed)} "
        f"({sorted(listed)}); missing {missing}"
    )

    failures = []
    for segment in product.findings.segments:
        frames = [int(i) for i in segment.frames_present]
        if not frames:
            continue
        frame = max(frames, key=lambda i: int(segment.binary[i].sum()))
        ohif.show_image(product.source.sources[frame].sop_instance_uid)
        shown = listed[segment.label]
        colour = tuple(int(c) for c in shown["color"][:3])
        with_it, without = ohif.with_and_without_segment(
            segmentation["id"], shown["index"], f"seg-{segment.key}-frame{frame}"
        )
        region = mask_on_canvas(segment.binary[frame], ohif.geometry(), with_it.shape[:2])
        drawn = drawn_pixels(with_it, without)
        inside, anywhere = int((drawn & region).sum()), int(drawn.sum())
        where = f"{segment.label} (colour {colour}) on frame {frame}"
        if inside < max(5, DRAWN_SHARE * region.sum()):
            failures.append(
                f"{where}: draws {inside} of the {int(region.sum())} canvas pixels of its mask "
                f"({anywhere} anywhere on the canvas)"
            )
            magenta = np.array([255, 0, 255], np.uint8)
            ohif.save_rgb(
                f"seg-{segment.key}-expected-in-magenta",
                np.where((region & ~drawn)[..., None], magenta, with_it),
            )
        elif (cosine := colour_cosine(with_it, without, drawn & region, colour)) < 0.8:
            failures.append(f"{where}: drawn in another hue (cosine {cosine:.2f} to its colour)")
    keys = [f.segment_key for f in product.findings.findings if f.segment_key]
    overview = product.findings.segment(keys[0]) if keys else product.findings.segments[0]
    frames = [int(i) for i in overview.frames_present]
    if frames:  # the README's picture: the slice where it is largest, whole window
        frame = max(frames, key=lambda i: int(overview.binary[i].sum()))
        ohif.show_image(product.source.sources[frame].sop_instance_uid)
    ohif.screenshot("overview")
    assert_no_problems(ohif, f"{key} SEG after scrolling")
    assert not failures, f"{key} SEG: segments not drawn where their masks are:\n" + "\n".join(
        failures
    )


# -- TID 1500 SR -----------------------------------------------------------------------------
def numbers_in(text: str) -> list[float]:
    return [float(n) for n in NUMBER.findall(text)]


def shows_value(text: str, value: float) -> bool:
    """The value appears in the text, to the precision OHIF rounds to (2 decimals)."""
    tolerance = max(0.006, 0.001 * abs(value))
    return any(abs(n - value) <= tolerance for n in numbers_in(text))


def check_drawing(ohif: OhifPage, group, annotation: dict, failures: list[str]) -> None:
    """On the SCOORDs' image: drawn around the SCOORDs, with every value in its label."""
    (sop,) = {scoord.sop_instance_uid for scoord in group.scoords}
    if f"/instances/{sop}/" not in annotation["imageId"]:
        failures.append(
            f"{group.tracking_id}: OHIF places it on {annotation['imageId']}, not {sop}"
        )
        return
    ohif.show_image(sop)
    artefact = f"sr-{re.sub(r'[^A-Za-z0-9]+', '-', group.tracking_id)}"
    drawn = drawn_pixels(*ohif.with_and_without_annotation(group.tracking_uid, artefact))
    points = np.concatenate([np.asarray(s.points) for s in group.scoords]) - 0.5
    geometry = ohif.geometry()
    canvas = np.asarray([geometry.to_canvas(c, r) for c, r in points])
    # every SCOORD point has a pixel this annotation draws within 6 canvas pixels (OHIF
    # dashes the lines of a report it has not hydrated)
    ys, xs = np.nonzero(drawn)
    if xs.size == 0:
        failures.append(f"{group.tracking_id}: nothing drawn on its image {sop}")
        return
    distances = [float(np.min(np.hypot(xs - x, ys - y))) for x, y in canvas]
    if max(distances) > 6:
        worst = int(np.argmax(distances))
        failures.append(
            f"{group.tracking_id}: no line drawn at canvas {canvas[worst].round(1).tolist()} "
            f"(nearest drawn pixel {distances[worst]:.0f} px away)"
        )
    text = ohif.annotation_text(group.tracking_uid)
    unseen = [(name, v) for name, v, _ in group.values if not shows_value(text, v)]
    if unseen:
        failures.append(f"{group.tracking_id}: the drawn label {text!r} lacks {unseen}")


@pytest.mark.parametrize("key", KEYS)
def test_sr_every_measurement_listed_with_value_and_place(key: str, products, ohif) -> None:
    """Every finding of the report is drawn by OHIF's SR viewport on the slice its image
    coordinates name, around them, and labelled with every value the file states."""
    product = products[key]
    groups = measurement_groups(product.results[OutputKind.SR])
    assert groups, f"{key} SR: no measurement group"
    shown = (
        "window.cornerstoneTools.annotation.state.getAllAnnotations().filter("
        f"a => a.metadata?.toolName === 'DICOMSRDisplay').length >= {len(groups)}"
    )
    settled = open_result(ohif, product, OutputKind.SR, shown)
    ohif.screenshot("sr-loaded")
    annotations = ohif.sr_annotations()
    assert_no_problems(ohif, f"{key} SR")
    assert settled, (
        f"{key} SR: {len(groups)} findings in the file, OHIF draws {len(annotations)}; "
        f"log tail: {ohif.log[-5:]}"
    )
    failures = []
    for group in groups:
        annotation = annotations.get(group.tracking_uid)
        if annotation is None:
            failures.append(f"{group.tracking_id}: OHIF has no drawing for it")
            continue
        listed = " | ".join(annotation["labels"])
        unlisted = [(name, v) for name, v, _ in group.values if not shows_value(listed, v)]
        if unlisted:
            failures.append(f"{group.tracking_id}: OHIF lists {listed!r}, without {unlisted}")
        if annotation["graphics"] != len(group.scoords):
            failures.append(
                f"{group.tracking_id}: {len(group.scoords)} graphics in the file, OHIF draws "
                f"{annotation['graphics']}"
            )
        check_drawing(ohif, group, annotation, failures)
    ohif.show_image(groups[0].scoords[0].sop_instance_uid)
    ohif.screenshot("overview")  # the README's picture: the first finding, whole window
    assert_no_problems(ohif, f"{key} SR after scrolling")
    assert not failures, f"{key} SR: findings not shown as the file states:\n" + "\n".join(failures)


# -- text SR and burned-in SC ----------------------------------------------------------------
def report_lines(text_sr: Dataset) -> list[str]:
    """The report's TEXT items (findings, impression), first line each."""
    lines = []
    for item in text_sr.ContentSequence:
        for child in [item, *item.get("ContentSequence", [])]:
            if child.ValueType == "TEXT" and str(child.TextValue).strip():
                lines.append(str(child.TextValue).strip().splitlines()[0])
    return lines


@pytest.mark.parametrize("key", KEYS)
def test_text_sr_opens_and_shows_its_text(key: str, products, ohif: OhifPage) -> None:
    product = products[key]
    lines = report_lines(product.results[OutputKind.TEXT_SR])
    assert lines, f"{key} text SR has no text"
    first = lines[0][:60]
    settled = open_result(
        ohif, product, OutputKind.TEXT_SR, f"document.body.innerText.includes({first!r})"
    )
    ohif.screenshot("text-sr")
    assert_no_problems(ohif, f"{key} text SR")
    body = ohif.text()
    unseen = [line[:60] for line in lines if line[:60] not in body]
    assert settled and not unseen, (
        f"{key} text SR: OHIF does not show {unseen or lines} (page text: {body[:300]!r})"
    )


def test_burned_in_sc_renders(products, ohif: OhifPage) -> None:
    product = products["xray"]
    settled = open_result(
        ohif,
        product,
        OutputKind.BURNED_IN_SC,
        f"""(() => {{ const vp = window.services.cornerstoneViewportService.getCornerstoneViewport(
              window.services.viewportGridService.getActiveViewportId());
            return vp && vp.getCurrentImageId().includes(
              {str(product.results[OutputKind.BURNED_IN_SC].SOPInstanceUID)!r}); }})()""",
    )
    assert_no_problems(ohif, "xray burned-in SC")
    assert settled, "xray burned-in SC: the viewport never showed it"
    rgb = ohif.canvas_rgb("burned-in-sc")
    assert rgb.std() > 5, "xray burned-in SC: the viewport is blank"
