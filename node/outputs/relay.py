"""DICOM a product wrote itself (``Findings.instances``) → the job's results, after checks.

``models.containers.collect`` has already checked each object against the source (patient,
study, UIDs of its own). Here each gets its result kind from its SOP class, so destinations
take it as they take the node's own results, and, where a validator is configured (or found:
``$AINODE_VALIDATOR``, else ``../shared/tools/validate-dicom`` beside the checkout), must
pass it with zero errors; without one the structural checks are the whole check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pydicom.uid import UID

from models.api import ProductInstance
from node.outputs.build import ResultInstance
from node.shared_types import KIND_BY_SOP_CLASS, OutputKind

__all__ = ["RelayRefused", "default_validator", "relayed_results", "result_kind"]

_REPO = Path(__file__).resolve().parents[2]
_VALIDATOR_TIMEOUT_S = 600


class RelayRefused(ValueError):
    """A product's DICOM is not relayed; the message says which file and why."""


def result_kind(sop_class_uid: str) -> OutputKind:
    """The result kind of a product's DICOM object, by its SOP class."""
    uid = UID(sop_class_uid)
    if uid in KIND_BY_SOP_CLASS:
        return KIND_BY_SOP_CLASS[uid]
    raise RelayRefused(
        f"SOP class {uid.name or uid} is not a result the node relays (SEG, SR, "
        "secondary capture, encapsulated PDF)"
    )


def default_validator(configured: Path | None) -> Path | None:
    """``containers.validator``, else ``$AINODE_VALIDATOR``, else the shared one if present."""
    if configured is not None:
        return configured
    from_env = os.environ.get("AINODE_VALIDATOR")
    if from_env:
        return Path(from_env)
    beside = _REPO.parent / "shared" / "tools" / "validate-dicom"
    return beside if beside.is_file() else None


def _validate(results: list[ResultInstance], sources: Iterable[Path], validator: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ainode-relay-") as folder:
        paths = [result.write(Path(folder)) for result in results]
        args = ["bash", str(validator)]
        for source in sources:
            args += ["-s", str(source)]
        env = dict(os.environ, VALIDATE_PYTHON=os.environ.get("VALIDATE_PYTHON", sys.executable))
        done = subprocess.run(
            [*args, *map(str, paths)],
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=_VALIDATOR_TIMEOUT_S,
            check=False,
        )
    if done.returncode == 0:
        return
    errors = [
        " ".join(line.split())
        for line in (done.stdout + done.stderr).splitlines()
        if "error" in line.lower() or "fail" in line.lower() or "missing" in line.lower()
    ]
    raise RelayRefused(
        f"{validator.name} found errors (status {done.returncode}) in the product's DICOM: "
        + ("; ".join(errors[:5]) or "no message")
    )


def relayed_results(
    instances: Iterable[ProductInstance],
    wanted: Iterable[OutputKind],
    sources: Iterable[Path],
    validator: Path | None,
) -> Iterator[ResultInstance]:
    """The product's objects whose kinds the job's destinations take, checked."""
    wanted = set(wanted)
    results = []
    for instance in instances:
        try:
            kind = result_kind(str(instance.dataset.SOPClassUID))
        except RelayRefused as exc:
            raise RelayRefused(f"{instance.file_name}: {exc}") from exc
        if kind in wanted:
            results.append(ResultInstance.of(kind, instance.dataset))
    if results and validator is not None:
        _validate(results, sources, validator)
    yield from results
