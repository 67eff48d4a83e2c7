"""The Debian bookworm base image, made without a registry: debootstrap, then `podman import`.

One base serves ainode's own image (packaging/container/Containerfile, which needs
python3-venv) and the test products (python3). Used by scripts/build-node-image.py and
scripts/build-test-images.py.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

BASE_IMAGE = "localhost/ainode/base:bookworm"
PACKAGES = ("python3", "python3-venv")
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def image_exists(ref: str) -> bool:
    return subprocess.run(["podman", "image", "exists", ref]).returncode == 0


def build_base(work: Path, force: bool = False) -> str:
    """Make BASE_IMAGE (debootstrap minbase + PACKAGES) unless present; returns built/cached."""
    if not force and image_exists(BASE_IMAGE):
        return "cached"
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is missing: apt-get install debootstrap")
    work.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-bookworm-", dir=work))
    try:
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        for leftover in ("var/cache/apt", "var/lib/apt/lists"):
            folder = rootfs / leftover
            for child in folder.glob("*") if folder.is_dir() else ():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["podman", "import", "--quiet", "-", BASE_IMAGE],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise SystemExit(f"importing {rootfs} as {BASE_IMAGE} failed")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return "built"
