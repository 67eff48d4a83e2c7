"""node.yaml: the node's configuration, validated at load time.

Every section is a frozen pydantic model with ``extra="forbid"`` so a typo in the file is an
error that names the field, not a silently ignored setting. Paths in the file are relative to
the file's own folder, so ``ainode serve --config /etc/ainode/node.yaml`` works from anywhere.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from models.containers.engine import EngineSettings
from node.access import host_networks
from node.audit.settings import AuditSettings
from node.config_fields import Section, check_ae_title
from node.console.settings import ConsoleSettings
from node.destination_settings import Destination
from node.ingest.journal_format import Durability
from node.jobs.remote.settings import CelerySettings
from node.output_settings import OutputsConfig
from node.pseudonym_settings import PseudonymisationSettings
from node.retention.settings import RetentionSettings
from node.tls import TlsError, TlsSettings, parse_subject, pem_fingerprint

LOGGER = logging.getLogger(__name__)

#: ``listener.processes``: the most receiver processes, and the most ``auto`` starts.
MAX_RECEIVER_PROCESSES = 32
MAX_AUTO_PROCESSES = 8

#: Where the commands look for node.yaml unless given ``--config``.
DEFAULT_CONFIG = Path("config/node.yaml")


class ListenerConfig(Section):
    """Where the SCP listens and how much it accepts at once."""

    ae_title: str = "AINODE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=1, le=65535)
    plain: bool = Field(True, description="serve plain DICOM on port; false = TLS only")
    tls_port: int | None = Field(
        None, ge=1, le=65535, description="serve DICOM TLS here (needs tls.certificate)"
    )
    require_client_certificate: bool = Field(
        False, description="TLS callers must present a certificate signed by tls.ca_bundle"
    )
    max_associations: int = Field(16, ge=1, le=1024)
    max_pdu: int = Field(0, ge=0, description="maximum PDU length we receive; 0 = unlimited")
    acse_timeout_s: float = Field(30, gt=0)
    association_request_timeout_s: float = Field(
        5,
        gt=0,
        description="how long a new connection may take to send its whole A-ASSOCIATE-RQ",
    )
    dimse_timeout_s: float = Field(60, gt=0)
    network_timeout_s: float = Field(120, gt=0)
    max_pending_connections: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="connections that have not sent an A-ASSOCIATE-RQ yet, per receiver "
        "process; more are closed at once (default: twice max_associations)",
    )
    processes: int | Literal["auto"] = Field(
        1,
        description="receiver processes sharing the port (SO_REUSEPORT), each with its own "
        "journal; auto = one per CPU core, at most 8; more than 1 needs storage.journal",
    )

    _ae = field_validator("ae_title")(check_ae_title)

    @field_validator("processes")
    @classmethod
    def _processes_in_range(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= int(value) <= MAX_RECEIVER_PROCESSES:
            raise ValueError(f"must be auto or 1 to {MAX_RECEIVER_PROCESSES}, got {value}")
        return value

    @property
    def receiver_processes(self) -> int:
        """``processes`` resolved: ``auto`` is one per CPU core this process may use, at most
        ``MAX_AUTO_PROCESSES``."""
        if self.processes == "auto":
            return max(1, min(MAX_AUTO_PROCESSES, len(os.sched_getaffinity(0))))
        return int(self.processes)

    @property
    def pending_connection_limit(self) -> int:
        """``max_pending_connections``, or twice ``max_associations`` when unset."""
        return self.max_pending_connections or 2 * self.max_associations

    @model_validator(mode="after")
    def _something_to_serve(self) -> ListenerConfig:
        if not self.plain and self.tls_port is None:
            raise ValueError("listener.plain is false and no tls_port is set: nothing to serve")
        if self.plain and self.tls_port == self.port:
            raise ValueError(f"tls_port {self.tls_port} is also the plain port; use another")
        return self


class AllowedCaller(Section):
    """One calling AE title allowed to associate, optionally pinned to where it calls from:
    an IP address, a network (CIDR) or a host name, resolved when the node starts."""

    ae_title: str
    host: str | None = Field(
        None, description="IP address, network such as 10.1.0.0/16, or resolvable host name"
    )
    certificate: Path | None = Field(
        None, description="PEM certificate the caller must present over TLS (pinned by SHA-256)"
    )
    subject: str | None = Field(
        None, description="subject its TLS certificate must have, e.g. CN=ct-1,O=Hospital"
    )

    _ae = field_validator("ae_title")(check_ae_title)

    @field_validator("host")
    @classmethod
    def _resolvable(cls, host: str | None) -> str | None:
        if host is not None:
            host_networks(host)  # raises, saying what to write
        return host

    @field_validator("subject")
    @classmethod
    def _readable_subject(cls, subject: str | None) -> str | None:
        if subject is not None:
            parse_subject(subject)  # raises, saying how to write it
        return subject

    @property
    def needs_certificate(self) -> bool:
        return self.certificate is not None or self.subject is not None


class AccessConfig(Section):
    """Who may send. ``accept_any`` is for lab use: it skips the allow-list."""

    accept_any: bool = False
    callers: tuple[AllowedCaller, ...] = ()
    #: Refuse an association addressed to a called AE title other than the listener's own
    #: or one of ``called_ae_aliases`` (a misaddressed sender must not be stored silently).
    check_called_ae: bool = True
    called_ae_aliases: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _need_callers(self) -> AccessConfig:
        if not self.accept_any and not self.callers:
            raise ValueError(
                "access.callers is empty and access.accept_any is false: nobody could send; "
                "list the calling AE titles or set accept_any: true for lab use"
            )
        return self


class StorageConfig(Section):
    """Where the spool and the index live."""

    data_dir: Path = Path("data")
    min_free_mb: int = Field(
        512, ge=0, description="below this much free disk, C-STORE answers 0xA700"
    )
    durability: Durability = Field(
        Durability.FSYNC,
        description="what a C-STORE Success waits for: fsync = on stable storage (survives a "
        "power loss); os = written to the operating system (survives a crash of the node, "
        "not of the machine)",
    )
    journal: bool = Field(
        False,
        description="a Success waits for the write-ahead journal (data_dir/journal), shared "
        "by concurrent associations; a mover stage files instances into the spool and index",
    )
    journal_segment_mb: int = Field(256, ge=1, le=4096, description="journal segment size")
    retention: RetentionSettings = RetentionSettings()

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def journal_dir(self) -> Path:
        return self.data_dir / "journal"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "ainode.sqlite3"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"


class StabilityConfig(Section):
    """When a study counts as complete ("stable")."""

    stable_after_s: float = Field(15.0, gt=0)
    after_release_s: float | None = Field(
        2.0,
        ge=0,
        description="quiet time after the delivering association is released; null = ignore "
        "releases and wait the full stable_after_s",
    )
    poll_interval_s: float = Field(0.5, gt=0)


class DeviceConfig(Section):
    """GPU slots the executor may hand out; an empty list means CPU only."""

    gpus: tuple[int, ...] = ()
    slots_per_gpu: int = Field(1, ge=1, le=16)


class ExecutorKind(StrEnum):
    """Where jobs run: worker processes of the node, or ``ainode worker``s through Celery."""

    LOCAL = "local"
    CELERY = "celery"


class JobsConfig(Section):
    """The executor and its retry policy."""

    executor: ExecutorKind = ExecutorKind.LOCAL
    celery: CelerySettings = CelerySettings()
    workers: int = Field(2, ge=1, le=64, description="local executor: worker processes")
    timeout_s: float = Field(900, gt=0)
    max_attempts: int = Field(3, ge=1)
    backoff_s: float = Field(10, ge=0)
    backoff_max_s: float = Field(600, ge=0)


class DispatchConfig(Section):
    """Outbox retry policy."""

    max_attempts: int = Field(10, ge=1)
    backoff_s: float = Field(5, ge=0)
    backoff_max_s: float = Field(600, ge=0)
    calling_ae_title: str = "AINODE"

    _ae = field_validator("calling_ae_title")(check_ae_title)


class HttpConfig(Section):
    """The console, its REST API, the status page and Prometheus metrics; port 0 = off."""

    host: str = Field("127.0.0.1", description="loopback unless the console must be reached")
    port: int = Field(0, ge=0, le=65535)
    tls: bool = Field(False, description="HTTPS with the node's tls certificate and key")
    console: ConsoleSettings = ConsoleSettings()


class NodeConfig(Section):
    """The whole of node.yaml."""

    listener: ListenerConfig = ListenerConfig()
    access: AccessConfig = AccessConfig(accept_any=True)
    storage: StorageConfig = StorageConfig()
    stability: StabilityConfig = StabilityConfig()
    routes_file: Path = Path("routes.yaml")
    plugin_dirs: tuple[Path, ...] = ()
    devices: DeviceConfig = DeviceConfig()
    jobs: JobsConfig = JobsConfig()
    outputs: OutputsConfig = OutputsConfig()
    destinations: dict[str, Destination] = Field(default_factory=dict)
    dispatch: DispatchConfig = DispatchConfig()
    http: HttpConfig = HttpConfig()
    containers: EngineSettings = EngineSettings()
    pseudonymisation: PseudonymisationSettings = PseudonymisationSettings()
    audit: AuditSettings = AuditSettings()
    tls: TlsSettings = TlsSettings()

    @model_validator(mode="after")
    def _tls_where_needed(self) -> NodeConfig:
        if self.listener.tls_port is not None and self.tls.certificate is None:
            raise ValueError("listener.tls_port needs tls.certificate and tls.key")
        if self.http.tls and self.tls.certificate is None:
            raise ValueError("http.tls needs tls.certificate and tls.key")
        if self.jobs.executor is ExecutorKind.CELERY:
            if not self.http.port:
                raise ValueError(
                    "jobs.executor: celery needs http.port: workers reach the node there"
                )
            if self.jobs.celery.worker_token_file is None:
                raise ValueError(
                    "jobs.executor: celery needs jobs.celery.worker_token_file, the token "
                    "workers present"
                )
        if self.listener.processes != 1 and not self.storage.journal:
            raise ValueError(
                f"listener.processes: {self.listener.processes} needs storage.journal: true "
                "(receiver processes hand what they receive to the node through their journals)"
            )
        pinned = [c.ae_title for c in self.access.callers if c.needs_certificate]
        if pinned and self.listener.tls_port is None:
            raise ValueError(
                f"callers {', '.join(pinned)} are pinned to a certificate, which only a TLS "
                "listener can check: set listener.tls_port"
            )
        return self

    def _audit_resolved(self, absolute: Callable[[Path], Path]) -> AuditSettings:
        collector = self.audit.collector
        if collector is None:
            return self.audit
        names = ("ca_file", "cert_file", "key_file")
        paths = {n: absolute(p) for n in names if (p := getattr(collector, n)) is not None}
        return self.audit.model_copy(update={"collector": collector.model_copy(update=paths)})

    def _jobs_resolved(self, absolute: Callable[[Path], Path]) -> JobsConfig:
        celery = self.jobs.celery
        names = ("worker_token_file", "broker_url_file")
        paths = {n: absolute(p) for n in names if (p := getattr(celery, n)) is not None}
        return self.jobs.model_copy(update={"celery": celery.model_copy(update=paths)})

    def _http_resolved(self, absolute: Callable[[Path], Path]) -> HttpConfig:
        users_file = self.http.console.users_file
        if users_file is None:
            return self.http
        console = self.http.console.model_copy(update={"users_file": absolute(users_file)})
        return self.http.model_copy(update={"console": console})

    def resolved(self, base: Path) -> NodeConfig:
        """Return a copy with every relative path made absolute against ``base``."""

        def absolute(path: Path) -> Path:
            return path if path.is_absolute() else (base / path).resolve()

        def paths_of(dest: BaseModel) -> dict[str, Path]:
            names = ("path", "token_file", "ca_file")
            return {n: absolute(p) for n in names if isinstance(p := getattr(dest, n, None), Path)}

        callers = tuple(
            caller.model_copy(update={"certificate": absolute(caller.certificate)})
            if caller.certificate is not None
            else caller
            for caller in self.access.callers
        )

        destinations = {
            name: dest.model_copy(update=paths_of(dest)) for name, dest in self.destinations.items()
        }
        return self.model_copy(
            update={
                "storage": self.storage.model_copy(
                    update={"data_dir": absolute(self.storage.data_dir)}
                ),
                "routes_file": absolute(self.routes_file),
                "access": self.access.model_copy(update={"callers": callers}),
                "tls": self.tls.resolved(absolute),
                "audit": self._audit_resolved(absolute),
                "plugin_dirs": tuple(absolute(p) for p in self.plugin_dirs),
                "destinations": destinations,
                "http": self._http_resolved(absolute),
                "jobs": self._jobs_resolved(absolute),
                "containers": self.containers.model_copy(
                    update={
                        "validator": None
                        if self.containers.validator is None
                        else absolute(self.containers.validator)
                    }
                ),
            }
        )


class ConfigError(Exception):
    """node.yaml cannot be used; the message names the file and the field."""


def load_node_config(path: Path) -> NodeConfig:
    """Read, validate and resolve node.yaml; raise ConfigError with a readable message."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        config = NodeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
    config = config.resolved(path.resolve().parent)
    try:
        check_tls_files(config)
    except TlsError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return config


def check_tls_files(config: NodeConfig) -> None:
    """Load every TLS file the configuration uses now, not at the first connection: TlsError
    naming the file and the problem."""
    key = config.tls.key
    if key is not None and key.exists() and key.stat().st_mode & 0o077:
        LOGGER.warning(
            "tls.key %s can be read by other users (mode %o): chmod 600 it",
            key,
            key.stat().st_mode & 0o777,
        )
    if config.listener.tls_port is not None:
        config.tls.server_context(config.listener.require_client_certificate)
    for caller in config.access.callers:
        if caller.certificate is not None:
            pem_fingerprint(caller.certificate)
    if any(getattr(d, "tls", False) for d in config.destinations.values()):
        config.tls.client_context()
