"""The ``vendor:`` section of a ``plugin.yaml``: a vendor's own AI node (``runner: dicom-node``).

The node sends the selected series to the vendor (C-STORE, or STOW-RS), and the vendor's node
sends its own SEG/SR/SC back to this node's SCP from ``results_from``; they are checked and
relayed as the job's results. Example::

    runner: dicom-node
    vendor:
      ae_title: VENDORAI          # C-STORE to this peer ...
      host: vendor.example
      port: 104
      # tls: true                 # DICOM TLS, with node.yaml's tls: certificate and CAs
      # stowrs_url: https://vendor.example/dicom-web/studies   # ... or STOW-RS, with
      # token_file: /etc/ainode/vendor.token                   # a token never in the YAML
      results_from: VENDORAI      # the calling AE title its results come back with
      result_timeout_s: 3600      # no results by then: the job fails (later ones are kept)
      quiet_s: 10                 # results are complete once none arrived for this long
      deidentify: true            # pseudonymise what leaves, re-identify what comes back
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from models.manifest_processing import ManifestSection

__all__ = ["VendorNodeSpec"]

_AE = re.compile(r"^[ -~]{1,16}$")


class VendorNodeSpec(ManifestSection):
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    stowrs_url: str | None = None
    token_file: Path | None = None
    token_env: str | None = None
    results_from: str
    result_timeout_s: float = Field(3600, gt=0)
    quiet_s: float = Field(5, ge=0)
    network_timeout_s: float = Field(60, gt=0)
    deidentify: bool = False
    tls: bool = Field(False, description="C-STORE over DICOM TLS with node.yaml's tls: identity")
    verify_hostname: bool = Field(True, description="its certificate must name host")

    @field_validator("ae_title", "results_from")
    @classmethod
    def _ae_title(cls, value: str | None) -> str | None:
        if value is not None and (not _AE.match(value) or "\\" in value or not value.strip()):
            raise ValueError(f"AE title {value!r} must be 1-16 printable characters, no backslash")
        return None if value is None else value.strip()

    @model_validator(mode="before")
    @classmethod
    def _no_token_inline(cls, data: object) -> object:
        if isinstance(data, dict) and "token" in data:
            raise ValueError("a token is never written in the YAML: use token_file or token_env")
        return data

    @model_validator(mode="after")
    def _one_way_out(self) -> VendorNodeSpec:
        dimse = (self.ae_title, self.host, self.port)
        if self.stowrs_url is None and None in dimse:
            raise ValueError("give ae_title, host and port (C-STORE), or stowrs_url (STOW-RS)")
        if self.stowrs_url is not None and any(v is not None for v in dimse):
            raise ValueError("give C-STORE (ae_title, host, port) or stowrs_url, not both")
        if self.stowrs_url is not None and not self.stowrs_url.startswith(("http://", "https://")):
            raise ValueError(f"stowrs_url {self.stowrs_url!r} must be an http(s) URL")
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give token_file or token_env, not both")
        return self
