"""ainode's own OCI image for the packaging test, built without a registry, cached by hash.

The base image and the site-packages of the test products come from
``scripts/build-test-images.py`` (through ``tests.container_images``); the few distributions
the node needs beyond them (pinned to the venv's versions) go into a second folder. The tag
``localhost/ainode-test/node:<hash12>`` covers every input, so a tag already present is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.container_images import test_images

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".cache" / "container-build"
CONTAINERFILE = ROOT / "tests" / "container_node" / "Containerfile"
NODE_YAML = ROOT / "packaging" / "container" / "node.yaml"
SOURCES = ("node", "routers", "models")
#: imported by ``ainode serve`` and not in the products' site-packages (installed --no-deps)
EXTRA = ("pynetdicom", "prometheus_client", "dicom-anonymizer", "tqdm")
REPO = "localhost/ainode-test/node"


def _podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise LookupError(f"podman {args[0]} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def _files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc"))
    return found


def _extra_site(pins: list[str]) -> Path:
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    site = BUILD / f"node-site-{key}"
    if site.is_dir():
        return site
    staging = Path(tempfile.mkdtemp(prefix="staging-node-site-", dir=BUILD))
    pip = [sys.executable, "-m", "pip", "install", "-qq", "--disable-pip-version-check"]
    pip += ["--no-deps", "--only-binary=:all:", "--target", str(staging), *pins]
    done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise LookupError(f"pip install {' '.join(pins)} failed: {done.stderr.strip()[-2000:]}")
    staging.chmod(0o755)
    staging.rename(site)
    return site


def node_image() -> str:
    """The image's tag, built when missing; LookupError says why it cannot be."""
    test_images()  # the base image and the products' site-packages, built when missing
    sites = sorted(BUILD.glob("site-*"))
    if len(sites) != 1:
        raise LookupError(f"expected one products' site-packages under {BUILD}, found {sites}")
    site = sites[0]
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in EXTRA]
    with open(BUILD / ".node-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (parallel test workers)
        extra = _extra_site(pins)
        digest = hashlib.sha256()
        digest.update(
            _podman(
                "image", "inspect", "localhost/ainode-test/base:bookworm", "--format", "{{.Id}}"
            ).encode()
        )
        digest.update((site / "ainode-pins.txt").read_bytes())
        digest.update("\n".join(pins).encode())
        for path in (CONTAINERFILE, NODE_YAML):
            digest.update(path.read_bytes())
        for source in SOURCES:
            for path in _files(ROOT / source):
                digest.update(f"{path.relative_to(ROOT)}\0".encode() + path.read_bytes())
        tag = f"{REPO}:{digest.hexdigest()[:12]}"
        if subprocess.run(["podman", "image", "exists", tag]).returncode == 0:
            return tag
        context = Path(tempfile.mkdtemp(prefix="ctx-node-", dir=BUILD))
        try:
            context.chmod(0o755)
            shutil.copy2(CONTAINERFILE, context / "Containerfile")
            shutil.copy2(NODE_YAML, context / "node.yaml")
            shutil.copytree(site, context / "site", copy_function=os.link)
            shutil.copytree(extra, context / "node-site", copy_function=os.link)
            for source in SOURCES:
                shutil.copytree(
                    ROOT / source,
                    context / source,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                )
            _podman(
                "build",
                "--runtime",
                "runc",
                "--network",
                "none",
                "--tag",
                tag,
                "--file",
                str(context / "Containerfile"),
                str(context),
            )
        finally:
            shutil.rmtree(context, ignore_errors=True)
        _prune(keep=tag)
        return tag


def _prune(keep: str, kept: int = 3) -> None:
    """Untag all but the newest ``kept`` builds: each source change makes one."""
    listing = _podman("images", "--sort", "created", "--format", "{{.Repository}}:{{.Tag}}", REPO)
    tags = [tag for tag in listing.split() if tag.startswith(f"{REPO}:") and tag != keep]
    for tag in tags[kept - 1 :]:  # podman lists the newest first
        subprocess.run(["podman", "rmi", tag], capture_output=True, check=False)
