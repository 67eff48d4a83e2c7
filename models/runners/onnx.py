"""ONNX Runtime runner: CUDA provider first, CPU fallback, and a log line saying which and why.

Usage from a plugin's ``load``/``run``::

    runner = OnnxRunner(manifest.model_path, device)
    (logits,) = runner.run({runner.input_names[0]: batch})

``run`` is a direct call of ``InferenceSession.run`` (no copies), so a plugin pays nothing
for using it. On a CUDA device ``device.memory_limit_bytes`` becomes the provider's
``gpu_mem_limit``. A CUDA out-of-memory error is raised as ``GpuOutOfMemory``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.api import Device, DeviceKind
from models.devices import GpuOutOfMemory, is_out_of_memory

__all__ = ["OnnxRunner"]

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

log = logging.getLogger(__name__)


class OnnxRunner:
    """One warm ``InferenceSession`` on ``device``; ``active_provider`` says where it runs."""

    def __init__(
        self,
        model_path: Path | str,
        device: Device,
        *,
        intra_op_threads: int | None = None,
    ) -> None:
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        providers: list[str | tuple[str, dict[str, object]]] = [CPU_PROVIDER]
        reason = "the plugin runs on the CPU"
        if device.kind is DeviceKind.CUDA:
            if CUDA_PROVIDER in ort.get_available_providers():
                cuda_options: dict[str, object] = {"device_id": device.index}
                if device.memory_limit_bytes is not None:
                    cuda_options["gpu_mem_limit"] = device.memory_limit_bytes
                providers = [(CUDA_PROVIDER, cuda_options), CPU_PROVIDER]
                reason = f"CUDA device {device.index} was requested"
            else:
                reason = "CUDA was requested but this onnxruntime build has no CUDA provider"
        self.model_path = Path(model_path)
        self.device = device
        self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        self.active_provider: str = self._session.get_providers()[0]
        if device.kind is DeviceKind.CUDA and self.active_provider != CUDA_PROVIDER:
            reason = (
                f"{reason}; the CUDA provider did not initialise (driver or device missing), "
                "falling back"
            )
        self.reason = reason
        log.info("onnx %s: %s active (%s)", self.model_path.name, self.active_provider, self.reason)
        self.input_names: tuple[str, ...] = tuple(i.name for i in self._session.get_inputs())
        self.output_names: tuple[str, ...] = tuple(o.name for o in self._session.get_outputs())

    @property
    def on_gpu(self) -> bool:
        return self.active_provider == CUDA_PROVIDER

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the model; outputs in the model's output order."""
        try:
            return self._session.run(None, inputs)
        except Exception as exc:
            if self.on_gpu and is_out_of_memory(exc):
                raise GpuOutOfMemory(
                    f"CUDA out of memory running {self.model_path.name} on {self.device}: {exc}"
                ) from exc
            raise
