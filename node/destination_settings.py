"""``destinations:`` in node.yaml: where results go (a DICOM peer, a folder, a DICOMweb server)
and which result kinds each takes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from node.config_fields import Section, check_ae_title
from node.shared_types import PROFILE_DEFAULTS, OutputKind, SourceKind, ViewerProfile


class _Destination(Section):
    """What every destination kind shares: which jobs feed it and which result kinds it takes."""

    shadow: bool = Field(False, description="receives results of shadow routes only")
    viewer_profile: ViewerProfile = Field(
        ViewerProfile.GENERIC,
        description="the viewer its readers use; picks the default output kinds per source "
        "(ohif: no SEG over radiographs, which crash OHIF 3.13, but burned-in secondary "
        "captures; generic: SEG, SR and text SR, plus burned-in captures for radiographs); "
        "send_as, when given, wins",
    )
    send_as: tuple[OutputKind, ...] | None = Field(
        None,
        description="output kinds it receives, for every source; null = viewer_profile's defaults",
    )

    @field_validator("viewer_profile", mode="before")
    @classmethod
    def _known_profile(cls, value: object) -> object:
        known = [profile.value for profile in ViewerProfile]
        if value not in known:
            raise ValueError(
                f"viewer_profile {value!r} is not known; use one of {', '.join(known)}, "
                "or leave it out and list the output kinds in send_as"
            )
        return value

    @field_validator("send_as")
    @classmethod
    def _useful_send_as(cls, value: tuple[OutputKind, ...] | None) -> tuple[OutputKind, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError(
                "send_as is empty, so this destination would receive nothing; list output "
                "kinds or leave send_as out to take the viewer_profile's defaults"
            )
        repeated = sorted({kind.value for kind in value if value.count(kind) > 1})
        if repeated:
            raise ValueError(f"send_as lists {', '.join(repeated)} more than once; list each once")
        return value

    def kinds_for(self, source: SourceKind) -> tuple[OutputKind, ...]:
        """The output kinds this destination takes for a job on a ``source`` series."""
        if self.send_as is not None:
            return self.send_as
        return PROFILE_DEFAULTS[self.viewer_profile, source]


class DicomDestination(_Destination):
    """A DICOM peer that receives results with C-STORE."""

    kind: Literal["dicom"] = "dicom"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(30, gt=0)
    tls: bool = Field(False, description="DICOM TLS with node.yaml's tls: identity and CAs")
    verify_hostname: bool = Field(
        True, description="the peer's certificate must name host (false: only its chain)"
    )

    _ae = field_validator("ae_title")(check_ae_title)


class FolderDestination(_Destination):
    """A folder that receives results as Part-10 files (tests, air-gapped sites)."""

    kind: Literal["folder"] = "folder"
    path: Path


class StowRsDestination(_Destination):
    """A DICOMweb server that receives results with STOW-RS. The bearer token lives in a file
    or an environment variable, never in node.yaml, which is often shared or committed."""

    kind: Literal["stowrs"] = "stowrs"
    url: str = Field(description="the STOW-RS endpoint, e.g. http://pacs:8042/dicom-web/studies")
    token_file: Path | None = Field(None, description="file holding the bearer token")
    token_env: str | None = Field(None, description="environment variable holding the token")
    timeout_s: float = Field(30, gt=0)
    max_batch_mb: float = Field(50, gt=0, description="cap on one request's multipart body")
    verify_tls: bool = True
    ca_file: Path | None = Field(None, description="CA bundle for https; null = system CAs")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_token(cls, data: object) -> object:
        if isinstance(data, Mapping) and "token" in data:
            raise ValueError(
                "a token in node.yaml would leak with the file; put it in a file named by "
                "token_file or in an environment variable named by token_env"
            )
        return data

    @model_validator(mode="after")
    def _usable(self) -> StowRsDestination:
        if not re.match(r"^https?://[^/?#]+", self.url):
            raise ValueError(f"url {self.url!r} must start with http:// or https:// and a host")
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give token_file or token_env, not both")
        if self.ca_file is not None and not self.url.startswith("https://"):
            raise ValueError("ca_file is for an https:// url; remove it or use https")
        return self


Destination = Annotated[
    DicomDestination | FolderDestination | StowRsDestination, Field(discriminator="kind")
]
