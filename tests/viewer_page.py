"""Drive the OHIF Viewer in Chromium (Playwright, sync API) as a radiologist would, and read back
what it shows: OHIF's own services (``window.services``, which OHIF's init publishes), the
viewport's pixels, and every console error, uncaught exception and error boundary on the way.

Every wait is a condition with a deadline. Coordinates: ``(column, row)`` image pixel indices
(pixel centres) are mapped to the canvas with cornerstone's ``imageData.indexToWorld`` and
``viewport.worldToCanvas``, the same transform OHIF draws with.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import ConsoleMessage, Error, Page
from viewer_server import CHROMIUM

# Root in a container: no sandbox; WebGL through ANGLE on SwiftShader (cornerstone renders with
# WebGL; without it OHIF falls back to CPU rendering and says so)
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--use-gl=angle",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)
VIEWPORT_SIZE = {"width": 1400, "height": 900}
# OHIF's onboarding tour covers the viewport on a first visit: mark it as seen
INIT_SCRIPT = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
BOUNDARY = re.compile(r"Error Boundary")

_VIEWPORT_JS = """() => {
  const {viewportGridService, cornerstoneViewportService} = window.services;
  const id = viewportGridService.getActiveViewportId();
  return [id, cornerstoneViewportService.getCornerstoneViewport(id)];
}"""
_RENDERED_JS = f"""() => {{
  try {{  // services exist before the viewport grid has its implementation
    const [id, vp] = ({_VIEWPORT_JS})();
    return Boolean(vp && vp.getCurrentImageId() && vp.getImageData());
  }} catch (e) {{ return false; }}
}}"""
_SHOW_SOP_JS = f"""async (sop) => {{
  const [id, vp] = ({_VIEWPORT_JS})();
  const index = vp.getImageIds().findIndex(imageId => imageId.includes(`/instances/${{sop}}/`));
  if (index < 0) return `no image of SOP ${{sop}} in viewport ${{id}} (${{vp.type}})`;
  await vp.setImageIdIndex(index);
  return null;
}}"""
_GEOMETRY_JS = f"""() => {{
  const [id, vp] = ({_VIEWPORT_JS})();
  const {{imageData}} = vp.getImageData();
  const toCanvas = ij => vp.worldToCanvas(imageData.indexToWorld([ij[0], ij[1], 0]));
  const rect = vp.canvas.getBoundingClientRect();
  return {{viewportId: id, type: vp.type, imageId: vp.getCurrentImageId(),
    rect: [rect.x, rect.y, rect.width, rect.height],
    origin: toCanvas([0, 0]), colStep: toCanvas([1, 0]), rowStep: toCanvas([0, 1])}};
}}"""
_SEGMENTATIONS_JS = """() => {
  const {segmentationService, viewportGridService} = window.services;
  const viewportId = viewportGridService.getActiveViewportId();
  return segmentationService.getSegmentations().map(s => ({
    id: s.segmentationId, label: s.label,
    shown: segmentationService.getSegmentationRepresentations(viewportId,
      {segmentationId: s.segmentationId}).length > 0,
    segments: Object.values(s.segments).filter(Boolean).map(x => ({
      index: x.segmentIndex, label: x.label,
      color: segmentationService.getSegmentColor(viewportId, s.segmentationId, x.segmentIndex),
    })),
  }));
}"""
# what the SR viewport draws: OHIF's DICOMSRDisplay annotations, one per finding (its UID is
# the finding's Tracking UID), with the label lines OHIF shows beside the drawing
_SR_ANNOTATIONS_JS = """() => window.cornerstoneTools.annotation.state.getAllAnnotations()
  .filter(a => a.metadata?.toolName === 'DICOMSRDisplay').map(a => ({
    uid: a.annotationUID, imageId: a.metadata.referencedImageId || '',
    labels: (a.data.labels || []).map(l => `${l.label}: ${l.value}`),
    graphics: Object.values(a.data.renderableData || {}).reduce((n, list) => n + list.length, 0),
  }))"""


@dataclass
class Problems:
    """What went wrong on the page: console errors, uncaught exceptions, error boundaries."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    boundaries: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return (
            [f"console error: {e}" for e in self.console_errors]
            + [f"page error: {e}" for e in self.page_errors]
            + [f"error boundary: {e}" for e in self.boundaries]
        )


@dataclass(frozen=True)
class CanvasGeometry:
    """Where the current image lies on the viewport canvas (CSS pixels = screenshot pixels)."""

    image_id: str
    rect: tuple[float, float, float, float]  # canvas x, y, width, height in the page
    origin: np.ndarray  # canvas (x, y) of image index (0, 0)
    column_step: np.ndarray  # canvas move per image column
    row_step: np.ndarray  # canvas move per image row

    def to_canvas(self, column: float, row: float) -> np.ndarray:
        return self.origin + column * self.column_step + row * self.row_step

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """Canvas (..., 2) → image (column, row) (..., 2)."""
        matrix = np.stack([self.column_step, self.row_step], axis=1)
        return np.linalg.solve(matrix, (xy - self.origin).reshape(-1, 2).T).T.reshape(xy.shape)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


class OhifPage:
    """One OHIF tab on one study; ``problems`` collects from the moment it is made."""

    def __init__(self, page: Page, origin: str, artefacts: Path) -> None:
        self.page = page
        self.origin = origin
        self.artefacts = artefacts
        self.problems = Problems()
        self.log: list[str] = []  # every console line, "type: text"
        page.add_init_script(INIT_SCRIPT)
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)

    def _on_console(self, message: ConsoleMessage) -> None:
        text = message.text
        self.log.append(f"{message.type}: {text}")
        if message.type == "error":
            self.problems.console_errors.append(_first_line(text))
        elif BOUNDARY.search(text):  # OHIF logs its boundaries with console.debug
            self.problems.boundaries.append(_first_line(text))

    def _on_page_error(self, error: Error) -> None:
        self.problems.page_errors.append(f"{error.name}: {error.message}")

    # -- navigation ----------------------------------------------------------------------
    def open_study(self, study_instance_uid: str, timeout: float = 90) -> None:
        """Open the viewer route and wait until the first viewport shows an image."""
        self.page.goto(f"{self.origin}/viewer?StudyInstanceUIDs={study_instance_uid}")
        self.page.wait_for_function(_RENDERED_JS, timeout=timeout * 1000, polling=100)

    def display_sets(self) -> list[dict]:
        return self.page.evaluate(
            """() => window.services.displaySetService.getActiveDisplaySets().map(d => ({
              uid: d.displaySetInstanceUID, modality: d.Modality,
              description: d.SeriesDescription || '', series: d.SeriesInstanceUID}))"""
        )

    def display_set_of(self, series_instance_uid: str, timeout: float = 30) -> str:
        """The display set OHIF made of a series (waits: OHIF adds them as metadata arrives)."""
        self.page.wait_for_function(
            """(series) => window.services.displaySetService.getActiveDisplaySets()
                 .some(d => d.SeriesInstanceUID === series)""",
            arg=series_instance_uid,
            timeout=timeout * 1000,
        )
        (uid,) = [d["uid"] for d in self.display_sets() if d["series"] == series_instance_uid]
        return uid

    def load(
        self,
        display_set_uid: str,
        settled: str,
        timeout: float = 60,
    ) -> bool:
        """Double-click the display set's thumbnail as a user does, answer OHIF's "open this
        segmentation / track these measurements?" prompt with Yes, and poll until the JS
        expression ``settled`` holds (True) or OHIF reports an error or an error boundary
        (False); the deadline also gives False."""
        mark = len(self.problems.all())
        self.page.locator(f"#thumbnail-{display_set_uid}").dblclick()
        yes = self.page.get_by_role("button", name="Yes", exact=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if yes.count():
                yes.first.click()
            elif self.page.evaluate(
                f"() => {{ try {{ return Boolean({settled}); }} catch {{ }} }}"
            ):
                return True
            if len(self.problems.all()) > mark:
                return False
            self.page.wait_for_timeout(100)  # the poll interval; the deadline bounds it
        return False

    def show_image(self, sop_instance_uid: str, timeout: float = 30) -> None:
        """Scroll the active viewport to the image of ``sop_instance_uid`` and wait for it."""
        failure = self.page.evaluate(_SHOW_SOP_JS, sop_instance_uid)
        assert failure is None, failure
        self.page.wait_for_function(
            f"""(sop) => {{ const [id, vp] = ({_VIEWPORT_JS})();
                return vp.getCurrentImageId().includes(`/instances/${{sop}}/`); }}""",
            arg=sop_instance_uid,
            timeout=timeout * 1000,
        )
        self._rendered()

    # -- state -----------------------------------------------------------------------------
    def segmentations(self) -> list[dict]:
        """OHIF's segmentations: id, label, shown (in the active viewport), segments
        (index, label, RGBA display colour)."""
        return self.page.evaluate(_SEGMENTATIONS_JS)

    def sr_annotations(self) -> dict[str, dict]:
        """The SR viewport's drawings by annotation UID (= Tracking UID): imageId, labels
        ("Long Axis: 11.00 mm"), number of graphics."""
        return {a["uid"]: a for a in self.page.evaluate(_SR_ANNOTATIONS_JS)}

    def annotation_text(self, uid: str) -> str:
        """The text OHIF draws for one annotation on the current image."""
        return self.page.evaluate(
            """(uid) => [...document.querySelectorAll(`[data-annotation-uid="${uid}"]`)]
                 .map(e => e.textContent).join(' | ')""",
            uid,
        )

    def geometry(self) -> CanvasGeometry:
        g = self.page.evaluate(_GEOMETRY_JS)
        origin = np.asarray(g["origin"], float)
        return CanvasGeometry(
            g["imageId"],
            tuple(g["rect"]),
            origin,
            np.asarray(g["colStep"], float) - origin,
            np.asarray(g["rowStep"], float) - origin,
        )

    def text(self) -> str:
        return self.page.locator("body").inner_text()

    # -- pixels ----------------------------------------------------------------------------
    def canvas_rgb(self, name: str) -> np.ndarray:
        """The viewport canvas as (rows, columns, 3) uint8; also saved as ``name``.png."""
        x, y, width, height = self.geometry().rect
        png = self.page.screenshot(clip={"x": x, "y": y, "width": width, "height": height})
        self.artefacts.mkdir(parents=True, exist_ok=True)
        (self.artefacts / f"{name}.png").write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def save_rgb(self, name: str, rgb: np.ndarray) -> Path:
        """Keep an image the test made (e.g. where it expected a colour) beside the shots."""
        self.artefacts.mkdir(parents=True, exist_ok=True)
        path = self.artefacts / f"{name}.png"
        Image.fromarray(rgb.astype(np.uint8)).save(path)
        return path

    def with_and_without_segment(
        self, segmentation_id: str, segment_index: int, name: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The canvas with the segment shown and with it hidden (OHIF's eye toggle): the
        pixels that differ are the ones this segment draws, whatever else shares its colour."""
        shown = self.canvas_rgb(name)
        self._segment_visible(segmentation_id, segment_index, False)
        try:
            hidden = self.canvas_rgb(f"{name}-hidden")
        finally:
            self._segment_visible(segmentation_id, segment_index, True)
        return shown, hidden

    def with_and_without_annotation(self, uid: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The canvas with an annotation shown and hidden (cornerstone's visibility state):
        the pixels that differ are the lines, outlines and label this annotation draws."""
        shown = self.canvas_rgb(name)
        self._annotation_visible(uid, False)
        try:
            hidden = self.canvas_rgb(f"{name}-hidden")
        finally:
            self._annotation_visible(uid, True)
        return shown, hidden

    def _annotation_visible(self, uid: str, visible: bool) -> None:
        self.page.evaluate(
            f"""([uid, visible]) => {{
                 const {{visibility}} = window.cornerstoneTools.annotation;
                 visibility.setAnnotationVisibility(uid, visible);
                 const [id, vp] = ({_VIEWPORT_JS})(); vp.render(); }}""",
            [uid, visible],
        )
        self._rendered()

    def _segment_visible(self, segmentation_id: str, segment_index: int, visible: bool) -> None:
        self.page.evaluate(
            """([id, index, visible]) => window.services.segmentationService.setSegmentVisibility(
                 window.services.viewportGridService.getActiveViewportId(), id, index, visible)""",
            [segmentation_id, segment_index, visible],
        )
        self._rendered()

    def _rendered(self) -> None:
        """Three animation frames: cornerstone renders a change on the next frame."""
        self.page.evaluate(
            """() => new Promise(done => { let n = 3;
                 const tick = () => (--n ? requestAnimationFrame(tick) : done());
                 requestAnimationFrame(tick); })"""
        )

    def screenshot(self, name: str) -> Path:
        self.artefacts.mkdir(parents=True, exist_ok=True)
        path = self.artefacts / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path


def drawn_pixels(shown: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Pixels a layer changes: shown and hidden differ by more than JPEG-free noise."""
    return np.abs(shown.astype(np.int16) - hidden.astype(np.int16)).sum(axis=2) > 24


def colour_cosine(shown: np.ndarray, hidden: np.ndarray, where: np.ndarray, colour) -> float:
    """How well the change at ``where`` points toward ``colour`` in chroma (1: the same hue).
    Blending a colour over any grey or tinted pixel moves it toward that colour."""
    change = (shown.astype(np.float32) - hidden.astype(np.float32))[where].mean(axis=0)
    target = np.asarray(colour[:3], np.float32)
    change, target = change - change.mean(), target - target.mean()
    return float(change @ target / (np.linalg.norm(change) * np.linalg.norm(target) + 1e-6))


def mask_on_canvas(
    mask: np.ndarray, geometry: CanvasGeometry, shape: tuple[int, int]
) -> np.ndarray:
    """The image mask (rows, columns) resampled onto canvas pixels (nearest image pixel)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    xy = np.stack([xs + 0.5, ys + 0.5], axis=-1).astype(float)
    image = np.rint(geometry.to_image(xy)).astype(int)
    column, row = image[..., 0], image[..., 1]
    inside = (column >= 0) & (column < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
    out = np.zeros(shape, bool)
    out[inside] = mask[row[inside], column[inside]]
    return out


def launch_args() -> dict:
    """Playwright ``chromium.launch`` keywords: Debian's Chromium, never a downloaded one."""
    return {"executable_path": str(CHROMIUM), "args": list(CHROMIUM_ARGS), "headless": True}
