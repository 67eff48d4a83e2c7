"""The tensor runner a manifest names: ONNX Runtime in this process, or a Triton server.

Plugins that bring their own pre- and post-processing (dx-chest) and the generic
manifest-driven plugin ask here, so the same plugin runs on a local model file or on a
served copy of it by changing only ``runner:`` in its manifest.
"""

from __future__ import annotations

from models.api import Device
from models.manifest import PluginManifest, RunnerKind
from models.runners.onnx import OnnxRunner
from models.runners.triton import TritonRunner

__all__ = ["tensor_runner"]


def tensor_runner(manifest: PluginManifest, device: Device) -> OnnxRunner | TritonRunner:
    """An ``OnnxRunner`` of the model file, or a ``TritonRunner`` of the served model."""
    if manifest.runner is RunnerKind.TRITON:
        assert manifest.triton is not None  # the manifest's own validation
        return TritonRunner(manifest.triton, device)
    if manifest.runner is not RunnerKind.ONNX or manifest.model_path is None:
        raise ValueError(f"{manifest.key}: runner {manifest.runner.value} has no tensor runner")
    return OnnxRunner(manifest.model_path, device)
