"""GPU slots shared fairly by every worker process of the node, and CUDA out-of-memory.

node.yaml lists the GPUs and how many jobs may share each (``devices.gpus: [0]``,
``slots_per_gpu: 2``). A plugin declares the share of one slot it needs
(``resources.gpu: 1 | 0.5 | 0.25 | 0``). The executor runs jobs in separate worker
processes, so the accounting lives in the file system: every slot is split into four quarter
lock files, and a lease holds ``share × 4`` of them with ``flock``. A crashed worker's locks
vanish with its file descriptors, so a ``kill -9`` never leaks a slot. A short allocator
lock makes taking several quarters atomic with respect to the other workers.

Where CUDA is absent (no GPU, or the configured index does not exist) every lease is a CPU
lease: CPU-only machines run everything on CPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from models.api import Device, DeviceKind

__all__ = [
    "QUARTERS_PER_SLOT",
    "GpuOutOfMemory",
    "GpuSlots",
    "SlotLease",
    "SlotTimeout",
    "cuda_device_count",
    "is_out_of_memory",
]

QUARTERS_PER_SLOT = 4
_POLL_S = 0.02

log = logging.getLogger(__name__)


class GpuOutOfMemory(RuntimeError):
    """CUDA ran out of memory while a plugin ran; the job may be retried on the CPU."""


class SlotTimeout(TimeoutError):
    """No GPU slot became free within the time allowed."""


_OOM_MARKERS = (
    "out of memory",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "failed to allocate memory",
    "cudaerrormemoryallocation",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CUDA running out of memory (torch or ONNX Runtime wording)."""
    if type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _OOM_MARKERS)


def cuda_device_count() -> int:
    """CUDA devices usable by ONNX Runtime or torch in this process (0 on CPU-only machines)."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:
        pass
    return 0


@dataclass
class SlotLease:
    """A held share of a GPU slot (or a CPU lease). Release it, or use it as a context."""

    device: Device
    share: float
    gpu: int | None = None
    slot: int | None = None
    _files: list[int] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for fd in self._files:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._files.clear()

    @property
    def held(self) -> bool:
        return bool(self._files)

    def __enter__(self) -> SlotLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class GpuSlots:
    """Slot accounting over lock files in ``state_dir``, shared by all processes using it."""

    def __init__(
        self,
        gpus: Sequence[int],
        slots_per_gpu: int,
        state_dir: Path,
        *,
        check_cuda: bool = True,
    ) -> None:
        if slots_per_gpu < 1:
            raise ValueError("slots_per_gpu must be at least 1")
        usable = list(gpus)
        if usable and check_cuda:
            count = cuda_device_count()
            missing = [g for g in usable if g >= count]
            if missing:
                log.warning(
                    "GPUs %s are configured but CUDA sees %d device(s): running those jobs on CPU",
                    missing,
                    count,
                )
            usable = [g for g in usable if g < count]
        self.gpus: tuple[int, ...] = tuple(usable)
        self.slots_per_gpu = slots_per_gpu
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    def _quarter_path(self, gpu: int, slot: int, quarter: int) -> Path:
        return self.state_dir / f"gpu{gpu}-slot{slot}-q{quarter}.lock"

    def _try_take(self, gpu: int, slot: int, quarters: Sequence[int]) -> list[int] | None:
        taken: list[int] = []
        for quarter in quarters:
            fd = os.open(self._quarter_path(gpu, slot, quarter), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                for held in taken:
                    fcntl.flock(held, fcntl.LOCK_UN)
                    os.close(held)
                return None
            taken.append(fd)
        return taken

    def _try_acquire(self, quarters_needed: int) -> tuple[int, int, list[int]] | None:
        groups = [
            list(range(start, start + quarters_needed))
            for start in range(0, QUARTERS_PER_SLOT, quarters_needed)
        ]
        allocator = os.open(self.state_dir / "allocator.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(allocator, fcntl.LOCK_EX)
            for gpu in self.gpus:
                for slot in range(self.slots_per_gpu):
                    for group in groups:
                        files = self._try_take(gpu, slot, group)
                        if files is not None:
                            return gpu, slot, files
            return None
        finally:
            fcntl.flock(allocator, fcntl.LOCK_UN)
            os.close(allocator)

    def acquire(
        self, share: float, *, memory_limit_mb: int | None = None, timeout_s: float | None = None
    ) -> SlotLease:
        """Wait for ``share`` of a slot; a CPU lease at once for share 0 or CPU-only nodes."""
        if share == 0 or self.cpu_only:
            return SlotLease(Device(DeviceKind.CPU), share)
        quarters = round(share * QUARTERS_PER_SLOT)
        if quarters not in (1, 2, 4):
            raise ValueError(f"GPU share must be 0.25, 0.5 or 1, got {share}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            taken = self._try_acquire(quarters)
            if taken is not None:
                gpu, slot, files = taken
                limit = None if memory_limit_mb is None else memory_limit_mb * 1024 * 1024
                device = Device(DeviceKind.CUDA, gpu, limit)
                return SlotLease(device, share, gpu, slot, files)
            if deadline is not None and time.monotonic() > deadline:
                raise SlotTimeout(
                    f"no GPU slot with {share} free after {timeout_s:.0f}s "
                    f"({len(self.gpus)} GPU(s) × {self.slots_per_gpu} slot(s))"
                )
            time.sleep(_POLL_S)
