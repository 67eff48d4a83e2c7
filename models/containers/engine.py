"""Podman or Docker, driven through their command line: the one place that knows their flags.

Every container the node starts carries the label ``ainode.owner=<owner>`` (a digest of the
node's data folder), so a node restarted after ``kill -9`` removes what it left behind, and
two nodes on one host never remove each other's. Site-specific engine flags (an OCI runtime
such as ``runc``, ulimits within the caller's hard limits) come from node.yaml
(``containers:``), never from code.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "OWNER_LABEL",
    "ContainerEngine",
    "EngineKind",
    "EngineSettings",
    "EngineUnavailable",
    "Mount",
    "RunRequest",
]

OWNER_LABEL = "ainode.owner"
_QUICK_S = 120.0  # inspect, create, cp, rm: never a job's length

log = logging.getLogger(__name__)


class EngineKind(StrEnum):
    AUTO = "auto"  # podman when installed, else docker
    PODMAN = "podman"
    DOCKER = "docker"


class EngineSettings(BaseModel):
    """``containers:`` in node.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: EngineKind = EngineKind.AUTO
    runtime: str | None = Field(None, description="OCI runtime, e.g. runc where crun fails")
    run_options: tuple[str, ...] = Field(
        (), description="extra flags for every run, e.g. ['--ulimit', 'nofile=4096:4096']"
    )
    pids_limit: int = Field(4096, ge=16)
    validator: Path | None = Field(
        None, description="validate-dicom for DICOM a product writes (default: structural)"
    )


class EngineUnavailable(RuntimeError):
    """No container engine can be used here; the message says what is missing."""


@dataclass(frozen=True)
class Mount:
    host: Path
    container: str
    read_only: bool = True


@dataclass(frozen=True)
class RunRequest:
    """One container: what it runs and within which limits."""

    name: str
    image: str
    labels: Mapping[str, str]
    mounts: tuple[Mount, ...]
    environment: Mapping[str, str]
    user: str
    network: str
    cpus: float
    memory_mb: int | None = None
    gpu_index: int | None = None  # None: no GPU passed through
    detach: bool = False
    tmpfs: tuple[str, ...] = ("/tmp",)


class ContainerEngine:
    """Commands for one engine binary with the site's settings."""

    def __init__(self, binary: str, kind: EngineKind, settings: EngineSettings) -> None:
        if kind is EngineKind.AUTO:
            raise ValueError("a ContainerEngine is podman or docker, not auto")
        self.binary = binary
        self.kind = kind
        self.settings = settings

    @classmethod
    def detect(cls, settings: EngineSettings) -> ContainerEngine:
        """The configured engine, or the first installed one; EngineUnavailable if none."""
        kinds = (
            (EngineKind.PODMAN, EngineKind.DOCKER)
            if settings.engine is EngineKind.AUTO
            else (settings.engine,)
        )
        for kind in kinds:
            binary = shutil.which(kind.value)
            if binary is None:
                continue
            engine = cls(binary, kind, settings)
            if engine.version() is not None:
                return engine
        raise EngineUnavailable(
            f"no working container engine ({' or '.join(k.value for k in kinds)}): install "
            "podman (apt-get install podman runc) or docker, or set containers.engine in "
            "node.yaml"
        )

    # -- commands ------------------------------------------------------------------------------

    def _base(self) -> list[str]:
        if self.kind is EngineKind.PODMAN and self.settings.runtime:
            return [self.binary, "--runtime", self.settings.runtime]
        return [self.binary]

    def _quick(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self._base(), *args], capture_output=True, timeout=_QUICK_S, check=False
        )

    def version(self) -> str | None:
        try:
            done = self._quick("version", "--format", "{{.Client.Version}}")
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.decode().strip() or None if done.returncode == 0 else None

    def run_command(self, request: RunRequest) -> list[str]:
        """The full ``run`` command line for ``request``."""
        args = [*self._base(), "run", "--name", request.name, "--init"]
        if request.detach:
            args.append("--detach")
        if self.kind is EngineKind.DOCKER and self.settings.runtime:
            args += ["--runtime", self.settings.runtime]
        for key, value in sorted(request.labels.items()):
            args += ["--label", f"{key}={value}"]
        args += [
            "--network",
            request.network,
            "--read-only",
            "--user",
            request.user,
            "--cap-drop",
            "all",
            "--security-opt",
            "no-new-privileges",
            "--cpus",
            f"{request.cpus:g}",
            "--pids-limit",
            str(self.settings.pids_limit),
        ]
        if request.memory_mb is not None:
            memory = f"{request.memory_mb}m"
            args += ["--memory", memory, "--memory-swap", memory]
        for path in request.tmpfs:
            args += ["--tmpfs", f"{path}:rw,nosuid,nodev,size=1g"]
        for mount in request.mounts:
            mode = "ro" if mount.read_only else "rw"
            args += ["--volume", f"{mount.host}:{mount.container}:{mode}"]
        for key, value in sorted(request.environment.items()):
            args += ["--env", f"{key}={value}"]
        if request.gpu_index is not None:
            args += (
                ["--device", f"nvidia.com/gpu={request.gpu_index}"]
                if self.kind is EngineKind.PODMAN
                else ["--gpus", f"device={request.gpu_index}"]
            )
        args += list(self.settings.run_options)
        args.append(request.image)  # the image's own entry point runs
        return args

    def image_present(self, reference: str) -> bool:
        return self._quick("image", "inspect", "--format", "{{.Id}}", reference).returncode == 0

    def digests_of(self, name: str) -> tuple[str, ...]:
        """Digests of the local images called ``name`` (any tag), for a mismatch message."""
        done = self._quick("images", "--digests", "--format", "{{.Repository}}@{{.Digest}}", name)
        digests = {
            line.split("@", 1)[1]
            for line in done.stdout.decode().split()
            if line.split("@", 1)[0] == name and line.split("@", 1)[1].startswith("sha256:")
        }
        return tuple(sorted(digests))

    def read_image_file(self, reference: str, path: str, owner: str) -> bytes | None:
        """A file of the image, read without running it (create, copy out, remove)."""
        name = f"ainode-inspect-{owner}-{abs(hash((reference, path))) % 10**12}"
        label = f"{OWNER_LABEL}={owner}"
        created = self._quick("create", "--label", label, "--name", name, reference)
        if created.returncode != 0:
            raise EngineUnavailable(f"cannot create a container of {reference}: {_err(created)}")
        try:
            copied = self._quick("cp", f"{name}:{path}", "-")
            if copied.returncode != 0:
                return None
            with tarfile.open(fileobj=io.BytesIO(copied.stdout)) as archive:
                member = next((m for m in archive.getmembers() if m.isfile()), None)
                handle = None if member is None else archive.extractfile(member)
                return None if handle is None else handle.read()
        finally:
            self.remove(name)

    def remove(self, name: str) -> None:
        """Remove a container, running or not; nothing if it is gone already."""
        self._quick("rm", "--force", name)

    def kill(self, name: str) -> None:
        self._quick("kill", name)

    def is_running(self, name: str) -> bool:
        done = self._quick("inspect", "--format", "{{.State.Running}}", name)
        return done.returncode == 0 and done.stdout.decode().strip() == "true"

    def logs(self, name: str, tail: int = 200) -> str:
        done = self._quick("logs", "--tail", str(tail), name)
        return (done.stdout + done.stderr).decode("utf-8", "replace")

    def owned(self, owner: str) -> tuple[str, ...]:
        """Names of this owner's containers, running or not."""
        done = self._quick(
            "ps", "--all", "--filter", f"label={OWNER_LABEL}={owner}", "--format", "{{.Names}}"
        )
        return tuple(line for line in done.stdout.decode().split() if line)

    def remove_owned(self, owner: str) -> tuple[str, ...]:
        """Remove every container of this owner (start-up after a crash); their names."""
        names = self.owned(owner)
        for name in names:
            self.remove(name)
        return names

    def gpu_passthrough(self) -> str | None:
        """How GPUs reach containers here, or None where they cannot."""
        if self.kind is EngineKind.PODMAN:
            for folder in (Path("/etc/cdi"), Path("/var/run/cdi")):
                for spec in sorted(folder.glob("*.*")) if folder.is_dir() else ():
                    if "nvidia.com/gpu" in spec.read_text(errors="replace"):
                        return f"CDI nvidia.com/gpu ({spec})"
            return None
        done = self._quick("info", "--format", "{{json .Runtimes}}")
        return "docker nvidia runtime" if b"nvidia" in done.stdout else None


def _err(done: subprocess.CompletedProcess[bytes]) -> str:
    return " ".join(done.stderr.decode("utf-8", "replace").split())[-400:] or "no message"
