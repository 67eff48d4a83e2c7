"""node.yaml ``audit:``: where the local audit file is and which syslog collector gets a copy."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, model_validator

from node.config_fields import Section

__all__ = ["AuditSettings", "CollectorSettings", "SyslogTransport"]


class SyslogTransport(StrEnum):
    """PS3.15 A.6 (TLS, RFC 5425) and A.7 (UDP, RFC 5426); TCP is RFC 6587 octet counting."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


DEFAULT_PORTS = {SyslogTransport.UDP: 514, SyslogTransport.TCP: 514, SyslogTransport.TLS: 6514}


class CollectorSettings(Section):
    """An audit record repository: a syslog collector (rsyslog, an ATNA repository)."""

    host: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535, description="514 (udp/tcp) or 6514 (tls)")
    transport: SyslogTransport = SyslogTransport.TLS
    ca_file: Path | None = Field(None, description="CA bundle that checks the collector")
    cert_file: Path | None = Field(None, description="our client certificate (PEM), for mutual TLS")
    key_file: Path | None = Field(None, description="the key of cert_file (PEM)")
    queue_size: int = Field(10_000, ge=1, description="messages held while the collector is away")
    reconnect_max_s: float = Field(60.0, gt=0, description="longest wait between reconnects")

    @model_validator(mode="after")
    def _tls_files(self) -> CollectorSettings:
        tls_files = (self.ca_file, self.cert_file, self.key_file)
        if self.transport != SyslogTransport.TLS and any(tls_files):
            raise ValueError(
                "ca_file, cert_file and key_file are for transport: tls; remove them or use tls"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self

    @property
    def resolved_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.transport]


class AuditSettings(Section):
    """The audit trail (IHE ATNA): on by default, to a local file; a collector is optional."""

    enabled: bool = True
    file: Path | None = Field(
        None, description="the local audit file; default <storage.data_dir>/audit/audit.log"
    )
    source_id: str | None = Field(None, description="AuditSourceID; default the listener AE title")
    site_id: str | None = Field(None, description="AuditEnterpriseSiteID, e.g. the hospital")
    app_name: str = Field("ainode", min_length=1, max_length=48, pattern=r"^[!-~]+$")
    collector: CollectorSettings | None = None

    def file_path(self, data_dir: Path) -> Path:
        """The local file; a relative ``file`` is taken inside the data folder."""
        if self.file is None:
            return data_dir / "audit" / "audit.log"
        return self.file if self.file.is_absolute() else data_dir / self.file
