#!/usr/bin/env python3
"""Build the OCI images of the test container products, cached between runs.

    .venv/bin/python scripts/build-test-images.py [--force]

Products (sources under tests/container_products/<product>/):
  dx-chest-mercure  a mercure-style module wrapping the repo's own dx-chest plugin
  lungs-map         a MONAI Application Package (MAP) that segments the lungs of a CT series
  broken            a misbehaving vendor image (exit / garbage / hang, chosen by BROKEN_MODE)
  dx-chest-mercure-v2  the same module labelled version 2.0.0: another digest, for shadow

No registry is needed: the base image (Debian bookworm + python3, scripts/debian_base.py) is
made with debootstrap and `podman import`, the Python packages are installed on the host with
the venv's pip into a site-packages folder, and the Containerfiles have no RUN steps, so builds
run no container. Each product is tagged localhost/ainode-test/<product>:<hash12>, the hash
covering every input (Containerfile, copied files, pin list, base image id); a tag already
present is not rebuilt.
Writes .cache/container-images.json with the digest reference of each image.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from debian_base import BASE_IMAGE, build_base, image_exists

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
CACHE = ROOT / ".cache"
BUILD = CACHE / "container-build"
MANIFEST = CACHE / "container-images.json"
PRODUCTS_DIR = ROOT / "tests" / "container_products"
REPO = "localhost/ainode-test"
PRODUCTS = ("dx-chest-mercure", "lungs-map", "broken", "dx-chest-mercure-v2")
# a product built from another's sources with its own labels: a second version of one
# product (its own digest), for production beside shadow
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "dx-chest-mercure-v2": ("dx-chest-mercure", {"org.opencontainers.image.version": "2.0.0"}),
}

# distribution name as installed in the venv -> distribution to pin in the images
PINNED = {
    "numpy": "numpy",
    "scipy": "scipy",
    "scikit-image": "scikit-image",
    "onnxruntime-gpu": "onnxruntime",  # the images get the CPU build of the same version
    "pydicom": "pydicom",
    "highdicom": "highdicom",
    "pydantic": "pydantic",
    "pyyaml": "pyyaml",
    "pillow": "pillow",
    "pylibjpeg": "pylibjpeg",
    "pylibjpeg-libjpeg": "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg": "pylibjpeg-openjpeg",
    "pylibjpeg-rle": "pylibjpeg-rle",
    "nibabel": "nibabel",
}
# what each product copies into its build context besides its own folder: name -> source
# ("@site" is the pip-built site-packages folder)
EXTRAS: dict[str, dict[str, str]] = {
    "dx-chest-mercure": {"site": "@site", "models": "models"},
    "lungs-map": {"site": "@site"},
    "broken": {},
}
SKIP_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache"}


def log(message: str) -> None:
    print(message, flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


def podman(*args: str, capture: bool = True) -> str:
    done = subprocess.run(["podman", *args], capture_output=capture, text=True)
    if done.returncode != 0:
        detail = (done.stderr or "").strip() if capture else ""
        raise SystemExit(f"podman {' '.join(args)} failed ({done.returncode}): {detail}")
    return (done.stdout or "").strip()


# --- site-packages --------------------------------------------------------------------------


def venv_versions(names: list[str]) -> dict[str, str | None]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try:\n"
        "        out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[n] = None\n"
        "print(json.dumps(out))\n"
    )
    done = run([str(VENV_PY), "-c", code, *names], capture_output=True, text=True)
    return json.loads(done.stdout)


def pins() -> list[str]:
    versions = venv_versions(list(PINNED))
    if versions.get("nibabel") is None:
        log("nibabel is not in the venv: installing it there first")
        run([str(VENV_PY), "-m", "pip", "install", "-q", "nibabel>=5"])
        versions = venv_versions(list(PINNED))
    missing = [name for name, version in versions.items() if version is None]
    if missing:
        raise SystemExit(f"not installed in {VENV_PY}: {', '.join(missing)} (make install-test)")
    return sorted(f"{PINNED[name]}=={version}" for name, version in versions.items())


def build_site(pin_list: list[str], force: bool) -> tuple[Path, str]:
    """pip-install the pins into a folder keyed by the pin list; returns (folder, built/cached)."""
    key = hashlib.sha256("\n".join(pin_list).encode()).hexdigest()[:12]
    site = BUILD / f"site-{key}"
    if site.is_dir() and not force:
        return site, "cached"
    BUILD.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="staging-site-", dir=BUILD))
    try:
        run(
            [
                str(VENV_PY),
                "-m",
                "pip",
                "install",
                "-qq",  # errors only (hides pip-config noise such as "Location ... is ignored")
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--target",
                str(staging),
                "--only-binary=:all:",
                *pin_list,
            ]
        )
        (staging / "ainode-pins.txt").write_text("\n".join(pin_list) + "\n")
        staging.chmod(0o755)
        if site.exists():
            shutil.rmtree(site)
        staging.rename(site)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    for old in BUILD.glob("site-*"):
        if old != site and old.is_dir():
            shutil.rmtree(old)
    return site, "built"


# --- product images -------------------------------------------------------------------------


def walk(folder: Path) -> list[Path]:
    """Every file under folder (sorted, caches skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_NAMES)
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.endswith(".pyc"))
    return found


def product_hash(product: str, pin_list: list[str], base_id: str) -> str:
    digest = hashlib.sha256()
    product, labels = VARIANTS.get(product, (product, {}))

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("base", base_id.encode())
    add("labels", json.dumps(labels, sort_keys=True).encode())
    add("pins", "\n".join(pin_list).encode())
    own = PRODUCTS_DIR / product
    for path in walk(own):
        add(f"product/{path.relative_to(own)}:{path.stat().st_mode & 0o111}", path.read_bytes())
    for name, source in sorted(EXTRAS[product].items()):
        if source == "@site":
            continue  # covered by the pin list
        folder = ROOT / source
        for path in walk(folder):
            add(f"{name}/{path.relative_to(folder)}", path.read_bytes())
    return digest.hexdigest()[:12]


def build_product(name: str, tag: str, site: Path) -> None:
    product, labels = VARIANTS.get(name, (name, {}))
    label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    BUILD.mkdir(parents=True, exist_ok=True)
    context = Path(tempfile.mkdtemp(prefix=f"ctx-{product}-", dir=BUILD))
    try:
        context.chmod(0o755)
        for path in (PRODUCTS_DIR / product).iterdir():
            if path.name in SKIP_NAMES:
                continue
            if path.is_dir():
                shutil.copytree(path, context / path.name, ignore=shutil.ignore_patterns("*.pyc"))
            else:
                shutil.copy2(path, context / path.name)
        for name, source in EXTRAS[product].items():
            if source == "@site":
                shutil.copytree(site, context / name, copy_function=_link_or_copy)
            else:
                shutil.copytree(
                    ROOT / source,
                    context / name,
                    ignore=shutil.ignore_patterns(*SKIP_NAMES, "*.pyc"),
                )
        podman(
            "build",
            "--runtime",
            "runc",
            "--network",
            "none",
            "--label",
            f"org.ainode.test.product={name}",
            *label_args,
            "--tag",
            tag,
            "--file",
            str(context / "Containerfile"),
            str(context),
        )
    finally:
        shutil.rmtree(context, ignore_errors=True)


def prune_old_tags(product: str, keep: str, kept: int = 3) -> None:
    """Untag all but the newest ``kept`` builds of ``product`` (``keep`` always stays): old
    builds do not pile up, and a second checkout on the same machine keeps its images."""
    listing = podman(
        "images", "--sort", "created", "--format", "{{.Repository}}:{{.Tag}}", f"{REPO}/{product}"
    )
    tags = [tag for tag in listing.split() if tag.startswith(f"{REPO}/{product}:")]
    # podman lists the newest first
    for tag in [t for t in tags if t != keep][kept - 1 :]:
        subprocess.run(["podman", "rmi", tag], capture_output=True, check=False)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild everything, base included")
    args = parser.parse_args()

    if shutil.which("podman") is None:
        print(
            "podman is not installed: the container-runner tests need it "
            "(bash scripts/install-test-peers.sh installs podman, runc and debootstrap)",
            file=sys.stderr,
        )
        return 2
    if not VENV_PY.exists():
        print(f"{VENV_PY} is missing: run make install-test first", file=sys.stderr)
        return 2

    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (parallel test workers)
        return build_all(args.force)


def build_all(force: bool) -> int:
    started = time.monotonic()
    state = build_base(BUILD, force)
    log(f"{BASE_IMAGE:<56} {state:<6} {time.monotonic() - started:6.1f}s")
    base_id = podman("image", "inspect", BASE_IMAGE, "--format", "{{.Id}}")

    started = time.monotonic()
    pin_list = pins()
    site, state = build_site(pin_list, force)
    log(f"{'site-packages ' + site.name:<56} {state:<6} {time.monotonic() - started:6.1f}s")

    manifest: dict[str, dict[str, str]] = {}
    for product in PRODUCTS:
        started = time.monotonic()
        tag = f"{REPO}/{product}:{product_hash(product, pin_list, base_id)}"
        state = "cached"
        if force or not image_exists(tag):
            build_product(product, tag, site)
            state = "built"
            prune_old_tags(product, tag)
        digest = podman("image", "inspect", tag, "--format", "{{.Digest}}")
        if not digest.startswith("sha256:"):
            raise SystemExit(f"no digest for {tag}: {digest!r}")
        manifest[product] = {
            "image": f"{REPO}/{product}@{digest}",
            "tag": tag,
            "digest": digest,
        }
        log(f"{tag:<56} {state:<6} {time.monotonic() - started:6.1f}s")

    CACHE.mkdir(parents=True, exist_ok=True)
    staging = MANIFEST.with_suffix(".json.tmp")
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    staging.replace(MANIFEST)
    log(f"wrote {MANIFEST.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
