"""Where a viewer draws each finding: ``ImageGraphic`` as SR image coordinates (SCOORD).

A TID 1500 group that carries no image coordinates cannot be placed by a viewer: OHIF 3.13
lists none of the report's measurements and crashes on such a group (see
``docs/upstream/``). So every line a length was measured along becomes the measurement's
INFERRED FROM SCOORD (TID 300 → TID 320), and every outline of a finding without a segment
becomes the group's image region (TID 1410), each SELECTED FROM the source image (and frame)
the plugin drew on.

Coordinates follow PS3.3 C.18.6.1.1: (column, row) with (0, 0) the top left corner of the
top left pixel, so a pixel centre (row r, column c) in numpy terms is (c + 0.5, r + 0.5). An
outline is a closed POLYLINE (first point repeated last): SCOORD has no POLYGON type.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np

from models.api import Findings, GraphicKind, ImageGraphic, PluginInput
from node.outputs.errors import OutputBuildError

_GRAPHIC_TYPES = {
    GraphicKind.POINT: hd.sr.GraphicTypeValues.POINT,
    GraphicKind.LINE: hd.sr.GraphicTypeValues.POLYLINE,
    GraphicKind.OUTLINE: hd.sr.GraphicTypeValues.POLYLINE,
}


class GraphicPlacementError(OutputBuildError):
    """A finding's graphic does not lie on the source it names (frame or points outside)."""


def graphic_data(graphic: ImageGraphic) -> np.ndarray:
    """The SCOORD GraphicData of ``graphic``: (column, row) pairs, outlines closed."""
    points = np.asarray(graphic.points, dtype=np.float64)[:, ::-1] + 0.5
    if graphic.kind is GraphicKind.OUTLINE and not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points.astype(np.float32)


def source_image(graphic: ImageGraphic, source: PluginInput) -> hd.sr.SourceImageForRegion:
    """The source instance (and frame of a multi-frame one) the graphic is drawn on."""
    frame = source.sources[graphic.frame]
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=frame.sop_class_uid,
        referenced_sop_instance_uid=frame.sop_instance_uid,
        referenced_frame_numbers=[frame.frame_number] if frame.frame_number else None,
    )


def measurement_coordinates(
    graphic: ImageGraphic, source: PluginInput
) -> hd.sr.CoordinatesForMeasurement:
    """The line a measurement was made along (NUM → INFERRED FROM SCOORD)."""
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=_GRAPHIC_TYPES[graphic.kind],
        graphic_data=graphic_data(graphic),
        source_image=source_image(graphic, source),
    )


def image_region(graphic: ImageGraphic, source: PluginInput) -> hd.sr.ImageRegion:
    """The outline of a planar finding (TID 1410 image region)."""
    return hd.sr.ImageRegion(
        graphic_type=_GRAPHIC_TYPES[graphic.kind],
        graphic_data=graphic_data(graphic),
        source_image=source_image(graphic, source),
    )


def check_placement(findings: Findings, source: PluginInput) -> None:
    """Every graphic lies on an input frame and inside it; raise saying which does not."""
    frames, rows, columns = source.shape
    for finding in findings.findings:
        for graphic in finding.graphics:
            where = f"finding {finding.tracking_id!r}: a {graphic.kind.value} on frame"
            if graphic.frame >= frames:
                raise GraphicPlacementError(
                    f"{where} {graphic.frame}, but the input has {frames} frames"
                )
            points = np.asarray(graphic.points)
            if (
                (points < -0.5).any()
                or (points[:, 0] > rows - 0.5).any()
                or (points[:, 1] > columns - 0.5).any()
            ):
                raise GraphicPlacementError(
                    f"{where} {graphic.frame} has points outside its {rows}x{columns} pixels"
                )
