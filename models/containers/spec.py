"""The ``container:`` section of a ``plugin.yaml``: a vendor's product shipped as an OCI image.

Example::

    runner: container
    container:
      image: registry.example/vendor/lung@sha256:3f5a…   # pinned by digest, never a tag
      contract: auto            # auto | mercure | monai-app (auto: a MAP when the image has
                                # /etc/monai/app.json, else a mercure module)
      lifecycle: per-job        # per-job | warm (one container per worker slot, fed job folders)
      network: none             # none, or a network the engine knows; the node logs it
      user: "65534:65534"       # numeric uid:gid, never root
      cpus: 2
      environment: {VENDOR_MODE: fast}
      settings: {threshold: 0.4} # task.json "process" > "settings", as mercure passes them
    resources: {gpu: 1, memory_mb: 8192}

A version of a product is its image digest: two manifests with two digests run side by side
(production and shadow), and a pulled image with a different digest never runs in its place.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator

from models.manifest_processing import ManifestSection

__all__ = ["ContainerSpec", "ContractKind", "Lifecycle", "image_name"]

_DIGEST_REFERENCE = re.compile(
    r"^(?P<name>[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*)"
    r"@(?P<digest>sha256:[0-9a-f]{64})$"
)
_ID = re.compile(r"^[0-9]+:[0-9]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ContractKind(StrEnum):
    """Which folder contract the image follows."""

    AUTO = "auto"  # a MAP when the image declares /etc/monai/app.json, else mercure
    MERCURE = "mercure"  # MERCURE_IN_DIR (DICOM + task.json) → MERCURE_OUT_DIR
    MONAI_APP = "monai-app"  # the MAP's declared input/output paths, HOLOSCAN_/MONAI_ env


class Lifecycle(StrEnum):
    PER_JOB = "per-job"  # a new container for every job
    WARM = "warm"  # one container per worker slot, kept running and fed job folders


def image_name(reference: str) -> str:
    """``name`` of ``name@sha256:…`` (the reference is validated already)."""
    return reference.split("@", 1)[0]


class ContainerSpec(ManifestSection):
    """How to run the image; every field is checked here so a typo fails at load."""

    image: str
    contract: ContractKind = ContractKind.AUTO
    lifecycle: Lifecycle = Lifecycle.PER_JOB
    network: str = "none"
    user: str = "65534:65534"
    cpus: float = Field(2.0, gt=0, le=256)
    environment: dict[str, str] = Field(default_factory=dict)
    settings: dict[str, object] = Field(default_factory=dict)
    log_limit_kb: int = Field(256, ge=4, le=65536, description="the container log kept per run")

    @field_validator("image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        value = value.strip()
        if _DIGEST_REFERENCE.match(value):
            return value
        if "@" in value:
            raise ValueError(
                f"image {value!r} is not a valid digest reference: write it as "
                "name@sha256:<64 hexadecimal digits>"
            )
        raise ValueError(
            f"image {value!r} is not pinned by digest: a tag can point at another image "
            "tomorrow. Write it as name@sha256:<digest>; `podman image inspect --format "
            f"'{{{{.Digest}}}}' {value}` (or `docker image inspect --format "
            f"'{{{{index .RepoDigests 0}}}}' {value}`) prints the digest of the image you have"
        )

    @field_validator("user")
    @classmethod
    def _not_root(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"user {value!r} must be numeric uid:gid, e.g. '65534:65534'")
        if value.split(":")[0] == "0":
            raise ValueError("user must not be root (uid 0): give the product its own uid:gid")
        return value

    @field_validator("environment")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _ENV_NAME.match(name)]
        if bad:
            raise ValueError(f"environment names must be letters, digits and _: {bad}")
        reserved = [name for name in value if name.startswith(("AINODE_", "MERCURE_"))]
        if reserved:
            raise ValueError(f"environment names {reserved} are set by the node, not the manifest")
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value) or value == "host":
            raise ValueError(
                f"network {value!r}: 'none' (the default) or a named network of the engine; "
                "'host' is never allowed"
            )
        return value

    @property
    def name(self) -> str:
        return image_name(self.image)

    @property
    def digest(self) -> str:
        return self.image.split("@", 1)[1]
