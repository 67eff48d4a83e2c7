"""``jobs.celery`` in node.yaml, and worker.yaml for ``ainode worker``.

The broker URL carries the broker's password, so neither file holds it: it comes from an
environment variable or a file, as every other secret of the node does.
"""

from __future__ import annotations

import os
import socket
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from models.containers.engine import EngineSettings
from node.config_fields import Section


class Transfer(StrEnum):
    """How a worker gets a job's series and gives its results back."""

    HTTP = "http"  # through the node's HTTP API: no shared file system needed
    SHARED = "shared"  # the node's spool and outputs folders, mounted on the worker


class QueueType(StrEnum):
    """RabbitMQ's queue type for the plugin queues; node and workers must declare the same.

    ``classic`` (durable, persistent messages, publisher confirms) is the default: with one
    prefetch per channel, a worker busy with a job holds no other message, so a free worker
    takes it. ``quorum`` replicates the queue over a RabbitMQ cluster, but RabbitMQ counts its
    prefetch per consumer, so a busy worker may hold one waiting job per plugin it serves.
    """

    CLASSIC = "classic"
    QUORUM = "quorum"


class BrokerSettings(Section):
    queue_type: QueueType = QueueType.CLASSIC
    broker_url_env: str = Field(
        "AINODE_BROKER_URL", description="environment variable holding amqp://user:pass@host/"
    )
    broker_url_file: Path | None = Field(None, description="or a file holding it")

    def broker_url(self) -> str:
        if self.broker_url_file is not None:
            try:
                return self.broker_url_file.read_text().strip()
            except OSError as exc:
                message = f"cannot read broker_url_file {self.broker_url_file}: {exc}"
                raise ValueError(message) from exc
        url = os.environ.get(self.broker_url_env, "").strip()
        if not url:
            raise ValueError(
                f"no broker URL: set {self.broker_url_env} (amqp://user:password@host:5672//) "
                "or broker_url_file"
            )
        return url


class CelerySettings(BrokerSettings):
    """The node's side: where jobs are published and how workers reach the node."""

    worker_token_file: Path | None = Field(
        None, description="file holding the token workers present (Authorization: Bearer)"
    )
    transfer: Transfer = Transfer.HTTP
    queue_timeout_s: float = Field(
        86400, gt=0, description="a job no worker has started by then is published again"
    )


class SharedFolders(Section):
    """Where the node's folders are mounted on the worker (``transfer: shared``)."""

    spool_dir: Path
    outputs_dir: Path


class WorkerDevices(Section):
    gpus: tuple[int, ...] = ()
    slots_per_gpu: int = Field(1, ge=1, le=16)


class WorkerConfig(BrokerSettings):
    """worker.yaml: one ``ainode worker`` process, one GPU slot (or the CPU)."""

    name: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9_.@-]{1,100}$")
    node_url: str = Field(pattern=r"^https?://", description="the node's HTTP port, seen from here")
    token_file: Path = Field(description="the token the node's worker_token_file holds")
    ca_file: Path | None = Field(None, description="CA bundle for an https node_url")
    data_dir: Path = Path("worker-data")
    plugin_dirs: tuple[Path, ...] = ()
    devices: WorkerDevices = WorkerDevices()
    containers: EngineSettings = EngineSettings()
    transfer: Transfer = Transfer.HTTP
    shared: SharedFolders | None = None
    heartbeat_s: float = Field(5, gt=0, le=60)

    @model_validator(mode="after")
    def _shared_needs_folders(self) -> WorkerConfig:
        if self.transfer is Transfer.SHARED and self.shared is None:
            raise ValueError("transfer: shared needs shared.spool_dir and shared.outputs_dir")
        return self

    def token(self) -> str:
        try:
            return self.token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read token_file {self.token_file}: {exc}") from exc


def load_worker_config(path: Path) -> WorkerConfig:
    """worker.yaml with relative paths made absolute against its folder; ValueError says
    what is wrong."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
        config = WorkerConfig.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    base = path.resolve().parent

    def absolute(value: Path) -> Path:
        return value if value.is_absolute() else (base / value).resolve()

    update: dict[str, object] = {
        "token_file": absolute(config.token_file),
        "data_dir": absolute(config.data_dir),
        "plugin_dirs": tuple(absolute(p) for p in config.plugin_dirs),
    }
    if config.ca_file is not None:
        update["ca_file"] = absolute(config.ca_file)
    if config.broker_url_file is not None:
        update["broker_url_file"] = absolute(config.broker_url_file)
    return config.model_copy(update=update)
