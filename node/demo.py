"""``ainode demo``: phantom studies in, AI results out, on the embedded defaults.

Uses the node already listening where node.yaml says (checked with C-ECHO) or starts one in
this process; writes a phantom study for each reference plugin (chest CT, chest radiograph,
neck MR), sends them with C-STORE, waits for every job and delivery, then prints what came
back: the findings in the SR, the result files, and the validator's verdict. Phantoms carry
synthetic names only; the output still prints UIDs, never patient names or IDs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread

from node.config import DEFAULT_CONFIG, ConfigError, NodeConfig, load_node_config
from node.db import connect
from node.destination_settings import FolderDestination, StowRsDestination
from node.scu import AssociationFailed, Peer, echo, send

REPO = Path(__file__).resolve().parent.parent
CALLING_AE = "AINODE-DEMO"


@dataclass(frozen=True)
class DemoStudy:
    label: str
    study_instance_uid: str
    files: tuple[Path, ...]


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="send phantom studies through the node and show the results"
    )
    demo.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    demo.add_argument("--timeout", type=float, default=900, help="seconds to wait for all results")
    demo.add_argument(
        "--only",
        choices=["ct", "xray", "mr"],
        action="append",
        help="just these phantoms (repeatable; default all)",
    )
    demo.set_defaults(func=cmd_demo)


# -- phantoms ----------------------------------------------------------------------------------
def _chest_ct(folder: Path, seed: str) -> DemoStudy:
    from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct

    _, paths = write_chest_ct(folder, ChestCTSpec.small(), uid_seed=seed)
    return DemoStudy("chest CT (ct-lung-nodule)", _study_of(paths[0]), tuple(paths))


def _chest_xray(folder: Path, seed: str) -> DemoStudy:
    from models.phantoms.chest_xray import make_chest_xray

    written = make_chest_xray(folder, uid_seed=seed)
    return DemoStudy(
        "chest radiograph (dx-chest, dx-chest-report)",
        written.study_instance_uid,
        (written.path,),
    )


def _neck_mr(folder: Path, seed: str) -> DemoStudy:
    from models.phantoms.neck_mr import NeckMRSpec, write_neck_mr

    _, paths = write_neck_mr(folder, NeckMRSpec.small(), uid_seed=seed)
    return DemoStudy("neck MR (mr-vessel-wall)", _study_of(paths[0]), tuple(paths))


PHANTOMS: dict[str, Callable[[Path, str], DemoStudy]] = {
    "ct": _chest_ct,
    "xray": _chest_xray,
    "mr": _neck_mr,
}


def _study_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


# -- progress ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobView:
    id: int
    route: str
    plugin: str
    mode: str
    state: str
    error: str | None
    timings: str


@dataclass(frozen=True)
class StudyView:
    """Where one study is in the pipeline, read from the tables."""

    stable: bool
    routed: bool
    jobs: tuple[JobView, ...]
    pending_deliveries: int
    results: tuple[tuple[str, Path], ...]  # (kind, file in the outputs folder)
    deliveries: tuple[tuple[str, str, str], ...]  # (destination, state, SOP instance UID)

    @property
    def done(self) -> bool:
        finished = all(j.state in ("SUCCEEDED", "FAILED", "CANCELLED") for j in self.jobs)
        return self.routed and finished and self.pending_deliveries == 0


def study_view(conn, study_uid: str, outputs_dir: Path) -> StudyView:
    versions = conn.execute(
        "SELECT id, routed_at FROM study_versions WHERE study_instance_uid = ? "
        "ORDER BY version DESC LIMIT 1",
        (study_uid,),
    ).fetchone()
    if versions is None:
        return StudyView(False, False, (), 0, (), ())
    matches = conn.execute(
        "SELECT j.id, m.route_name, m.plugin, m.mode, j.state, j.error, j.timings "
        "FROM route_matches m LEFT JOIN jobs j ON j.route_match_id = m.id "
        "WHERE m.study_version_id = ? ORDER BY m.id",
        (versions["id"],),
    ).fetchall()
    jobs = tuple(
        JobView(
            r["id"] or 0,
            r["route_name"],
            r["plugin"],
            r["mode"],
            r["state"] or "NEW",
            r["error"],
            r["timings"] or "{}",
        )
        for r in matches
    )
    job_ids = [j.id for j in jobs if j.id]
    marks = ",".join("?" * len(job_ids)) or "NULL"
    results = conn.execute(
        f"SELECT kind, path FROM results WHERE job_id IN ({marks}) ORDER BY kind", job_ids
    ).fetchall()
    deliveries = conn.execute(
        f"SELECT o.destination, o.state, o.sop_instance_uid FROM outbox o "
        f"JOIN results r USING (sop_instance_uid) WHERE r.job_id IN ({marks})",
        job_ids,
    ).fetchall()
    pending = sum(1 for d in deliveries if d["state"] == "PENDING")
    return StudyView(
        stable=True,
        routed=versions["routed_at"] is not None,
        jobs=jobs,
        pending_deliveries=pending,
        results=tuple((r["kind"], outputs_dir / r["path"]) for r in results),
        deliveries=tuple((d[0], d[1], d[2]) for d in deliveries),
    )


# -- findings summary --------------------------------------------------------------------------
def _content_items(items) -> Iterator[Dataset]:
    for item in items or ():
        yield item
        yield from _content_items(item.get("ContentSequence"))


# Coded items that describe the report rather than what was found.
_NOT_FINDINGS = frozenset(
    {
        "Finding",
        "Procedure reported",
        "Finding category",
        "Language of Content Item and Descendants",
        "Observer Type",
    }
)


def summarise_sr(path: Path, limit: int = 12) -> list[str]:
    """Measurements, evaluations and report text of an SR, one readable line each."""
    ds = dcmread(path)
    lines: list[str] = []
    for item in _content_items(ds.get("ContentSequence")):
        concept = (
            item.ConceptNameCodeSequence[0].CodeMeaning
            if "ConceptNameCodeSequence" in (item)
            else ""
        )
        kind = item.get("ValueType")
        if kind == "NUM" and "MeasuredValueSequence" in item:
            value = item.MeasuredValueSequence[0]
            unit = value.MeasurementUnitsCodeSequence[0].CodeValue
            lines.append(f"{concept}: {float(value.NumericValue):.4g} {unit}")
        elif kind == "CODE" and concept not in _NOT_FINDINGS:
            lines.append(f"{concept}: {item.ConceptCodeSequence[0].CodeMeaning}")
        elif kind == "TEXT" and concept in ("Impression", "Finding", "Findings"):
            text = str(item.TextValue).strip().replace("\n", "\n        ")
            lines.append(f"{concept}: {text}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines


def find_validator() -> Path | None:
    candidates = [
        os.environ.get("AINODE_VALIDATOR"),
        str(REPO.parent / "shared" / "tools" / "validate-dicom"),
        shutil.which("validate-dicom"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def validate(files: list[Path], sources: tuple[Path, ...]) -> str:
    validator = find_validator()
    if validator is None:
        return "validator not found (set AINODE_VALIDATOR to validate-dicom)"
    args = ["bash", str(validator)]
    for source in sources:
        args += ["-s", str(source)]
    env = dict(os.environ, VALIDATE_PYTHON=os.environ.get("VALIDATE_PYTHON", sys.executable))
    done = subprocess.run(
        [*args, *map(str, files)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode == 0:
        return "PASS"
    tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
    return "FAIL\n" + "\n".join(f"      {line}" for line in tail)


# -- the command -------------------------------------------------------------------------------
def _node_answers(config: NodeConfig) -> bool:
    listener = config.listener
    try:
        socket.create_connection((listener.host, listener.port), timeout=2).close()
    except OSError:
        return False  # nothing listens: no need to ask with C-ECHO
    try:
        return echo(Peer(listener.ae_title, listener.host, listener.port), CALLING_AE, 5) == 0
    except (AssociationFailed, OSError):
        return False


def _delivered_path(config: NodeConfig, destination: str, study: str, sop: str) -> str:
    target = config.destinations.get(destination)
    if isinstance(target, FolderDestination):
        return str(target.path / study / f"{sop}.dcm")
    if isinstance(target, StowRsDestination):
        return f"{destination} (STOW-RS to {target.url})"
    return f"{destination} (C-STORE)"


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        config = load_node_config(args.config)
    except ConfigError as exc:
        print(f"ainode: bad configuration: {exc}", file=sys.stderr)
        return 2
    listener = config.listener
    node = None
    if _node_answers(config):
        print(
            f"using the node already running at {listener.ae_title}@{listener.host}:{listener.port}"
        )
    else:
        from node.service import Node

        print(
            f"starting a node at {listener.ae_title}@{listener.host}:{listener.port} "
            f"(data in {config.storage.data_dir})"
        )
        node = Node(config)
        node.start()
    try:
        return _run(config, args)
    finally:
        if node is not None:
            node.stop()


def _run(config: NodeConfig, args: argparse.Namespace) -> int:
    listener = config.listener
    peer = Peer(listener.ae_title, listener.host, listener.port)
    chosen = args.only or list(PHANTOMS)
    run_seed = f"ainode-demo-{int(time.time())}"
    with tempfile.TemporaryDirectory(prefix="ainode-demo-") as temp:
        studies = []
        for name in chosen:
            folder = Path(temp) / name
            folder.mkdir()
            study = PHANTOMS[name](folder, f"{run_seed}-{name}")
            report = send(list(study.files), peer, CALLING_AE)
            print(
                f"sent {study.label}: {report.sent} instance(s), study {study.study_instance_uid}"
            )
            if not report.ok:
                for failure in report.failed[:3]:
                    print(f"  not sent: {failure.path.name}: {failure.reason}")
            studies.append(study)

        stability = config.stability
        quiet = (
            f"{stability.after_release_s:g}s after the sender's release"
            if stability.after_release_s is not None
            else f"{stability.stable_after_s:g}s of quiet"
        )
        print(
            f"waiting for results (study stable {quiet}; then routing, inference, outputs, "
            "delivery)..."
        )
        conn = connect(config.storage.database_path)
        try:
            deadline = time.monotonic() + args.timeout
            arrival_deadline = time.monotonic() + 60
            views = {}
            while time.monotonic() < deadline:
                if time.monotonic() > arrival_deadline and not _arrived(conn, studies):
                    print(
                        f"the node at {peer} accepted the studies but they are not in "
                        f"{config.storage.database_path}: is it running with another "
                        f"node.yaml? Stop it or pass its --config.",
                        file=sys.stderr,
                    )
                    return 1
                views = {
                    s.study_instance_uid: study_view(
                        conn, s.study_instance_uid, config.storage.outputs_dir
                    )
                    for s in studies
                }
                if all(v.done for v in views.values()):
                    break
                time.sleep(0.5)
        finally:
            conn.close()
        return _print(config, studies, views)


def _arrived(conn, studies: list[DemoStudy]) -> bool:
    marks = ",".join("?" * len(studies))
    found = conn.execute(
        f"SELECT COUNT(*) FROM studies WHERE study_instance_uid IN ({marks})",
        [s.study_instance_uid for s in studies],
    ).fetchone()[0]
    return found > 0


def _print(config: NodeConfig, studies: list[DemoStudy], views: dict[str, StudyView]) -> int:
    status = 0
    for study in studies:
        view = views.get(study.study_instance_uid)
        print(f"\n== {study.label}\n   study {study.study_instance_uid}")
        if view is None or not view.done:
            print("   not finished before the timeout (see `ainode jobs` and `ainode outbox`)")
            status = 1
        if view is None:
            continue
        if view.routed and not view.jobs:
            print("   no route matched (see `ainode routes explain`)")
            status = 1
        for job in view.jobs:
            timings = " ".join(
                f"{stage}={seconds:.2f}s" for stage, seconds in json.loads(job.timings).items()
            )
            print(
                f"   job {job.id}: {job.plugin} via route {job.route} ({job.mode}): {job.state}"
                f"  {timings}"
            )
            if job.error and job.state != "SUCCEEDED":
                print(f"      error: {job.error}")
                status = 1
        for kind, path in view.results:
            if kind in ("sr", "text_sr") and path.is_file():
                for line in summarise_sr(path):
                    print(f"      {line}")
        for destination, state, sop in view.deliveries:
            where = _delivered_path(config, destination, study.study_instance_uid, sop)
            print(f"   {state:<7} {where}")
        files = [path for _, path in view.results if path.is_file()]
        if files:
            verdict = validate(files, study.files)
            print(f"   validator: {verdict}")
            if verdict != "PASS" and not verdict.startswith("validator not found"):
                status = 1
    return status
