"""TorchScript runner: ``torch.jit.load`` onto the CUDA device when there is one, else the CPU.

Usage from a plugin::

    runner = TorchScriptRunner(manifest.model_path, device)
    (logits,) = runner.run(batch)          # numpy in, numpy out

On CUDA, ``device.memory_limit_bytes`` becomes torch's per-process memory fraction of that
device. A CUDA out-of-memory error is raised as ``GpuOutOfMemory``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from models.api import Device, DeviceKind
from models.devices import GpuOutOfMemory, is_out_of_memory

__all__ = ["TorchScriptRunner"]

log = logging.getLogger(__name__)


def _to_numpy(output: object) -> list[np.ndarray]:
    if isinstance(output, torch.Tensor):
        return [output.detach().cpu().numpy()]
    if isinstance(output, Mapping):
        return [array for value in output.values() for array in _to_numpy(value)]
    if isinstance(output, Sequence):
        return [array for value in output for array in _to_numpy(value)]
    raise TypeError(f"TorchScript model returned {type(output).__name__}, not tensors")


class TorchScriptRunner:
    """A scripted module in eval mode on ``device``; ``torch_device`` says where it runs."""

    def __init__(self, model_path: Path | str, device: Device) -> None:
        self.model_path = Path(model_path)
        self.device = device
        if device.kind is DeviceKind.CUDA and torch.cuda.is_available():
            self.torch_device = torch.device(device.torch_name)
            reason = f"CUDA device {device.index} was requested"
            if device.memory_limit_bytes is not None:
                total = torch.cuda.get_device_properties(device.index).total_memory
                fraction = min(1.0, device.memory_limit_bytes / total)
                torch.cuda.set_per_process_memory_fraction(fraction, device.index)
        else:
            self.torch_device = torch.device("cpu")
            reason = (
                "CUDA was requested but torch sees no CUDA device"
                if device.kind is DeviceKind.CUDA
                else "the plugin runs on the CPU"
            )
        self.reason = reason
        self._module = torch.jit.load(str(model_path), map_location=self.torch_device)
        self._module.eval()
        log.info("torchscript %s: %s (%s)", self.model_path.name, self.torch_device, reason)

    @property
    def on_gpu(self) -> bool:
        return self.torch_device.type == "cuda"

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run the module on numpy inputs; every tensor it returns, flattened, as numpy."""
        try:
            with torch.inference_mode():
                tensors = [
                    torch.from_numpy(np.ascontiguousarray(a)).to(self.torch_device) for a in inputs
                ]
                return _to_numpy(self._module(*tensors))
        except Exception as exc:
            if self.on_gpu and is_out_of_memory(exc):
                torch.cuda.empty_cache()
                raise GpuOutOfMemory(
                    f"CUDA out of memory running {self.model_path.name} on {self.device}: {exc}"
                ) from exc
            raise
