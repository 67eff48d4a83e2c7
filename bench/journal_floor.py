"""The disk's floor and the ingest journal on it: what one acknowledged instance must cost.

Not a test: run it on demand, in a folder on the disk the node's data folder will use.

    python bench/journal_floor.py [--work-dir DIR] [--sizes 512,16] [--seconds 1.5]
                                  [--segment-mib 256] [--no-fresh]

First the disk's own floor, the least any durable receiver can pay per Success: the median
time of a ``pwrite`` + ``fdatasync`` of a 4 KiB overwrite (a block already allocated) and of
a 512 KiB append (the file grows, so the file system's journal commits too).

Then ``node.ingest.journal.Journal`` in both durability modes, with 1 and 4 threads each
appending records of each size and committing every one (an association acknowledging each
instance): records/s, MB/s, the median and 99th percentile of append + commit, and records
per fdatasync (how much group commit shares). A mover is simulated by retiring everything
written every 50 ms, so segments cycle through the pool as they would in a node. The pool is
primed first (segments written through once), so the figures are the steady state; a last
row measures an ``fsync`` writer on a freshly fallocated segment (unwritten extents, whose
conversion the file system must commit at each fdatasync), unless ``--no-fresh``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from node.ingest.journal import Durability, Journal  # noqa: E402

MIB = 1024 * 1024


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def fdatasync_floor(folder: Path, rounds: int = 200) -> tuple[float, float]:
    """Median seconds of a 4 KiB overwrite + fdatasync, and of a 512 KiB append + fdatasync."""
    block, chunk = os.urandom(4096), os.urandom(512 * 1024)
    overwrite, append = [], []
    fd = os.open(folder / "floor-overwrite", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        for _ in range(rounds):
            start = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            overwrite.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    fd = os.open(folder / "floor-append", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(rounds // 2):
            start = time.perf_counter()
            os.pwrite(fd, chunk, i * len(chunk))
            os.fdatasync(fd)
            append.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    for name in ("floor-overwrite", "floor-append"):
        (folder / name).unlink()
    return median_ms(overwrite), median_ms(append)


def busy_floor(folder: Path) -> tuple[float, float]:
    """The floor again while another process keeps a core busy: on a VM whose idle vCPU wakes
    only at the next timer tick, a lone fdatasync pays that tick; a busy node does not."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        return fdatasync_floor(folder)
    finally:
        spinner.kill()
        spinner.wait()


@dataclass(frozen=True)
class Case:
    label: str
    durability: Durability
    threads: int
    size_kib: int


@dataclass(frozen=True)
class Result:
    records: int
    seconds: float
    latencies: tuple[float, ...]
    commit_syncs: int


def run_case(journal: Journal, case: Case, seconds: float, byte_budget: int) -> Result:
    """``case.threads`` writers appending and committing until the time or the bytes run out."""
    data = os.urandom(case.size_kib * 1024)
    per_thread = max(1, byte_budget // len(data) // case.threads)
    latencies: list[list[float]] = [[] for _ in range(case.threads)]
    stop = threading.Event()
    before = journal.stats().commit_syncs

    def writer(index: int) -> None:
        mine = latencies[index]
        meta = {"sop": f"1.2.826.0.1.3680043.10.{index}", "ts": "1.2.840.10008.1.2.1"}
        deadline = time.perf_counter() + seconds
        for _ in range(per_thread):
            start = time.perf_counter()
            journal.commit(journal.append(meta, [data]))
            mine.append(time.perf_counter() - start)
            if start > deadline:
                break

    def mover() -> None:
        while not stop.wait(0.05):
            journal.retire_through(journal.last_sequence)

    retirer = threading.Thread(target=mover)
    retirer.start()
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(case.threads)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    stop.set()
    retirer.join()
    flat = tuple(sample for samples in latencies for sample in samples)
    return Result(len(flat), elapsed, flat, journal.stats().commit_syncs - before)


def prime_pool(folder: Path, segment_size: int, count: int) -> None:
    """Write ``count`` segments through once and retire them, so later cases reuse them."""
    chunk = os.urandom(4 * MIB)
    with Journal.open(folder, durability="os", segment_size=segment_size, pool_size=count) as j:
        while j.stats().segments_created < count + 1:
            j.append({}, [chunk])
        j.rotate()
        os.sync()
        j.retire_through(j.last_sequence)


def row(case: Case, result: Result) -> str:
    ordered = sorted(result.latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    rate = result.records / result.seconds
    per_sync = f"{result.records / result.commit_syncs:.1f}" if result.commit_syncs else "—"
    return (
        f"| {case.label} | {case.threads} | {case.size_kib} | {result.records} | {rate:,.0f} | "
        f"{rate * case.size_kib / 1024:,.0f} | {median_ms(list(result.latencies)):.2f} | "
        f"{p99:.2f} | {per_sync} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / "data")
    parser.add_argument("--sizes", default="512,16", help="record sizes in KiB")
    parser.add_argument("--seconds", type=float, default=1.5, help="per case, at most")
    parser.add_argument("--segment-mib", type=int, default=256)
    parser.add_argument("--no-fresh", action="store_true")
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="journal-floor-", dir=args.work_dir))
    segment_size = args.segment_mib * MIB
    try:
        overwrite, append = fdatasync_floor(folder)
        busy_overwrite, busy_append = busy_floor(folder)
        print(f"work folder {folder} (cpus: {os.cpu_count()})")
        print(
            f"disk floor (median ms) | 4 KiB overwrite + fdatasync | 512 KiB append + fdatasync\n"
            f"idle CPU               | {overwrite:.2f} | {append:.2f}\n"
            f"one core kept busy     | {busy_overwrite:.2f} | {busy_append:.2f}\n"
        )
        journal_dir = folder / "journal"
        prime_pool(journal_dir, segment_size, 2)
        print(
            "| mode | threads | record KiB | records | records/s | MB/s | "
            "append+commit ms (median) | p99 ms | records per fdatasync |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        budget = segment_size // 2  # one case stays within one reused segment
        for size in (int(s) for s in args.sizes.split(",")):
            for durability in (Durability.FSYNC, Durability.OS):
                for threads in (1, 4):
                    case = Case(durability.value, durability, threads, size)
                    with Journal.open(
                        journal_dir, durability=durability, segment_size=segment_size, pool_size=2
                    ) as journal:
                        result = run_case(journal, case, args.seconds, budget)
                        journal.rotate()
                        journal.retire_through(journal.last_sequence)
                    os.sync()  # the next case does not pay for this one's writeback
                    print(row(case, result), flush=True)
        if not args.no_fresh:
            case = Case("fsync, fresh segment", Durability.FSYNC, 1, 512)
            with Journal.open(folder / "fresh", segment_size=segment_size, pool_size=0) as j:
                print(row(case, run_case(j, case, args.seconds, budget)), flush=True)
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
