"""GPU slot accounting shared by worker processes: never more GPU work than the slots allow."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
from conftest import wait_until

from models.api import DeviceKind
from models.devices import GpuSlots, SlotTimeout


def _slots(tmp_path: Path, slots_per_gpu: int = 1) -> GpuSlots:
    # check_cuda=False: account for a GPU this CPU-only test machine does not have
    return GpuSlots([0], slots_per_gpu, tmp_path / "slots", check_cuda=False)


def _gpu_job(state_dir: str, job: int, marks: str) -> None:
    """A worker process: take a whole slot, mark itself running, wait for its release file."""
    slots = GpuSlots([0], 1, Path(state_dir), check_cuda=False)
    folder = Path(marks)
    (folder / f"waiting-{job}").touch()
    with slots.acquire(1):
        running = list(folder.glob("running-*"))
        (folder / f"running-{job}").write_text(str(len(running)))  # others running right now
        release = folder / f"release-{job}"
        while not release.exists():  # the test releases jobs one by one
            time.sleep(0.01)
        (folder / f"running-{job}").unlink()
        (folder / f"done-{job}").touch()


def test_one_slot_runs_three_gpu_jobs_from_three_processes_one_at_a_time(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_gpu_job, args=(str(tmp_path / "slots"), job, str(marks)))
        for job in range(3)
    ]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: len(list(marks.glob("waiting-*"))) == 3, what="3 jobs waiting")
        finished: list[int] = []
        for _ in range(3):
            running = wait_until(lambda: [p for p in marks.glob("running-*")], what="a job running")
            assert len(running) == 1, f"more than one GPU job at once: {running}"
            assert running[0].read_text() == "0", "a job started while another held the slot"
            job = int(running[0].name.split("-")[1])
            (marks / f"release-{job}").touch()
            wait_until(lambda job=job: (marks / f"done-{job}").exists(), what=f"job {job} done")
            finished.append(job)
        assert sorted(finished) == [0, 1, 2]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers)


def test_fractional_plugins_share_a_slot(tmp_path: Path) -> None:
    slots = _slots(tmp_path)
    first = slots.acquire(0.5)
    second = slots.acquire(0.5, timeout_s=0)
    assert first.device.kind is second.device.kind is DeviceKind.CUDA
    assert (first.gpu, first.slot) == (second.gpu, second.slot)
    with pytest.raises(SlotTimeout):
        slots.acquire(0.5, timeout_s=0)
    second.release()
    with pytest.raises(SlotTimeout):
        slots.acquire(1, timeout_s=0)  # half the slot is still taken
    quarter = slots.acquire(0.25, timeout_s=0)
    quarter.release()
    first.release()
    whole = slots.acquire(1, timeout_s=0)
    whole.release()


def test_two_slots_run_two_whole_jobs_and_carry_the_memory_cap(tmp_path: Path) -> None:
    slots = _slots(tmp_path, slots_per_gpu=2)
    a = slots.acquire(1, memory_limit_mb=512, timeout_s=0)
    b = slots.acquire(1, timeout_s=0)
    assert {a.slot, b.slot} == {0, 1}
    assert a.device.memory_limit_bytes == 512 * 1024 * 1024
    with pytest.raises(SlotTimeout):
        slots.acquire(0.25, timeout_s=0)
    a.release()
    b.release()


def _take_and_die(state_dir: str) -> None:
    GpuSlots([0], 1, Path(state_dir), check_cuda=False).acquire(1)
    os._exit(3)  # no release: the kernel drops the locks with the process


def test_a_killed_worker_never_leaks_its_slot(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    worker = context.Process(target=_take_and_die, args=(str(tmp_path / "slots"),))
    worker.start()
    worker.join(timeout=60)
    assert worker.exitcode == 3
    _slots(tmp_path).acquire(1, timeout_s=5).release()


def test_cpu_only_machines_and_cpu_plugins_get_cpu_leases(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    configured = GpuSlots([0], 2, tmp_path / "slots")  # CUDA absent: everything on CPU
    assert configured.cpu_only
    assert configured.acquire(1).device.kind is DeviceKind.CPU
    assert _slots(tmp_path).acquire(0).device.kind is DeviceKind.CPU
