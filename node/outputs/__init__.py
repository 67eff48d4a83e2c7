"""Findings -> DICOM results: SEG, TID 1500 SR, text SR and burned-in secondary captures.

``build_outputs`` is the entry point (``iter_outputs`` the same, one result at a time);
everything else is here for tests and tools.
"""

from node.outputs.build import ResultInstance, build_outputs, iter_outputs
from node.outputs.context import OutputContext, PredecessorDocument
from node.outputs.seg import SegmentationGeometryError
from node.outputs.uids import ResultUids

__all__ = [
    "OutputContext",
    "PredecessorDocument",
    "ResultInstance",
    "ResultUids",
    "SegmentationGeometryError",
    "build_outputs",
    "iter_outputs",
]
