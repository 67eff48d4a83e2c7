"""The test container product images (built by scripts/build-test-images.py), for the tests.

    from container_images import test_images as container_test_images
    images = container_test_images()   # {"lungs-map": {"image": ..., "tag": ..., "digest": ...}}

Reads .cache/container-images.json; when it is missing, or an image in it is no longer in
podman's storage, runs the build script once and reads it again. Raises LookupError (with the
reason) when podman is missing or the build fails, so tests can skip, or fail under CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / ".cache" / "container-images.json"
BUILD_SCRIPT = ROOT / "scripts" / "build-test-images.py"
PRODUCTS = ("dx-chest-mercure", "lungs-map", "broken", "dx-chest-mercure-v2")
BUILD_TIMEOUT_S = 1800


def _read() -> dict[str, dict[str, str]] | None:
    try:
        images = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(images, dict) or any(product not in images for product in PRODUCTS):
        return None
    for entry in images.values():
        present = subprocess.run(
            ["podman", "image", "exists", entry["image"]], capture_output=True
        ).returncode
        if present != 0:
            return None
    return images


def test_images() -> dict[str, dict[str, str]]:
    """{product: {"image": repo@sha256:..., "tag": repo:hash12, "digest": sha256:...}}."""
    if shutil.which("podman") is None:
        raise LookupError("podman is not installed (bash scripts/install-test-peers.sh)")
    images = _read()
    if images is not None:
        return images
    python = ROOT / ".venv" / "bin" / "python"
    done = subprocess.run(
        [str(python if python.exists() else sys.executable), str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise LookupError(f"{BUILD_SCRIPT.name} failed ({done.returncode}):\n{tail}")
    images = _read()
    if images is None:
        raise LookupError(f"{BUILD_SCRIPT.name} ran but {MANIFEST} lists no usable images")
    return images


test_images.__test__ = False  # a helper, not a test: pytest must not collect it when imported
