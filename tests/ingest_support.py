"""Helpers for the ingest tests: synthetic instances, a node subprocess, DCMTK senders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.conftest import REPO, free_port, poll_until

#: DCMTK 3.6.7 keeps Nagle on unless this is set; with it on every store waits for a
#: delayed ACK (~40 ms), which only slows the tests down.
DCMTK_ENV = dict(os.environ, TCP_NODELAY="1")


def make_instances(
    folder: Path,
    count: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    size: int = 8,
    modality: str = "CT",
    start: int = 1,
) -> list[Path]:
    """Write ``count`` small CT instances of one series; return their paths in order.

    pydicom builds one template; each file is that template with its SOP Instance UID,
    Instance Number and slice position patched in place (same lengths), so 10,000 files take
    a second rather than half a minute.
    """
    folder.mkdir(parents=True, exist_ok=True)
    root = generate_uid(prefix=None)[:40]  # "2.25." + digits; unique per call
    placeholder_uid = f"{root}.{'9' * 9}"
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = placeholder_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientID = "SYNTH-001"
    ds.PatientName = "Synthetic^Patient"
    ds.StudyDate = "20240101"
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "synthetic axial"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = "99999999"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = ["0", "0", "88888888.88"]
    ds.SliceThickness = "1.25"
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.PixelData = (np.arange(size * size, dtype=np.int16) % 2000).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = placeholder_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    template = buffer.getvalue()
    paths = []
    for number in range(start, start + count):
        data = template.replace(placeholder_uid.encode(), f"{root}.{10**8 + number}".encode())
        data = data.replace(b"99999999", f"{number:08d}".encode())
        data = data.replace(b"88888888.88", f"{number * 1.25:011.2f}".encode())
        path = folder / f"{number:06d}.dcm"
        path.write_bytes(data)
        paths.append(path)
    return paths


@dataclass
class RunningNode:
    """An ``ainode serve`` subprocess and where to reach it."""

    process: subprocess.Popen[bytes]
    config_path: Path
    data_dir: Path
    port: int
    ae_title: str
    log_path: Path

    @property
    def peer(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    @property
    def database(self) -> Path:
        return self.data_dir / "ainode.sqlite3"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


#: Storage settings every test node gets (YAML mapping), e.g. ``durability: os`` or
#: ``journal: true``: the ingest suite runs unchanged in another mode (``test_ingest_modes``).
STORAGE_MODE_ENV = "AINODE_TEST_STORAGE"
#: Listener settings every test node gets, e.g. ``processes: 4`` (with a journal mode above).
LISTENER_MODE_ENV = "AINODE_TEST_LISTENER"


def write_config(folder: Path, port: int, **sections: object) -> Path:
    mode = yaml.safe_load(os.environ.get(STORAGE_MODE_ENV) or "{}")
    listener = yaml.safe_load(os.environ.get(LISTENER_MODE_ENV) or "{}")
    config = {
        "listener": {"ae_title": "AINODE", "host": "127.0.0.1", "port": port, **listener},
        "access": {"accept_any": True},
        "storage": {"data_dir": str(folder / "data"), "min_free_mb": 1, **mode},
        "stability": {"stable_after_s": 30, "after_release_s": None, "poll_interval_s": 0.1},
    }
    for name, values in sections.items():  # a mapping merges into the defaults; else replaces
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _listening(port: int) -> bool:
    """True once something accepts TCP connections on ``port``."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answering(port: int) -> bool:
    """True once the node answers an association (accepting or refusing it).

    A bare TCP probe would leave the node an association thread waiting out its ACSE
    timeout, which counts against ``max_associations``.
    """
    from node.scu import AssociationFailed, Peer, echo

    try:
        return echo(Peer("AINODE", "127.0.0.1", port), "PROBE", timeout_s=5) == 0
    except AssociationFailed as exc:
        return "rejected" in str(exc)


@contextmanager
def running_node(folder: Path, port: int | None = None, **sections: dict) -> Iterator[RunningNode]:
    """Start ``ainode serve`` on a free port; stop it by PID (SIGTERM, then SIGKILL)."""
    node = start_node(folder, port, **sections)
    try:
        yield node
    finally:
        stop_node(node)


def start_node(folder: Path, port: int | None = None, **sections: dict) -> RunningNode:
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config_path = write_config(folder, port, **sections)
    log_path = folder / f"node-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(config_path)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    node = RunningNode(process, config_path, folder / "data", port, "AINODE", log_path)

    def answering() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"ainode serve exited {process.returncode}:\n{node.log()}")
        return _answering(port)

    if not poll_until(answering, 30):
        stop_node(node)
        raise RuntimeError(f"ainode serve did not listen within 30 s:\n{node.log()}")
    return node


def stop_node(node: RunningNode) -> None:
    if node.process.poll() is None:
        node.process.send_signal(signal.SIGTERM)
        try:
            node.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait(timeout=15)


@dataclass(frozen=True)
class DcmtkOutcome:
    """What DCMTK storescu reported for one file."""

    path: Path
    response: str | None  # "Success", another status text, or None when nothing was sent
    error: str | None = None  # storescu's own complaint about the file, when it had one

    @property
    def succeeded(self) -> bool:
        return self.response == "Success"


def _file_pair(path: Path) -> tuple[str, str] | None:
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    except Exception:
        return None


def dcmtk_profile(pairs: list[tuple[str, str]], folder: Path) -> Path:
    """A storescu association profile proposing exactly these (SOP class, syntax) pairs.

    Proposing each file's own transfer syntax makes storescu send the file as it is instead
    of trying to decompress it (it cannot for most compressed syntaxes).
    """
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for number, syntax in enumerate(syntaxes, 1):
        lines += [f"[TS{number}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for number, (sop_class, syntax) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{number} = {sop_class}\\TS{syntaxes.index(syntax) + 1}")
    lines += ["[[Profiles]]", "[Exact]", "PresentationContexts = Contexts"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"storescu-{time.monotonic_ns()}.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


def dcmtk_store(
    storescu: str,
    files: list[Path],
    port: int,
    workdir: Path,
    *,
    called_ae: str = "AINODE",
    calling_ae: str = "STORESCU",
    timeout: float = 300,
) -> list[DcmtkOutcome]:
    """Send ``files`` with DCMTK storescu, one association per run of <=100 context pairs.

    Returns an outcome for every file, in the order storescu sent them; files storescu could
    not read or send have ``response=None``.
    """
    outcomes: dict[Path, DcmtkOutcome] = {path: DcmtkOutcome(path, None) for path in files}
    order: list[Path] = []
    batches: list[tuple[list[tuple[str, str]], list[Path]]] = [([], [])]
    for path in files:
        pair = _file_pair(path)
        if pair is None:
            continue
        pairs, batch = batches[-1]
        if pair not in pairs and len(pairs) == 100:
            batches.append(([], []))
            pairs, batch = batches[-1]
        if pair not in pairs:
            pairs.append(pair)
        batch.append(path)
    for pairs, batch in batches:
        if not batch:
            continue
        profile = dcmtk_profile(pairs, workdir)
        result = subprocess.run(
            [
                storescu,
                "-v",
                "-nh",
                "-aet",
                calling_ae,
                "-aec",
                called_ae,
                "-xf",
                str(profile),
                "Exact",
                "127.0.0.1",
                str(port),
                *map(str, batch),
            ],
            capture_output=True,
            text=True,
            env=DCMTK_ENV,
            timeout=timeout,
            check=False,
        )
        current: Path | None = None
        for line in (result.stdout + result.stderr).splitlines():
            if line.startswith("I: Sending file: "):
                current = Path(line[len("I: Sending file: ") :].strip())
                order.append(current)
            elif line.startswith("I: Received Store Response") and current is not None:
                text = line[len("I: Received Store Response") :].strip().strip("()")
                outcomes[current] = DcmtkOutcome(current, text)
                current = None
            elif (
                line.startswith(("E: ", "W: "))
                and current is not None
                and outcomes[current].error is None
            ):
                outcomes[current] = DcmtkOutcome(current, None, line[3:].strip())
    sent_first = [outcomes[p] for p in dict.fromkeys(order) if p in outcomes]
    rest = [o for p, o in outcomes.items() if p not in set(order)]
    return sent_first + rest


@dataclass(frozen=True)
class RawInstance:
    """A dataset's bytes as a sender would put them on the wire, whatever their state."""

    source: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset: bytes


def raw_instance(path: Path) -> RawInstance:
    """Split any file (Part-10, bare dataset, junk) into the pieces of a C-STORE request."""
    from pydicom import dcmread
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import ImplicitVRLittleEndian, SecondaryCaptureImageStorage

    data = path.read_bytes()
    offset = 0
    transfer_syntax = None
    try:
        with path.open("rb") as handle:
            read_preamble(handle, False)
            meta = _read_file_meta_info(handle)
            offset = handle.tell()
            transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "") or None
    except Exception:
        offset = 132 if data[128:132] == b"DICM" else 0
        if data[offset : offset + 2] == b"\x02\x00":  # a File Meta group without a preamble
            try:
                handle = BytesIO(data)
                handle.seek(offset)
                meta = _read_file_meta_info(handle)
                offset = handle.tell()
                transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "") or None
            except Exception:
                pass
    if transfer_syntax is None:
        vr = data[offset + 4 : offset + 6]
        transfer_syntax = (
            ExplicitVRLittleEndian if vr.isalpha() and vr.isupper() else ImplicitVRLittleEndian
        )
    sop_class, sop_instance = SecondaryCaptureImageStorage, generate_uid()
    try:
        ds = dcmread(path, force=True, stop_before_pixels=True)
        sop_class = str(ds.get("SOPClassUID") or sop_class)
        sop_instance = str(ds.get("SOPInstanceUID") or sop_instance)
    except BaseException:  # RecursionError, MemoryError, junk: keep the placeholders
        pass
    return RawInstance(path, sop_class, sop_instance, str(transfer_syntax), data[offset:])


def raw_store(port: int, instances: list[RawInstance], workdir: Path) -> list[int | None]:
    """C-STORE each dataset's bytes unchanged over one association; return the statuses.

    ``None`` means no response came back (which the node must never cause).
    """
    from node.ingest.spool import encode_file_meta
    from node.scu import Peer, _contexts, associate

    workdir.mkdir(parents=True, exist_ok=True)
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax_uid) for i in instances)
    assoc = associate(Peer("AINODE", "127.0.0.1", port), _contexts(pairs), "RAWSENDER", 30)
    statuses: list[int | None] = []
    try:
        for number, item in enumerate(instances):
            wire = workdir / f"{number:04d}.dcm"
            meta = encode_file_meta(
                item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid, None
            )
            wire.write_bytes(meta + item.dataset)
            status = assoc.send_c_store(wire) if assoc.is_established else Dataset()
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
