"""Shared by the container tests: the engine settings of this machine, the test images,
plugin manifests for them, and what the engine holds of one node (its owner label)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from container_images import test_images

# rootful podman here needs runc (crun fails on hybrid cgroups) and explicit ulimits within
# the caller's hard limits; node.yaml says so, the code assumes nothing
ENGINE = {
    "runtime": "runc",
    "run_options": ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"],
}


def images_or_skip() -> dict[str, dict[str, str]]:
    """The test images; a skip with the reason (a failure under CI) where they cannot be had."""
    try:
        return test_images()
    except LookupError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"container test images unavailable: {exc}")
        pytest.skip(f"container test images unavailable: {exc}")


def write_manifest(folder: Path, name: str, version: str, image: str, **sections: object) -> Path:
    """A container plugin's folder with its plugin.yaml; ``container`` keys merge."""
    folder = folder / f"{name}-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    container = {"image": image, **dict(sections.pop("container", {}))}  # type: ignore[arg-type]
    manifest = {"name": name, "version": version, "runner": "container", "container": container}
    manifest.update(sections)
    (folder / "plugin.yaml").write_text(yaml.safe_dump(manifest))
    return folder


def dx_chest_manifest(folder: Path, image: str, version: str = "1.0.0", **container) -> Path:
    return write_manifest(
        folder,
        "dx-chest-box",
        version,
        image,
        input={"modalities": ["CR", "DX"], "needs_spacing": False},
        resources={"memory_mb": 1024},
        container=container,
    )


def owned_containers(owner: str) -> list[str]:
    done = subprocess.run(
        ["podman", "ps", "--all", "--filter", f"label=ainode.owner={owner}", "--format",
         "{{.Names}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.split()
