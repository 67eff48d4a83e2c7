"""Ingest throughput: ainode's SCP against DCMTK storescp (and Orthanc), all fed by storescu.

Two workloads (a synthetic 300-slice 512x512 CT, and 2000 small instances), each sent over
one association and over four concurrent ones, to DCMTK ``storescp +B`` (bit-preserving, the
reference), to ``ainode serve`` and, with ``--orthanc``, to Debian's Orthanc with
``SyncStorageArea: true`` (it fsyncs each file and commits its index per instance), in
alternating rounds of the same run. Prints instances/s, MB/s and the ratio to DCMTK (and to
Orthanc), best round of each. Not a test: run it on demand. Every round sends a new series
(fresh UIDs), so no round measures duplicate replacement.

ainode's storage mode: ``--durability fsync|os`` and ``--journal`` select it; ``--also MODE``
adds more ainode receivers to the same run (``files-fsync``, ``files-os``, ``journal-fsync``,
``journal-os``, and ``receivers-fsync``/``receivers-os``: the journal with four receiver
processes, ``listener.processes: 4``, whose phases the wrapper cannot time). With the
journal, a Success waits for the journal only and the mover files
the instances afterwards: the bench waits for the mover after each round (outside the timed
send) and prints that wait too, so the next receiver is not measured against it.

ainode runs under ``bench/ingest_node.py``, which times the receive phases (header parse,
spool write, fsync, index commit; journal append and commit; the mover's batches) so the
bench prints where an instance's time goes, beside the disk's own floor (median
``fdatasync`` of a 4 KiB overwrite and of a 512 KiB append in the work folder). A receiver
``ainode-nofsync`` (fsync off and SQLite ``synchronous=OFF``, a bench-only switch of that
wrapper, not reachable from node.yaml) shows how much of the gap is durability.

    python bench/ingest.py [--rounds 3] [--ct-slices 300] [--small 2000] [--no-split]
                           [--work-dir DIR] [--compare-tree OLD_CHECKOUT] [--tls]
                           [--durability fsync|os] [--journal] [--also MODE] [--orthanc]
                           [--cases ct:1,ct:4,small:1,small:4]

``--tls`` adds DICOM TLS receivers (ainode's TLS listener and ``storescp +tls``, with a
throw-away PKI from ``tests/tls_support.py``), fed by ``storescu +tls`` with a client
certificate, and prints what TLS costs each: TLS throughput / plain, in the same run.

Receivers that create a file per instance pay for it, so the bench first prints what
creating a file costs in the work folder: on the development VM that ranged from 0.01 to
1.7 ms depending on the folder and the hour (ext4 inode allocation). A work folder on tmpfs
(``--work-dir /dev/shm``) takes the disk out of the comparison (fsync is a no-op there).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]
from ingest_receivers import (  # noqa: E402
    ENV,
    Server,
    dcmtk,
    start_ainode,
    start_dcmtk,
    start_orthanc,
)
from ingest_support import make_instances  # noqa: E402  (the suite's fast series writer)
from journal_floor import fdatasync_floor  # noqa: E402
from tls_support import make_pki  # noqa: E402

MODES = (
    "files-fsync",
    "files-os",
    "journal-fsync",
    "journal-os",
    "receivers-fsync",
    "receivers-os",
)
#: ``receivers-*``: the journal with ``listener.processes`` receiver processes.
RECEIVER_PROCESSES = 4


def file_create_ms(folder: Path, count: int = 200) -> float:
    """Median milliseconds to create (and close) an empty file in a new subfolder."""
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=folder))
    try:
        times = []
        for number in range(count):
            started = time.perf_counter()
            os.close(os.open(probe / f"{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e3
    finally:
        shutil.rmtree(probe)


def print_split(name: str, seconds: float, count: int, stats: dict[str, dict[str, float]]) -> None:
    """Where one run's time went, in ms per instance (one association: phases are serial)."""
    phase = {key: value * 1000 / count for key, value in stats["seconds"].items()}
    wall = seconds * 1000 / count
    handler = phase["handler"]
    line = (
        f"{'':<22} {'':>5}  {name + ' ms/inst':<24} wall {wall:.2f} = "
        f"protocol+transport {wall - handler:.2f} + handler {handler:.2f} "
        f"(parse {phase['parse']:.2f}"
    )
    if stats["calls"].get("journal_append"):
        line += (
            f", journal append {phase['journal_append']:.2f}, commit "
            f"{phase['journal_commit']:.2f}); mover {phase['mover_file']:.2f} off the Success path"
        )
    else:
        line += (
            f", spool write {phase['spool_write']:.2f} of which fsync {phase['fsync']:.2f}, "
            f"index commit {phase['index_store']:.2f})"
        )
    print(line)


def send(server: Server, files: list[Path], associations: int) -> float:
    """Seconds for ``associations`` concurrent storescu processes to send ``files``."""
    parts = [files[n::associations] for n in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [
                dcmtk("storescu"),
                *server.sender_args,
                "-aec",
                server.ae_title,
                "--max-pdu",
                "131072",
                "127.0.0.1",
                str(server.port),
                *map(str, part),
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for part in parts
    ]
    for sender in senders:
        output = sender.communicate()[0]
        if sender.returncode != 0:
            sys.exit(f"storescu to {server.name} failed:\n{output.decode()[-2000:]}")
    return time.perf_counter() - started


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument(
        "--cases",
        default="ct:1,ct:4,small:1,small:4",
        help="workload:associations pairs to run (default all four)",
    )
    parser.add_argument("--durability", choices=("fsync", "os"), default="fsync")
    parser.add_argument("--journal", action="store_true", help="ainode with storage.journal")
    parser.add_argument(
        "--also", action="append", choices=MODES, default=[], help="another ainode receiver"
    )
    parser.add_argument(
        "--orthanc", action="store_true", help="add Orthanc with SyncStorageArea: true"
    )
    parser.add_argument(
        "--no-split", action="store_true", help="skip the no-fsync ainode (cost split)"
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        default=None,
        help="also run the ainode of this source tree (e.g. `git archive` of an older "
        "commit, unpacked) as another receiver, for before/after figures in one run",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where inputs and receivers' stores go (default: the temp folder); see the "
        "file creation cost the bench prints first",
    )
    parser.add_argument(
        "--tls", action="store_true", help="add DICOM TLS receivers and print TLS / plain"
    )
    return parser.parse_args()


def start_servers(args: argparse.Namespace, work: Path) -> list[Server]:
    """DCMTK first (the reference), then the ainode receivers, then the others; if one cannot
    start, those already started are stopped."""
    servers: list[Server] = []
    try:
        _start_servers(args, work, servers)
    except BaseException:  # sys.exit from a receiver that did not start included
        for server in servers:
            server.stop()
        raise
    return servers


def _start_servers(args: argparse.Namespace, work: Path, servers: list[Server]) -> None:
    servers.append(start_dcmtk(work))
    servers.append(start_ainode(work, durability=args.durability, journal=args.journal))
    for mode in dict.fromkeys(args.also):
        kind, durability = mode.split("-")
        processes = RECEIVER_PROCESSES if kind == "receivers" else 1
        if servers[1].name != f"ainode {kind} {durability}":
            journal = kind in ("journal", "receivers")
            servers.append(
                start_ainode(work, durability=durability, journal=journal, processes=processes)
            )
    if not args.no_split:
        servers.append(start_ainode(work, durable=False))
    if args.compare_tree is not None:
        mode = {"durability": args.durability, "journal": args.journal}
        servers.append(start_ainode(work, repo=args.compare_tree, name="ainode-compared", **mode))
    if args.orthanc:
        servers.append(start_orthanc(work))
    if args.tls:
        pki = make_pki(work / "pki")
        tls_ainode = start_ainode(work, name="ainode TLS", pki=pki)
        tls_ainode.plain_name = servers[1].name
        servers += [start_dcmtk(work, pki), tls_ainode]


def main() -> int:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="ainode-bench-", dir=args.work_dir))
    create_ms = file_create_ms(work)
    print(f"creating a file in {work}: {create_ms:.3f} ms (median of 200)")
    if create_ms > 0.1:
        print("WARNING: creating files costs much of a store here; pick another --work-dir")
    overwrite_ms, append_ms = fdatasync_floor(work)
    print(
        f"disk floor in {work}: fdatasync of a 4 KiB overwrite {overwrite_ms:.2f} ms, "
        f"of a 512 KiB append {append_ms:.2f} ms (medians); {os.cpu_count()} cores"
    )
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, work: Path) -> None:
    sizes = {"ct": (f"CT {args.ct_slices}x512x512", args.ct_slices, 512)}
    sizes["small"] = (f"{args.small} small (8x8)", args.small, 8)
    cases = [(kind, int(assoc)) for kind, assoc in (c.split(":") for c in args.cases.split(","))]
    servers = start_servers(args, work)
    reference = servers[0]
    orthanc = next((s for s in servers if s.name == "Orthanc sync"), None)
    print(f"{'workload':<22} {'assoc':>5}  {'receiver':<24} {'inst/s':>8} {'MB/s':>8}")
    expected = 0
    for kind, associations in cases:
        label, count, size = sizes[kind]
        times: dict[str, list[float]] = {server.name: [] for server in servers}
        filing: dict[str, list[float]] = {server.name: [] for server in servers}
        best_stats: dict[str, dict[str, dict[str, float]]] = {}
        for round_number in range(args.rounds):  # interleaved: every receiver
            folder = work / f"in-{size}-{associations}-{round_number}"
            files = make_instances(folder, count, size=size)
            megabytes = sum(p.stat().st_size for p in files) / 1e6
            for server in servers:
                seconds = send(server, files, associations)
                filing[server.name].append(seconds + server.wait_filed(expected + count))
                stats = server.take_stats()
                if stats is not None and seconds <= min(times[server.name], default=1e9):
                    best_stats[server.name] = stats
                times[server.name].append(seconds)
            expected += count
            shutil.rmtree(folder)
            for server in servers:  # keep the disk use down
                if server.emptied:
                    for received in server.store_dir.iterdir():
                        received.unlink()
        best = {name: min(values) for name, values in times.items()}
        for name, seconds in best.items():
            filed = min(filing[name])
            until_filed = f", {count / filed:.0f} inst/s until filed" if filed > seconds else ""
            print(
                f"{label:<22} {associations:>5}  {name:<24} "
                f"{count / seconds:>8.0f} {megabytes / seconds:>8.1f}"
                f"   (median {statistics.median(times[name]):.2f} s{until_filed})"
            )
        for server in servers[1:]:
            ratio = best[reference.name] / best[server.name]
            print(f"{'':<22} {'':>5}  {'ratio ' + server.name:<24} {ratio:>8.2f}")
        if orthanc is not None:
            for server in servers:
                if server.database is not None:
                    ratio = best[orthanc.name] / best[server.name]
                    print(f"{'':<22} {'':>5}  {server.name + ' / Orthanc':<24} {ratio:>8.2f}")
        for server in servers:
            if server.plain_name is not None:
                ratio = best[server.plain_name] / best[server.name]
                label_ = f"TLS/plain {server.plain_name.split()[0]}"
                print(f"{'':<22} {'':>5}  {label_:<24} {ratio:>8.2f}")
        if associations == 1:
            for name, stats in best_stats.items():
                print_split(name, best[name], count, stats)
    for server in servers:
        server.stop()
    for server in servers:
        if server.database is None:
            continue
        stored = sum(1 for _ in server.store_dir.rglob("*.dcm"))
        if stored != expected:
            print(f"WARNING: {server.name} holds {stored} instances, expected {expected}")


if __name__ == "__main__":
    raise SystemExit(main())
