"""Findings -> DICOM results: SEG, TID 1500 SR, text SR and burned-in secondary captures.

``build_outputs`` is the entry point (``iter_outputs`` the same, one result at a time); a
builder that cannot write the findings raises ``OutputBuildError``. Everything else is here
for tests and tools.
"""

from node.outputs.build import ResultInstance, build_outputs, iter_outputs
from node.outputs.context import OutputContext, PredecessorDocument
from node.outputs.errors import OutputBuildError
from node.outputs.seg_geometry import SegmentationGeometryError
from node.outputs.uids import ResultUids

__all__ = [
    "OutputBuildError",
    "OutputContext",
    "PredecessorDocument",
    "ResultInstance",
    "ResultUids",
    "SegmentationGeometryError",
    "build_outputs",
    "iter_outputs",
]
