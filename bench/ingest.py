"""Ingest throughput: ainode's SCP against DCMTK storescp, both fed by DCMTK storescu.

Two workloads (a synthetic 300-slice 512x512 CT, and 2000 small instances), each sent over
one association and over four concurrent ones, to DCMTK ``storescp +B`` (bit-preserving, the
reference) and to ``ainode serve`` in alternating rounds of the same run. Prints instances/s,
MB/s and the ratio ainode/DCMTK (best round of each). Not a test: run it on demand. Every
round sends a new series (fresh UIDs), so no round measures duplicate replacement.

ainode runs under ``bench/ingest_node.py``, which times the receive phases (header parse,
spool write, fsync, index commit) so the bench prints where an instance's time goes. A third
receiver, ainode with fsync off and SQLite ``synchronous=OFF`` (a bench-only switch of that
wrapper, not reachable from node.yaml), shows how much of the gap to DCMTK (which does not
fsync at all) is the durability contract and how much the protocol path.

    python bench/ingest.py [--rounds 3] [--ct-slices 300] [--small 2000] [--no-split]
                           [--work-dir DIR] [--compare-tree OLD_CHECKOUT] [--tls]

``--tls`` adds DICOM TLS receivers (ainode's TLS listener and ``storescp +tls``, with a
throw-away PKI from ``tests/tls_support.py``), fed by ``storescu +tls`` with a client
certificate, and prints what TLS costs each: TLS throughput / plain, in the same run.

Both receivers create a file per instance, so the bench first prints what creating a file
costs in the work folder: on the development VM that ranged from 0.01 to 1.7 ms depending on
the folder and the hour (ext4 inode allocation), against DCMTK's 0.2-1 ms per instance.
A work folder on tmpfs (``--work-dir /dev/shm``) takes the disk out of the comparison (fsync
is a no-op there): what is left is the receivers' CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
from ingest_support import make_instances  # noqa: E402  (the suite's fast series writer)
from tls_support import Pki, dcmtk_tls_args, make_pki, tls_section  # noqa: E402

# DCMTK 3.6.7 leaves Nagle on unless told; both receivers get the same senders.
ENV = dict(os.environ, TCP_NODELAY="1")


def dcmtk(name: str) -> str:
    path = Path("/usr/bin") / name
    if not path.exists():
        sys.exit(f"DCMTK {name} not found in /usr/bin: apt-get install dcmtk")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    ae_title: str
    process: subprocess.Popen[bytes]
    store_dir: Path
    stats_path: Path | None = None  # phase timers of an instrumented ainode
    sender_args: tuple[str, ...] = ()  # storescu's TLS options for this receiver
    plain_name: str | None = None  # the plain receiver this TLS one is compared with

    def take_stats(self) -> dict[str, dict[str, float]] | None:
        """Phase seconds since the last call (``bench/ingest_node.py`` writes them on SIGUSR1)."""
        if self.stats_path is None:
            return None
        self.stats_path.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.stats_path.exists():
            if time.monotonic() > deadline:
                sys.exit(f"{self.name} wrote no phase timers")
            time.sleep(0.01)
        return json.loads(self.stats_path.read_text())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server on port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)  # let the probe's association go before measuring
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on {port} after 30 s")


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


def start_dcmtk(work: Path, pki: Pki | None = None) -> Server:
    port = free_port()
    name = "DCMTK storescp +B" + (" TLS" if pki else "")
    out = work / ("storescp-tls" if pki else "storescp")
    out.mkdir()
    tls = dcmtk_tls_args(pki.server, pki) if pki else []
    process = subprocess.Popen(
        [dcmtk("storescp"), "+B", "--fork", *tls, "-aet", "STORESCP", "-od", str(out), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port, process)
    sender = tuple(dcmtk_tls_args(pki.client, pki)) if pki else ()
    plain = "DCMTK storescp +B" if pki else None
    return Server(name, port, "STORESCP", process, out, None, sender, plain)


def start_ainode(
    work: Path,
    *,
    durable: bool = True,
    repo: Path = REPO,
    name: str | None = None,
    pki: Pki | None = None,
) -> Server:
    """``ainode serve`` under ``bench/ingest_node.py`` (this checkout's, or ``repo``'s); with
    ``pki``, a TLS listener only."""
    port = free_port()
    name = name or ("ainode" if durable else "ainode-nofsync")
    data = work / name
    config = {
        "listener": {
            "ae_title": "AINODE",
            "host": "127.0.0.1",
            "port": port,
            "max_associations": 16,
            "max_pdu": 0,
        },
        "access": {"accept_any": True},
        "storage": {"data_dir": str(data), "min_free_mb": 64},
        "stability": {"stable_after_s": 3600, "after_release_s": None},
    }
    if pki is not None:
        config["listener"] |= {"plain": False, "tls_port": port, "port": free_port()}
        config["tls"] = tls_section(pki)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    stats = work / f"{name}-stats.json"
    # The wrapper is always this checkout's: an older ``repo`` may not have one.
    command = [sys.executable, str(REPO / "bench" / "ingest_node.py"), "--config", str(path)]
    command += ["--stats", str(stats), "--repo", str(repo)]
    command += [] if durable else ["--no-durability"]
    process = subprocess.Popen(
        command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_listening(port, process)
    server = Server(name, port, "AINODE", process, data / "spool", stats)
    if pki is not None:
        server.sender_args = tuple(dcmtk_tls_args(pki.client, pki))
        server.plain_name = "ainode"
    server.take_stats()  # drop the listening probe's
    return server


def print_split(name: str, seconds: float, count: int, stats: dict[str, dict[str, float]]) -> None:
    """Where one run's time went, in ms per instance (one association: phases are serial)."""
    phase = {key: value * 1000 / count for key, value in stats["seconds"].items()}
    wall = seconds * 1000 / count
    handler = phase["handler"]
    print(
        f"{'':<22} {'':>5}  {name + ' ms/inst':<18} wall {wall:.2f} = "
        f"protocol+transport {wall - handler:.2f} + handler {handler:.2f} "
        f"(parse {phase['parse']:.2f}, spool write {phase['spool_write']:.2f} "
        f"of which fsync {phase['fsync']:.2f}, index commit {phase['index_store']:.2f})"
    )


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument(
        "--no-split", action="store_true", help="skip the no-fsync ainode (cost split)"
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        default=None,
        help="also run the ainode of this source tree (e.g. `git archive` of an older "
        "commit, unpacked) as a fourth receiver, for before/after figures in one run",
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
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ainode-bench-", dir=args.work_dir))
    create_ms = file_create_ms(work)
    print(f"creating a file in {work}: {create_ms:.3f} ms (median of 200)")
    if create_ms > 0.1:
        print("WARNING: creating files costs much of a store here; pick another --work-dir")
    try:
        # (label, slices, size): every round sends a new series (new UIDs), so no receiver
        # ever measures its duplicate-replacement path instead of plain stores.
        workloads = [
            (f"CT {args.ct_slices}x512x512", args.ct_slices, 512),
            (f"{args.small} small (8x8)", args.small, 8),
        ]
        reference, ours = start_dcmtk(work), start_ainode(work)
        servers = [reference, ours]
        if not args.no_split:
            servers.append(start_ainode(work, durable=False))
        if args.compare_tree is not None:
            servers.append(start_ainode(work, repo=args.compare_tree, name="ainode-compared"))
        if args.tls:
            pki = make_pki(work / "pki")
            servers += [start_dcmtk(work, pki), start_ainode(work, name="ainode TLS", pki=pki)]
        print(f"{'workload':<22} {'assoc':>5}  {'receiver':<18} {'inst/s':>8} {'MB/s':>8}")
        expected = 0
        for label, count, size in workloads:
            for associations in (1, 4):
                times: dict[str, list[float]] = {server.name: [] for server in servers}
                best_stats: dict[str, dict[str, dict[str, float]]] = {}
                for round_number in range(args.rounds):  # interleaved: every receiver
                    folder = work / f"in-{size}-{associations}-{round_number}"
                    files = make_instances(folder, count, size=size)
                    megabytes = sum(p.stat().st_size for p in files) / 1e6
                    for server in servers:
                        seconds = send(server, files, associations)
                        stats = server.take_stats()
                        if stats is not None and seconds <= min(times[server.name], default=1e9):
                            best_stats[server.name] = stats
                        times[server.name].append(seconds)
                    expected += count
                    shutil.rmtree(folder)
                    for server in servers:  # keep the disk use down
                        if server.stats_path is None:
                            for received in server.store_dir.iterdir():
                                received.unlink()
                best = {name: min(values) for name, values in times.items()}
                for name, seconds in best.items():
                    print(
                        f"{label:<22} {associations:>5}  {name:<18} "
                        f"{count / seconds:>8.0f} {megabytes / seconds:>8.1f}"
                        f"   (median {statistics.median(times[name]):.2f} s)"
                    )
                for server in servers[1:]:
                    ratio = best[reference.name] / best[server.name]
                    print(f"{'':<22} {'':>5}  {'ratio ' + server.name:<18} {ratio:>8.2f}")
                for server in servers:
                    if server.plain_name is not None:
                        ratio = best[server.plain_name] / best[server.name]
                        label_ = f"TLS/plain {server.plain_name.split()[0]}"
                        print(f"{'':<22} {'':>5}  {label_:<18} {ratio:>8.2f}")
                if associations == 1:
                    for name, stats in best_stats.items():
                        print_split(name, best[name], count, stats)
        for server in servers:
            server.stop()
        for server in servers[1:]:
            if server.stats_path is None:
                continue  # DCMTK's folder is emptied after every round
            stored = sum(1 for _ in server.store_dir.rglob("*.dcm"))
            if stored != expected:
                print(f"WARNING: {server.name} holds {stored} instances, expected {expected}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
