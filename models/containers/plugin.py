"""``ContainerPlugin``: a vendor's image run as a ``models.api`` plugin.

Per job (``lifecycle: per-job``) a scratch folder gets the series (hard links to the spool
files) and ``task.json``; the container runs with no network, a read-only root, a non-root
user, no capabilities, CPU and memory limits and, where the manifest asks for a GPU share,
the slot's GPU; what it writes to its output folder becomes the job's Findings
(``models.containers.collect``). The container and the scratch folder are removed after
every run, whatever happened; a node killed mid-run removes them at its next start
(``remove_leftovers``), by the owner label and the scratch folder.

``lifecycle: warm`` starts one container when the plugin is loaded (once per worker slot)
and feeds it job folders: the node writes ``<job>/in``, then ``<job>/request.json``; the
image answers with ``<job>/done.json`` (``{"status": 0}``) after writing ``<job>/out``.
``models.containers.sdk`` speaks this for any ``models.api`` plugin; other images run
per job.

The log (stdout and stderr together) is kept per run in ``<scratch>/../container-logs``,
bounded to the manifest's ``log_limit_kb`` (its head and its tail), and a failed run's error
names the exit status and ends with the log's last lines.
"""

from __future__ import annotations

import collections
import contextvars
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from models.api import AlgorithmIdentification, Device, DeviceKind, Findings, PluginInput
from models.containers.collect import collect_outputs
from models.containers.engine import OWNER_LABEL, ContainerEngine, Mount, RunRequest
from models.containers.folders import (
    APP_MANIFEST_PATH,
    AppManifest,
    FolderLayout,
    layout_for,
    stage_input,
    write_task,
)
from models.containers.spec import ContainerSpec, ContractKind, Lifecycle
from models.errors import PermanentPluginError, PluginError
from models.manifest import PluginManifest

__all__ = [
    "JOB_LOG_DIR",
    "WARM_DIR",
    "ContainerFailed",
    "ContainerPlugin",
    "ContainerRuntime",
    "container_owner",
    "image_problem",
    "remove_leftovers",
    "resolve_contract",
]

WARM_DIR = "/ainode/jobs"
# where the running job keeps its files (the node's output folder of the job): a container's
# log is kept there too, with the job's results
JOB_LOG_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "JOB_LOG_DIR", default=None
)
_LOGS_KEPT = 500
_TAIL_LINES = 20
_POLL_S = 0.02
_ALIVE_CHECK_S = 1.0

log = logging.getLogger(__name__)


class ContainerFailed(PluginError):
    """The container exited with an error; the message has its status and last log lines."""


@dataclass(frozen=True)
class ContainerRuntime:
    """What every container plugin of one node shares: the engine, scratch and owner label."""

    engine: ContainerEngine
    scratch_root: Path  # <data_dir>/containers: emptied at start-up
    owner: str

    @property
    def logs_dir(self) -> Path:
        return self.scratch_root.parent / "container-logs"


def container_owner(data_dir: Path) -> str:
    """The owner label of the node whose data folder is ``data_dir``: nodes sharing one
    engine never touch each other's containers."""
    return hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]


def image_problem(engine: ContainerEngine, spec: ContainerSpec) -> str | None:
    """Why the pinned image cannot run here, or None when it is present."""
    if engine.image_present(spec.image):
        return None
    others = engine.digests_of(spec.name)
    if others:
        return (
            f"digest mismatch: image {spec.name} is here as {', '.join(others)}, not the "
            f"{spec.digest} the manifest pins; load the pinned image, or check the new one and "
            "pin its digest in the manifest"
        )
    return (
        f"image {spec.image} is not present ({engine.kind.value} never pulls it for the node): "
        f"load it with `{engine.kind.value} load -i <product>.tar`"
    )


def resolve_contract(
    runtime: ContainerRuntime, spec: ContainerSpec
) -> tuple[FolderLayout, AppManifest | None]:
    """The folder layout of the image; AUTO looks for a MAP's app.json in the image."""
    app = None
    if spec.contract in (ContractKind.AUTO, ContractKind.MONAI_APP):
        raw = runtime.engine.read_image_file(spec.image, APP_MANIFEST_PATH, runtime.owner)
        if raw is not None:
            app = AppManifest.from_json(raw)
        elif spec.contract is ContractKind.MONAI_APP:
            raise PermanentPluginError(f"{spec.image} has no {APP_MANIFEST_PATH}: not a MAP")
    contract = (
        spec.contract
        if spec.contract is not ContractKind.AUTO
        else (ContractKind.MONAI_APP if app is not None else ContractKind.MERCURE)
    )
    return layout_for(contract, app), app


def remove_leftovers(runtime: ContainerRuntime) -> tuple[str, ...]:
    """Start-up: remove this owner's containers and every scratch folder; their names."""
    removed = runtime.engine.remove_owned(runtime.owner)
    if runtime.scratch_root.is_dir():
        for entry in runtime.scratch_root.iterdir():
            shutil.rmtree(entry, ignore_errors=True)
            removed += (entry.name,)
    return removed


class _BoundedLog:
    """A process's output, keeping its first and last ``limit / 2`` bytes."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        if len(self.head) < self.half:
            take = chunk[: self.half - len(self.head)]
            self.head += take
            chunk = chunk[len(take) :]
        if chunk:
            self.tail.append(chunk)
            self.tail_size += len(chunk)
            while self.tail_size - len(self.tail[0]) >= self.half:
                self.tail_size -= len(self.tail[0])
                self.dropped += len(self.tail.popleft())

    def text(self) -> str:
        middle = f"\n[… {self.dropped} bytes left out …]\n".encode() if self.dropped else b""
        return (bytes(self.head) + middle + b"".join(self.tail)).decode("utf-8", "replace")


def _last_lines(text: str, count: int = _TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-count:])


def _writable_by(path: Path, user: str) -> None:
    """Let the container's user write ``path`` (chown as root, else open it up)."""
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = (int(part) for part in user.split(":"))
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    else:
        path.chmod(0o777)


class ContainerPlugin:
    """A Plugin whose ``run`` starts (or feeds) a container of the manifest's image."""

    def __init__(self, manifest: PluginManifest, runtime: ContainerRuntime) -> None:
        if manifest.container is None:
            raise ValueError(f"{manifest.key} has no container: section")
        self.manifest = manifest
        self.spec: ContainerSpec = manifest.container
        self.runtime = runtime
        self.name = manifest.name
        self.version = manifest.version
        self.layout: FolderLayout | None = None
        self._device = Device()
        self._current: str | None = None  # the running per-job container, or the warm one
        self._warm_dir: Path | None = None
        self._killed = False
        self._lock = threading.Lock()

    # -- Plugin --------------------------------------------------------------------------------

    def load(self, device: Device) -> None:
        # before any container of this owner exists: start-up looks for leftovers only where
        # this folder is
        self.runtime.scratch_root.mkdir(parents=True, exist_ok=True)
        problem = image_problem(self.runtime.engine, self.spec)
        if problem is not None:
            raise PermanentPluginError(f"{self.manifest.key}: {problem}")
        self.layout, app = resolve_contract(self.runtime, self.spec)
        self._device = device
        if self.spec.network != "none":
            log.warning(
                "%s runs with network %r (its manifest asks for it)",
                self.manifest.key,
                self.spec.network,
            )
        log.info(
            "%s: %s, %s container(s)%s",
            self.manifest.key,
            app.describe() if app is not None else f"{self.layout.contract.value} module",
            self.spec.lifecycle.value,
            f" on {device}" if device.kind is DeviceKind.CUDA else "",
        )
        if self.spec.lifecycle is Lifecycle.WARM:
            self._start_warm()

    def run(self, series: PluginInput) -> Findings:
        with self._lock:
            self._killed = False
            if self.spec.lifecycle is Lifecycle.WARM:
                return self._run_warm(series)
            return self._run_per_job(series)

    def kill(self) -> None:
        """Stop the running container now (the job's deadline passed)."""
        self._killed = True
        name = self._current  # read once: the run's thread clears it when it ends
        if self.spec.lifecycle is Lifecycle.WARM:
            self.close()  # the next run starts a fresh warm container
        elif name is not None:
            self.runtime.engine.remove(name)

    def close(self) -> None:
        name, self._current = self._current, None
        if name is not None:
            self.runtime.engine.remove(name)
        if self._warm_dir is not None:
            shutil.rmtree(self._warm_dir, ignore_errors=True)
            self._warm_dir = None

    # -- shared --------------------------------------------------------------------------------

    def _run_id(self) -> str:
        return f"ainode-{self.manifest.name}-{uuid.uuid4().hex[:12]}"

    def _request(
        self, name: str, mounts: tuple[Mount, ...], extra_env: dict[str, str], detach: bool
    ) -> RunRequest:
        assert self.layout is not None
        cuda = self._device.kind is DeviceKind.CUDA
        return RunRequest(
            name=name,
            image=self.spec.image,
            labels={
                OWNER_LABEL: self.runtime.owner,
                "ainode.plugin": self.manifest.key,
            },
            mounts=mounts,
            environment={
                **self.spec.environment,
                **self.layout.environment,
                **extra_env,
                "AINODE_DEVICE": "cuda:0" if cuda else "cpu",
            },
            user=self.spec.user,
            network=self.spec.network,
            cpus=self.spec.cpus,
            memory_mb=self.manifest.resources.memory_mb,
            gpu_index=self._device.index if cuda else None,
            detach=detach,
        )

    def _stage(self, series: PluginInput, job_dir: Path, run_id: str) -> tuple[Path, Path]:
        in_dir, out_dir = job_dir / "in", job_dir / "out"
        stage_input(series, in_dir)
        write_task(
            series,
            in_dir,
            run_id=run_id,
            plugin=self.manifest.key,
            device="cuda:0" if self._device.kind is DeviceKind.CUDA else "cpu",
            settings=dict(self.spec.settings),
        )
        _writable_by(out_dir, self.spec.user)
        return in_dir, out_dir

    def _collect(self, out_dir: Path, series: PluginInput) -> Findings:
        algorithm = AlgorithmIdentification(self.manifest.name, self.manifest.version)
        return collect_outputs(out_dir, series, algorithm)

    def _keep_log(self, run_id: str, text: str) -> Path:
        job_folder = JOB_LOG_DIR.get()
        if job_folder is not None:
            job_folder.mkdir(parents=True, exist_ok=True)
            (job_folder / f"container-{self.manifest.name}.log").write_text(text, "utf-8")
        folder = self.runtime.logs_dir
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{run_id}.log"
        path.write_text(text, encoding="utf-8")
        kept = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-_LOGS_KEPT]:
            old.unlink(missing_ok=True)
        return path

    def _failure(self, status: int, log_text: str, log_path: Path) -> PluginError:
        if self._killed:
            return PluginError(f"{self.manifest.key}: container stopped (job deadline)")
        reason = f"exited with status {status}"
        if status == 137:
            limit = self.manifest.resources.memory_mb
            reason += f" (killed: out of memory within {limit} MB?)" if limit else " (killed)"
        elif status in (125, 126, 127):
            reason += f" ({self.runtime.engine.kind.value} could not start it)"
        return ContainerFailed(
            f"{self.manifest.key}: container {reason}; log {log_path}, last lines:\n"
            f"{_last_lines(log_text)}"
        )

    # -- per job -------------------------------------------------------------------------------

    def _run_per_job(self, series: PluginInput) -> Findings:
        assert self.layout is not None
        run_id = self._run_id()
        job_dir = self.runtime.scratch_root / run_id
        try:
            in_dir, out_dir = self._stage(series, job_dir, run_id)
            mounts = (
                Mount(in_dir, self.layout.input_dir, read_only=True),
                Mount(out_dir, self.layout.output_dir, read_only=False),
            )
            command = self.runtime.engine.run_command(self._request(run_id, mounts, {}, False))
            bounded = _BoundedLog(self.spec.log_limit_kb * 1024)
            self._current = run_id
            started = time.monotonic()
            with subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            ) as process:
                assert process.stdout is not None
                for chunk in iter(lambda: process.stdout.read1(65536), b""):  # type: ignore[union-attr]
                    bounded.add(chunk)
                status = process.wait()
            text = bounded.text()
            log_path = self._keep_log(run_id, text)
            log.info(
                "%s: container %s exited %d after %.1fs",
                self.manifest.key,
                run_id,
                status,
                time.monotonic() - started,
            )
            if status != 0 or self._killed:
                raise self._failure(status, text, log_path)
            return self._collect(out_dir, series)
        finally:
            self._current = None
            self.runtime.engine.remove(run_id)
            shutil.rmtree(job_dir, ignore_errors=True)

    # -- warm ----------------------------------------------------------------------------------

    def _start_warm(self) -> None:
        run_id = self._run_id()
        self._warm_dir = self.runtime.scratch_root / run_id
        _writable_by(self._warm_dir, self.spec.user)
        mounts = (Mount(self._warm_dir, WARM_DIR, read_only=False),)
        request = self._request(run_id, mounts, {"AINODE_WARM_DIR": WARM_DIR}, True)
        done = subprocess.run(
            self.runtime.engine.run_command(request), capture_output=True, check=False
        )
        if done.returncode != 0:
            shutil.rmtree(self._warm_dir, ignore_errors=True)
            self._warm_dir = None
            message = done.stderr.decode("utf-8", "replace").strip()[-500:]
            raise ContainerFailed(f"{self.manifest.key}: warm container did not start: {message}")
        self._current = run_id

    def _run_warm(self, series: PluginInput) -> Findings:
        if self._current is None:
            if self._warm_dir is not None:
                shutil.rmtree(self._warm_dir, ignore_errors=True)
            self._start_warm()
        assert self._warm_dir is not None and self._current is not None
        job = uuid.uuid4().hex[:12]
        job_dir = self._warm_dir / job
        try:
            _writable_by(job_dir, self.spec.user)  # the image writes done.json beside in/ out/
            self._stage(series, job_dir, job)
            request = {"input": f"{WARM_DIR}/{job}/in", "output": f"{WARM_DIR}/{job}/out"}
            temp = job_dir / ".request.json"
            temp.write_text(json.dumps(request), encoding="utf-8")
            temp.rename(job_dir / "request.json")
            reply = self._wait_done(job_dir / "done.json")
            if reply.get("status", 1) != 0:
                text = self.runtime.engine.logs(self._current)
                kept = self._keep_log(f"{self._current}-{job}", text)
                raise self._failure(int(reply.get("status", 1)), text, kept)
            return self._collect(job_dir / "out", series)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def _wait_done(self, done: Path) -> dict[str, object]:
        assert self._current is not None
        checked = time.monotonic()
        while not done.exists():
            if self._killed:
                raise PluginError(f"{self.manifest.key}: warm container stopped (job deadline)")
            if time.monotonic() - checked > _ALIVE_CHECK_S:
                checked = time.monotonic()
                if not self.runtime.engine.is_running(self._current):
                    name, self._current = self._current, None
                    text = self.runtime.engine.logs(name)
                    self.runtime.engine.remove(name)
                    raise ContainerFailed(
                        f"{self.manifest.key}: warm container {name} exited; last lines:\n"
                        f"{_last_lines(text)}"
                    )
            time.sleep(_POLL_S)
        try:
            return json.loads(done.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ContainerFailed(f"{self.manifest.key}: unreadable done.json: {exc}") from exc
