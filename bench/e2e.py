"""End-to-end latency and ingest-under-load benchmark (not a test; run on demand).

1. Latency: a 300-slice 512×512 phantom chest CT is C-STOREd to ``ainode serve``; the node
   routes it to ct-lung-nodule and sends SEG + SRs to a DCMTK ``storescp``. Printed: the time
   from the last instance's Success to the last result's Success at the destination, broken
   down into stability wait, routing, queueing, series load, inference, output build, commit
   and send. The non-model overhead (load + build + send) is compared with the 3 s target
   and with references measured in the same run: reading the series with plain pydicom
   (load) and sending the same result files with DCMTK ``storescu`` (send).
2. Ingest under load: the same number of small instances is sent to the node while it is
   idle and while jobs are running on its workers; prints instances/s of both and the ratio
   (target ≥ 0.8).

Usage: python bench/e2e.py [--slices 300] [--size 512] [--ingest 1000]
"""

from __future__ import annotations

import argparse
import json
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

from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct  # noqa: E402
from node.scu import Peer, send  # noqa: E402

ROUTES = """
routes:
  - name: ct-chest-lung-nodule
    when: {modality: CT, body_part: chest}
    series: {orientation: axial, min_instances: 10, exclude_image_type: [LOCALIZER]}
    run: [ct-lung-nodule]
    send_to: [pacs]
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dcmtk(name: str) -> str | None:
    path = f"/usr/bin/{name}"
    return path if Path(path).exists() else None


class Bench:
    def __init__(self, root: Path, workers: int) -> None:
        self.root = root
        self.port = free_port()
        self.pacs_port = free_port()
        self.received = root / "pacs"
        self.received.mkdir()
        self.pacs = subprocess.Popen(
            [
                dcmtk("storescp") or "storescp",
                "+B",
                "-od",
                str(self.received),
                "-aet",
                "PACS",
                str(self.pacs_port),
            ],
            env=dict(os.environ, TCP_NODELAY="1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (root / "routes.yaml").write_text(ROUTES)
        config = {
            "listener": {"ae_title": "AINODE", "host": "127.0.0.1", "port": self.port},
            "access": {"accept_any": True},
            "storage": {"data_dir": str(root / "data"), "min_free_mb": 1},
            "stability": {"stable_after_s": 15, "after_release_s": 2, "poll_interval_s": 0.1},
            "routes_file": str(root / "routes.yaml"),
            "plugin_dirs": [str(REPO / "models" / "plugins")],
            "jobs": {"workers": workers, "timeout_s": 900},
            "destinations": {
                "pacs": {
                    "kind": "dicom",
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": self.pacs_port,
                    "timeout_s": 60,
                },
            },
        }
        self.config_path = root / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.database = root / "data" / "ainode.sqlite3"
        self.log = open(root / "node.log", "wb")  # noqa: SIM115
        self.node = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.peer = Peer("AINODE", "127.0.0.1", self.port)
        self._wait(lambda: self._listening(), 60, "the node to listen")

    def _listening(self) -> bool:
        import socket

        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    @staticmethod
    def _wait(predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")

    def query(self, sql: str, *params):
        conn = sqlite3.connect(self.database, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def send(self, paths: list[Path]) -> tuple[float, float]:
        """Send; return (wall time of the last Success, seconds the send took)."""
        last = [0.0]

        def progress(done: int, total: int) -> None:
            last[0] = time.time()

        started = time.perf_counter()
        report = send(paths, self.peer, "BENCH", progress=progress)
        if not report.ok:
            raise SystemExit(f"send failed: {report.failed[:3]}")
        return last[0], time.perf_counter() - started

    def study_done(self, study: str) -> sqlite3.Row | None:
        rows = self.query(
            """
            SELECT j.id, j.state, j.error, j.timings, j.started_at, j.finished_at, j.created_at,
                   m.created_at AS matched_at, v.stable_at,
                   (SELECT MAX(o.sent_at) FROM outbox o JOIN results r USING (sop_instance_uid)
                    WHERE r.job_id = j.id) AS sent_at,
                   (SELECT COUNT(*) FROM outbox o JOIN results r USING (sop_instance_uid)
                    WHERE r.job_id = j.id AND o.state != 'SENT') AS unsent
            FROM jobs j JOIN route_matches m ON m.id = j.route_match_id
            JOIN study_versions v ON v.id = m.study_version_id
            WHERE v.study_instance_uid = ?
            """,
            study,
        )
        if not rows:
            return None
        row = rows[0]
        if row["state"] == "FAILED":
            raise SystemExit(f"job failed: {row['error']}")
        return row if row["state"] == "SUCCEEDED" and row["unsent"] == 0 else None

    def close(self) -> None:
        for process in (self.node, self.pacs):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(30)
        self.log.close()


def phantom(folder: Path, spec: ChestCTSpec) -> tuple[str, list[Path]]:
    _, paths = write_chest_ct(folder, spec, uid_seed=f"bench-e2e-{folder.name}-{time.time()}")
    from pydicom import dcmread

    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


def large_spec(slices: int, size: int) -> ChestCTSpec:
    """ChestCTSpec.large(), or a series of the same physics and field of view in another size."""
    large = ChestCTSpec.large()
    if (slices, size) == large.shape[:2]:
        return large
    return ChestCTSpec(
        shape=(slices, size, size),
        pixel_spacing_mm=min(2.0, large.pixel_spacing_mm * 512 / size),
        slice_spacing_mm=1.0,
        nodules=large.nodules[:4],
        seed=2,
    )


def reference_load(paths: list[Path]) -> float:
    from pydicom import dcmread

    started = time.perf_counter()
    for path in paths:
        dcmread(path).pixel_array  # noqa: B018 - decoding is what is timed
    return time.perf_counter() - started


def reference_send(files: list[Path], port: int) -> float | None:
    storescu = dcmtk("storescu")
    if storescu is None:
        return None
    started = time.perf_counter()
    subprocess.run(
        [storescu, "-R", "-aec", "PACS", "127.0.0.1", str(port), *map(str, files)],
        env=dict(os.environ, TCP_NODELAY="1"),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def latency(bench: Bench, root: Path, slices: int, size: int) -> None:
    print("warming up: a small study starts the worker process and loads the plugin")
    warm_study, warm = phantom(root / "warm", ChestCTSpec.small())
    bench.send(warm)
    bench._wait(lambda: bench.study_done(warm_study), 600, "the warm-up study")

    print(f"writing a {slices}×{size}×{size} phantom chest CT ...")
    study, paths = phantom(root / "ct", large_spec(slices, size))
    last_success, took = bench.send(paths)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    print(
        f"sent {len(paths)} instances ({size_mb:.0f} MB) in {took:.1f}s "
        f"({len(paths) / took:.0f} inst/s)"
    )
    row = bench._wait(lambda: bench.study_done(study), 900, "the results at the destination")
    timings = json.loads(row["timings"])
    stages = {
        "stability wait": row["stable_at"] - last_success,
        "routing": row["matched_at"] - row["stable_at"],
        "queue (job to worker)": row["started_at"] - row["matched_at"],
        "series load": timings.get("load", 0.0),
        "inference": timings.get("inference", 0.0),
        "output build": timings.get("build", 0.0),
        "commit": row["finished_at"]
        - row["started_at"]
        - sum(timings.get(k, 0.0) for k in ("load", "inference", "build")),
        "send": row["sent_at"] - row["finished_at"],
    }
    total = row["sent_at"] - last_success
    print(f"\nlast instance Success -> last result Success at the destination: {total:.2f}s")
    for name, seconds in stages.items():
        print(f"  {name:<22} {seconds:7.2f}s")
    overhead = stages["series load"] + stages["output build"] + stages["send"]
    print(
        f"non-model overhead (load + build + send): {overhead:.2f}s "
        f"(target <= 3 s: ratio {overhead / 3:.2f})"
    )

    load_ref = reference_load(paths)
    print(
        f"series load {stages['series load']:.2f}s vs plain pydicom read+decode "
        f"{load_ref:.2f}s: ratio {stages['series load'] / load_ref:.2f}"
    )
    results = [
        bench.root / "data" / "outputs" / r["path"]
        for r in bench.query("SELECT path FROM results WHERE job_id = ?", row["id"])
    ]
    send_ref = reference_send(results, bench.pacs_port)
    if send_ref:
        print(
            f"send {stages['send']:.2f}s vs DCMTK storescu of the same {len(results)} "
            f"result files {send_ref:.2f}s: ratio {stages['send'] / send_ref:.2f}"
        )


def ingest_under_load(bench: Bench, root: Path, count: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from ingest_support import make_instances

    def rate(tag: str) -> float:
        files = make_instances(root / f"ingest-{tag}", count, size=64)
        _, took = bench.send(files)
        return count / took

    idle = rate("idle")
    # keep the workers busy: studies whose jobs run while the ingest send goes on
    studies = []
    for seed in (3, 4, 5):
        study, paths = phantom(root / f"load{seed}", ChestCTSpec.small())
        bench.send(paths)
        studies.append(study)
    bench._wait(
        lambda: bench.query("SELECT 1 FROM jobs WHERE state = 'RUNNING'"), 300, "a running job"
    )
    loaded = rate("loaded")
    running = bench.query("SELECT COUNT(*) FROM jobs WHERE state IN ('RUNNING', 'QUEUED')")[0][0]
    print(
        f"\ningest of {count} small instances: idle {idle:.0f} inst/s, with jobs running "
        f"{loaded:.0f} inst/s: ratio {loaded / idle:.2f} (target >= 0.8; "
        f"{running} job(s) still running or queued at the end of the loaded send)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--ingest", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ainode-bench-e2e-"))
    bench = Bench(root, args.workers)
    try:
        latency(bench, root, args.slices, args.size)
        ingest_under_load(bench, root, args.ingest)
    finally:
        bench.close()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
