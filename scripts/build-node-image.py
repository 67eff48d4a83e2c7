#!/usr/bin/env python3
"""Build ainode's container image (packaging/container/Containerfile) without a registry.

    .venv/bin/python scripts/build-node-image.py [--tag ainode:cpu]   (make image)

Three inputs, all made on this machine:
  base        localhost/ainode/base:bookworm, Debian bookworm + python3 + python3-venv by
              debootstrap and `podman import` (scripts/debian_base.py);
  wheelhouse  ainode's own wheel and every distribution it needs, pinned to the versions of
              the venv this script runs in (the versions the suite tested), fetched by pip
              from the indexes pip is configured with;
  node.yaml   packaging/container/node.yaml.
The build itself runs with --network none. The image is tagged localhost/ainode/node:<hash12>,
the hash covering every input, so an unchanged checkout is not rebuilt; --tag adds a name.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian_base import BASE_IMAGE, build_base

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".cache" / "node-image"
CONTAINERFILE = ROOT / "packaging" / "container" / "Containerfile"
NODE_YAML = ROOT / "packaging" / "container" / "node.yaml"
SOURCES = ("pyproject.toml", "README.md", "node", "routers", "models")
REPO = "localhost/ainode/node"
SKIP = ("__pycache__", "*.pyc", ".pytest_cache")


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-qq", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise LookupError(f"pip {args[0]} failed: {done.stderr.strip()[-2000:]}")


def _podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise LookupError(f"podman {args[0]} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def pins() -> list[str]:
    """`name==version` for ainode's runtime requirements (pyproject.toml) and theirs, as
    installed here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [Requirement(text) for text in project["dependencies"]]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise LookupError(f"{name} is not installed here: run make install first") from exc
        found[name] = distribution.version
        extras = ("", *sorted(requirement.extras))
        for text in distribution.requires or ():
            child = Requirement(text)
            wanted = child.marker is None or any(
                child.marker.evaluate({"extra": extra}) for extra in extras
            )
            if wanted:
                child.marker = None
                pending.append(child)
    return sorted(f"{name}=={version}" for name, version in found.items())


def _files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".pytest_cache"))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc"))
    return found


def _dependencies(pin_list: list[str]) -> Path:
    """The wheels of the pins, downloaded once per pin list."""
    key = hashlib.sha256("\n".join(pin_list).encode()).hexdigest()[:12]
    wheels = BUILD / f"deps-{key}"
    if wheels.is_dir():
        return wheels
    staging = Path(tempfile.mkdtemp(prefix="staging-deps-", dir=BUILD))
    try:
        (staging / "pins.txt").write_text("\n".join(pin_list) + "\n")
        _pip("download", "--only-binary=:all:", "--no-deps", "--dest", str(staging),
             "--requirement", str(staging / "pins.txt"))  # fmt: skip
        staging.chmod(0o755)
        staging.rename(wheels)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in BUILD.glob("deps-*"):
        if old != wheels:
            shutil.rmtree(old, ignore_errors=True)
    return wheels


def _input_hash(base_id: str, pin_list: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(f"{base_id}\0{chr(10).join(pin_list)}\0".encode())
    for path in (CONTAINERFILE, NODE_YAML):
        digest.update(path.read_bytes())
    for source in SOURCES:
        for path in _files(ROOT / source):
            digest.update(f"{path.relative_to(ROOT)}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def node_image(extra_tag: str | None = None) -> str:
    """The image's hash tag, built when missing; LookupError says why it cannot be."""
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            raise LookupError(f"{tool} is not installed (bash scripts/install-test-peers.sh)")
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (parallel test workers)
        build_base(BUILD)
        pin_list = pins()
        base_id = _podman("image", "inspect", BASE_IMAGE, "--format", "{{.Id}}")
        tag = f"{REPO}:{_input_hash(base_id, pin_list)}"
        if subprocess.run(["podman", "image", "exists", tag]).returncode != 0:
            _build(tag, _dependencies(pin_list))
            _prune(keep=tag)
        if extra_tag:
            _podman("tag", tag, extra_tag)
        return tag


def _build(tag: str, dependencies: Path) -> None:
    context = Path(tempfile.mkdtemp(prefix="context-", dir=BUILD))
    try:
        context.chmod(0o755)
        shutil.copytree(dependencies, context / "wheelhouse", copy_function=os.link)
        source = context / "source"
        for name in SOURCES:
            origin = ROOT / name
            if origin.is_dir():
                shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns(*SKIP))
            else:
                source.mkdir(exist_ok=True)
                shutil.copy2(origin, source / name)
        _pip("wheel", "--no-deps", "--wheel-dir", str(context / "wheelhouse"), str(source))
        shutil.rmtree(source)
        shutil.copy2(NODE_YAML, context / "node.yaml")
        _podman("build", "--runtime", "runc", "--network", "none", "--tag", tag,
                "--file", str(CONTAINERFILE), str(context))  # fmt: skip
    finally:
        shutil.rmtree(context, ignore_errors=True)


def _prune(keep: str, kept: int = 2) -> None:
    """Untag all but the newest ``kept`` builds: each source change makes one."""
    listing = _podman("images", "--sort", "created", "--format", "{{.Repository}}:{{.Tag}}", REPO)
    tags = [tag for tag in listing.split() if tag.startswith(f"{REPO}:") and tag != keep]
    for tag in tags[kept - 1 :]:  # podman lists the newest first
        subprocess.run(["podman", "rmi", tag], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default="ainode:cpu", help="a name for the image (ainode:cpu)")
    args = parser.parse_args()
    try:
        print(node_image(args.tag))
    except LookupError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
