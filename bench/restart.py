"""How long ``ainode serve`` takes to start on a large record (not a test; run on demand).

Builds a data folder with ``--instances`` indexed instances (synthetic, small: rows written
straight into the index, one small file each in the spool layout, 100 per series, 1000 per
study; studies stable, nothing to route), then measures the time from ``ainode serve`` to the
first C-ECHO answered:

- after a clean stop (the clean-stop marker is there),
- after ``kill -9`` (no marker: the start-up checks the spool against the index, from the
  spool checkpoint on: ``node.ingest.checkpoint``).

The built series folders are dated a day back, when their rows say the instances arrived.
Before each start after ``kill -9`` the last ``--recent`` instances' series folders are
dated now, as if they had arrived in the minute before the crash: those the start lists and
looks up (default 60,000: a minute of the fastest ingest measured on the development
machine). The first start finds no checkpoint (a database from before it) and walks the
whole spool.

Issue 22's goal: a restart after kill -9 with 1,000,000 instances indexed in under 5 s.

Usage: python bench/restart.py [--instances 1000000] [--work DIR] [--journal] [--reuse]
[--rounds 3] [--recent 60000] [--profile]

``--reuse`` keeps a data folder an earlier run with the same ``--work`` built (the build is
skipped); ``--profile`` runs each ``ainode serve`` under cProfile and writes ``<work>/*.prof``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from node.db import connect  # noqa: E402
from node.scu import AssociationFailed, Peer, echo  # noqa: E402

PER_SERIES, PER_STUDY = 100, 1000
CT = "1.2.840.10008.5.1.4.1.1.2"
LE = "1.2.840.10008.1.2.1"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build(data: Path, count: int) -> None:
    """The index rows and the spool files of ``count`` instances."""
    started = time.monotonic()
    conn = connect(data / "ainode.sqlite3")
    spool = data / "spool"
    body = b"\0" * 128 + b"DICM" + b"\0" * 96  # never parsed: the index has every row
    now = time.time() - 86400
    conn.execute("BEGIN")
    for first in range(0, count, PER_STUDY):
        study = f"2.25.{first // PER_STUDY + 1}"
        conn.execute(
            "INSERT INTO studies (study_instance_uid, first_received_at, last_received_at, "
            "state, version) VALUES (?, ?, ?, 'stable', 1)",
            (study, now, now),
        )
        rows = []
        for number in range(first, min(first + PER_STUDY, count)):
            series = f"{study}.{number // PER_SERIES + 1}"
            if number % PER_SERIES == 0:
                conn.execute(
                    "INSERT INTO series (series_instance_uid, study_instance_uid, modality) "
                    "VALUES (?, ?, 'CT')",
                    (series, study),
                )
                (spool / study / series).mkdir(parents=True, exist_ok=True)
            sop = f"{series}.{number + 1}"
            relpath = f"{study}/{series}/{sop}.dcm"
            fd = os.open(spool / relpath, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, body)
            os.close(fd)
            rows.append((sop, series, study, CT, LE, relpath, len(body), now, 1))
        conn.executemany(
            "INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, "
            "sop_class_uid, transfer_syntax_uid, path, size_bytes, received_at, study_version) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for folder in series_folders(data):
        os.utime(folder, (now, now))  # written when the rows say
    os.sync()
    print(f"built {count:,} instances in {time.monotonic() - started:.0f} s")


def series_folders(data: Path) -> list[Path]:
    """The spool's series folders, oldest study first (the build's order)."""
    studies = sorted((data / "spool").glob("2.25.*"), key=lambda p: int(p.name.split(".")[2]))
    return [
        series
        for study in studies
        for series in sorted(study.iterdir(), key=lambda p: int(p.name.rsplit(".", 1)[1]))
    ]


def start_and_time(
    config: Path, port: int, log: Path, profile: Path | None = None
) -> tuple[subprocess.Popen, float]:
    """Start ``ainode serve`` (under cProfile, writing ``profile``, if given) and return it
    with the seconds until it answered a C-ECHO."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    started = time.monotonic()
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, *profiler, "-m", "node", "serve", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    peer = Peer("AINODE", "127.0.0.1", port)
    while True:
        if process.poll() is not None:
            raise SystemExit(f"ainode serve exited {process.returncode}: see {log}")
        try:
            if echo(peer, "BENCH", timeout_s=2) == 0:
                return process, time.monotonic() - started
        except AssociationFailed:
            pass
        time.sleep(0.05)


def stop(process: subprocess.Popen, *, crash: bool) -> None:
    """SIGTERM (a clean stop) or SIGKILL, and wait for the process to end."""
    if crash:
        process.kill()
    else:
        process.send_signal(signal.SIGTERM)
    process.wait(300)


def show_profile(path: Path) -> None:
    """Where a profiled start went: the heaviest functions under ``Node.start``."""
    import pstats

    print(f"--- {path.name}: cumulative seconds, the top of Node.start")
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_callees(r"service.py:\d+\(start\)")
    stats.sort_stats("cumulative").print_stats(r"node/", 25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--journal", action="store_true", help="storage.journal: true")
    parser.add_argument("--reuse", action="store_true", help="keep the data folder if built")
    parser.add_argument("--rounds", type=int, default=3, help="clean stop / kill -9 pairs")
    parser.add_argument("--profile", action="store_true", help="cProfile each start")
    parser.add_argument(
        "--recent", type=int, default=60_000, help="instances written just before each crash"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ainode-bench-restart-", dir=REPO.parent))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    port = _free_port()
    storage: dict = {"data_dir": str(data), "min_free_mb": 1}
    if args.journal:
        storage["journal"] = True
    config = {
        "listener": {"ae_title": "AINODE", "host": "127.0.0.1", "port": port},
        "access": {"accept_any": True},
        "storage": storage,
        "routes_file": str(work / "no-routes.yaml"),
    }
    (work / "node.yaml").write_text(yaml.safe_dump(config))
    profiles: list[Path] = []

    def timed(name: str) -> tuple[subprocess.Popen, float]:
        profile = work / f"{name}.prof" if args.profile else None
        if profile is not None:
            profiles.append(profile)
        return start_and_time(work / "node.yaml", port, work / "node.log", profile)

    try:
        if args.reuse and (data / "ainode.sqlite3").exists():
            print(f"reusing {data}")
        else:
            build(data, args.instances)
        recent_series = -(-args.recent // PER_SERIES)  # rounded up
        recent = series_folders(data)[-recent_series:] if recent_series else []
        process, first = timed("first")
        stop(process, crash=False)
        clean: list[float] = []
        crashed: list[float] = []
        for round_number in range(args.rounds):
            process, seconds = timed(f"clean-{round_number}")
            clean.append(seconds)
            stop(process, crash=True)
            for folder in recent:
                os.utime(folder)  # written in the minute before the crash
            process, seconds = timed(f"crashed-{round_number}")
            crashed.append(seconds)
            stop(process, crash=False)
        count = (
            sqlite3.connect(data / "ainode.sqlite3")
            .execute("SELECT COUNT(*) FROM instances")
            .fetchone()[0]
        )
        mode = "storage.journal" if args.journal else "a file per instance"
        print(
            f"{count:,} instances indexed ({mode}), {len(recent) * PER_SERIES:,} of them "
            "in folders written just before each kill -9; start to first C-ECHO answered:"
        )
        print(f"  first start (no marker)   {first:6.2f} s")
        print(f"  after a clean stop        {_figures(clean)}")
        print(f"  after kill -9             {_figures(crashed)}   (goal: under 5 s)")
        for profile in profiles:
            if profile.exists():  # a start ended by kill -9 wrote none
                show_profile(profile)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _figures(seconds: list[float]) -> str:
    """Best and worst of the rounds, then each."""
    each = ", ".join(f"{s:.2f}" for s in seconds)
    return f"{min(seconds):6.2f} s best, {max(seconds):.2f} s worst ({each})"


if __name__ == "__main__":
    sys.exit(main())
