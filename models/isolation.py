"""Plugins in their own interpreter: a vendor's torch or onnxruntime never touches ours.

A manifest naming ``python: /opt/vendor/venv/bin/python`` runs in a child process of that
interpreter (``python -m models.isolation_worker``, with this repository on PYTHONPATH). The
child needs numpy, pydicom, pydantic and PyYAML (what ``models.api`` and ``models.manifest``
import), highdicom for 3D inputs, plus whatever the plugin itself needs; a venv made with
``--system-site-packages`` from the node's own interpreter has them, and the vendor's own
packages in the venv take precedence.

Protocol (child stdin/stdout; the child's own stdout is redirected to stderr so a vendor's
``print`` cannot corrupt it). Every message, both ways, is::

    8 bytes   big-endian length N of the header
    N bytes   UTF-8 JSON header; header["arrays"] lists {"dtype", "shape"} of the arrays
    ...       each array's C-order bytes, in that order, back to back

Requests are ``{"op": "load", "manifest": DIR, "device": {...}}`` and
``{"op": "run", "input": {...}}``; replies are ``{"ok": true, ...}`` or
``{"ok": false, "error": TEXT, "out_of_memory": BOOL}``. A load reply names the child's
interpreter and Python version; a run reply carries ``"findings"``. Arrays are referred to
in the JSON by their index, ``{"array": i}``. Everything is plain JSON and raw numpy bytes:
no pickle, so the two sides may run different numpy and Python versions.

If the child dies (crash, ``kill -9``, out of memory) the host starts a new one, loads the
plugin again and retries the job (``retries`` times).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydicom import Dataset

from models import findings_codec as codec
from models.api import (
    Device,
    DeviceKind,
    Findings,
    PluginInput,
    SourceFrame,
    SpacingSource,
)
from models.devices import GpuOutOfMemory
from models.manifest import PluginManifest

__all__ = [
    "IsolatedPlugin",
    "WorkerCrashed",
    "WorkerError",
    "decode_findings",
    "decode_input",
    "encode_findings",
    "encode_input",
    "read_message",
    "write_message",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
_LENGTH = struct.Struct(">Q")

log = logging.getLogger(__name__)


class WorkerCrashed(RuntimeError):
    """The isolated interpreter exited or closed its pipe in the middle of a request."""


class WorkerError(RuntimeError):
    """The plugin raised inside the isolated interpreter; the message is its error."""


# -- framing -----------------------------------------------------------------------------------


def write_message(stream: IO[bytes], header: dict[str, Any], arrays: list[np.ndarray]) -> None:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    header = {**header, "arrays": [{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays]}
    data = json.dumps(header).encode("utf-8")
    stream.write(_LENGTH.pack(len(data)))
    stream.write(data)
    for array in arrays:
        if array.size:  # an empty box is (0, 0, 0): no bytes, and memoryview cannot cast it
            stream.write(memoryview(array).cast("B"))
    stream.flush()


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(stream: IO[bytes]) -> tuple[dict[str, Any], list[np.ndarray]] | None:
    """One message, or None at end of stream (the other side is gone)."""
    prefix = _read_exactly(stream, _LENGTH.size)
    if prefix is None:
        return None
    raw = _read_exactly(stream, _LENGTH.unpack(prefix)[0])
    if raw is None:
        return None
    header = json.loads(raw)
    arrays = []
    for spec in header.pop("arrays"):
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"], dtype=np.int64))
        data = _read_exactly(stream, count * dtype.itemsize) if count else b""
        if data is None:
            return None
        arrays.append(np.frombuffer(data, dtype=dtype).reshape(spec["shape"]).copy())
    return header, arrays


# -- values ------------------------------------------------------------------------------------


def encode_findings(findings: Findings, arrays: list[np.ndarray]) -> dict[str, Any]:
    """Findings → the ``models.findings_codec`` document, appending masks to ``arrays`` (a
    boxed mask as its box: the pipe carries a nodule's voxels, not the volume)."""
    references = []
    for segment in findings.segments:
        arrays.append(segment.box.array)
        references.append({"array": len(arrays) - 1, **codec.box_json(segment)})
    return codec.encode(findings, references)


def decode_findings(
    data: dict[str, Any], arrays: list[np.ndarray], sources: Sequence[SourceFrame]
) -> Findings:
    def mask_of(reference: codec.MaskReference) -> np.ndarray:
        if reference.array is None or reference.array >= len(arrays):
            raise ValueError(f"mask reference {reference} names no array of the message")
        return arrays[reference.array]

    return codec.decode(data, sources, mask_of)


def encode_input(series: PluginInput, arrays: list[np.ndarray]) -> dict[str, Any]:
    """PluginInput → JSON, appending pixels (and prior masks) to ``arrays``."""
    arrays.append(series.pixels)
    volume = None
    if series.volume is not None:
        volume = {
            "affine": series.volume.affine.tolist(),
            "coordinate_system": series.volume.coordinate_system.value,
            "frame_of_reference_uid": series.volume.frame_of_reference_uid,
        }
    return {
        "study_instance_uid": series.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "modality": series.modality,
        "pixels": {"array": len(arrays) - 1},
        "sources": [[s.sop_class_uid, s.sop_instance_uid, s.frame_number] for s in series.sources],
        "pixel_spacing": list(series.pixel_spacing),
        "headers": [h.to_json_dict(suppress_invalid_tags=True) for h in series.headers],
        "volume": volume,
        "photometric_interpretation": series.photometric_interpretation,
        "prior": {name: encode_findings(f, arrays) for name, f in series.prior.items()},
        "spacing_source": series.spacing_source.value,
        "magnification": series.magnification,
    }


def decode_input(data: dict[str, Any], arrays: list[np.ndarray]) -> PluginInput:
    from types import MappingProxyType

    pixels = arrays[data["pixels"]["array"]]
    sources = tuple(SourceFrame(*s) for s in data["sources"])
    volume = None
    if data["volume"] is not None:
        import highdicom

        volume = highdicom.Volume(
            array=pixels,
            affine=np.asarray(data["volume"]["affine"]),
            coordinate_system=data["volume"]["coordinate_system"],
            frame_of_reference_uid=data["volume"]["frame_of_reference_uid"],
        )
    return PluginInput(
        study_instance_uid=data["study_instance_uid"],
        series_instance_uid=data["series_instance_uid"],
        modality=data["modality"],
        pixels=pixels,
        sources=sources,
        pixel_spacing=tuple(data["pixel_spacing"]),  # type: ignore[arg-type]
        headers=tuple(Dataset.from_json(h) for h in data["headers"]),
        volume=volume,
        photometric_interpretation=data["photometric_interpretation"],
        prior=MappingProxyType(
            {name: decode_findings(f, arrays, sources) for name, f in data["prior"].items()}
        ),
        spacing_source=SpacingSource(data["spacing_source"]),
        magnification=data["magnification"],
    )


def encode_device(device: Device) -> dict[str, Any]:
    return {
        "kind": device.kind.value,
        "index": device.index,
        "memory_limit_bytes": device.memory_limit_bytes,
    }


def decode_device(data: Mapping[str, Any]) -> Device:
    return Device(DeviceKind(data["kind"]), data["index"], data["memory_limit_bytes"])


# -- host side ---------------------------------------------------------------------------------


class IsolatedPlugin:
    """A Plugin whose ``load`` and ``run`` happen in a child process of ``manifest.python``."""

    def __init__(self, manifest: PluginManifest, *, retries: int = 1) -> None:
        if manifest.python is None:
            raise ValueError(f"{manifest.key} names no isolated interpreter (python:)")
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self.retries = retries
        self.interpreter: str | None = None
        self.python_version: str | None = None
        self.restarts = 0
        self._device: Device | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._killed = False

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _start(self) -> None:
        assert self._device is not None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        self._process = subprocess.Popen(
            [str(self.manifest.python), "-m", "models.isolation_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
        )
        try:
            reply, _ = self._request(
                {
                    "op": "load",
                    "manifest": str(self.manifest.directory),
                    "device": encode_device(self._device),
                },
                [],
            )
        except BaseException:
            self.close()  # a worker whose plugin did not load must not linger
            raise
        self.interpreter = reply["interpreter"]
        self.python_version = reply["python_version"]
        log.info(
            "isolated %s: worker pid %s on %s (%s)",
            self.manifest.key,
            self._process.pid,
            self.interpreter,
            self._device,
        )

    def _request(
        self, header: dict[str, Any], arrays: list[np.ndarray]
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            write_message(process.stdin, header, arrays)
            message = read_message(process.stdout)
        except (BrokenPipeError, ValueError, OSError) as exc:
            message = None
            log.warning("isolated %s: pipe error %s", self.manifest.key, exc)
        if message is None:
            code = process.wait()
            self._process = None
            raise WorkerCrashed(
                f"isolated worker of {self.manifest.key} (pid {process.pid}) exited with "
                f"status {code} during {header['op']}"
            )
        reply, reply_arrays = message
        if not reply["ok"]:
            if reply.get("out_of_memory"):
                raise GpuOutOfMemory(reply["error"])
            raise WorkerError(reply["error"])
        return reply, reply_arrays

    def load(self, device: Device) -> None:
        with self._lock:
            self._device = device
            self._start()

    def run(self, series: PluginInput) -> Findings:
        with self._lock:
            arrays: list[np.ndarray] = []
            request = {"op": "run", "input": encode_input(series, arrays)}
            self._killed = False
            for attempt in range(self.retries + 1):
                if self._process is None:
                    self.restarts += 1
                    self._start()
                try:
                    reply, reply_arrays = self._request(request, arrays)
                except WorkerCrashed as exc:
                    if attempt == self.retries or self._killed:
                        raise
                    log.warning("%s; restarting it and retrying the job", exc)
                    continue
                return decode_findings(reply["findings"], reply_arrays, series.sources)
            raise AssertionError("unreachable")

    def kill(self) -> None:
        """Stop the child now (job timeout); the next ``run`` starts a new one."""
        self._killed = True
        process = self._process
        if process is not None:
            process.kill()

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
