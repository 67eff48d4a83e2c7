"""Ingest throughput: ainode's SCP against DCMTK storescp, both fed by DCMTK storescu.

Two workloads (a synthetic 300-slice 512x512 CT, and 2000 small instances), each sent over
one association and over four concurrent ones, to DCMTK ``storescp +B`` (bit-preserving, the
reference) and to ``ainode serve`` in alternating rounds of the same run. Prints instances/s,
MB/s and the ratio ainode/DCMTK (best round of each). Not a test: run it on demand.

    python bench/ingest.py [--rounds 3] [--ct-slices 300] [--small 2000]
"""

from __future__ import annotations

import argparse
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
from io import BytesIO
from pathlib import Path

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
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


def make_series(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` CT instances of ``size``x``size``: one pydicom template, UIDs patched in."""
    folder.mkdir(parents=True)
    root = generate_uid(prefix=None)[:40]
    placeholder = f"{root}.{'9' * 9}"
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = placeholder
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BENCH"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = "99999999"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = ["0", "0", "88888888.88"]
    ds.SliceThickness = "1"
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    rng = np.random.default_rng(0)
    ds.PixelData = rng.integers(-1000, 2000, size * size, dtype=np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = placeholder
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    template = buffer.getvalue()
    paths = []
    for number in range(1, count + 1):
        data = template.replace(placeholder.encode(), f"{root}.{10**8 + number}".encode())
        data = data.replace(b"99999999", f"{number:08d}".encode())
        data = data.replace(b"88888888.88", f"{float(number):011.2f}".encode())
        path = folder / f"{number:06d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


@dataclass
class Server:
    name: str
    port: int
    ae_title: str
    process: subprocess.Popen[bytes]
    store_dir: Path

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


def start_dcmtk(work: Path) -> Server:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    process = subprocess.Popen(
        [dcmtk("storescp"), "+B", "--fork", "-aet", "STORESCP", "-od", str(out), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port, process)
    return Server("DCMTK storescp +B", port, "STORESCP", process, out)


def start_ainode(work: Path) -> Server:
    port = free_port()
    data = work / "ainode"
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
    path = work / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "node", "--log-level", "WARNING", "serve", "--config", str(path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port, process)
    return Server("ainode", port, "AINODE", process, data / "spool")


def send(server: Server, files: list[Path], associations: int) -> float:
    """Seconds for ``associations`` concurrent storescu processes to send ``files``."""
    parts = [files[n::associations] for n in range(associations)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [
                dcmtk("storescu"),
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
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    try:
        workloads = {
            f"CT {args.ct_slices}x512x512": make_series(work / "ct", args.ct_slices, 512),
            f"{args.small} small (8x8)": make_series(work / "small", args.small, 8),
        }
        reference, ours = start_dcmtk(work), start_ainode(work)
        print(f"{'workload':<22} {'assoc':>5}  {'receiver':<18} {'inst/s':>8} {'MB/s':>8}")
        for label, files in workloads.items():
            megabytes = sum(p.stat().st_size for p in files) / 1e6
            for associations in (1, 4):
                times: dict[str, list[float]] = {reference.name: [], ours.name: []}
                for _ in range(args.rounds):  # interleaved: each round runs both
                    for server in (reference, ours):
                        times[server.name].append(send(server, files, associations))
                best = {name: min(values) for name, values in times.items()}
                for name, seconds in best.items():
                    print(
                        f"{label:<22} {associations:>5}  {name:<18} "
                        f"{len(files) / seconds:>8.0f} {megabytes / seconds:>8.1f}"
                        f"   (median {statistics.median(times[name]):.2f} s)"
                    )
                ratio = best[reference.name] / best[ours.name]
                print(f"{'':<22} {'':>5}  {'ratio ainode/DCMTK':<18} {ratio:>8.2f}")
        for server in (reference, ours):
            server.stop()
        stored = sum(1 for _ in (work / "ainode" / "spool").rglob("*.dcm"))
        expected = sum(len(files) for files in workloads.values())
        if stored != expected:
            print(f"WARNING: ainode holds {stored} instances, expected {expected}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
