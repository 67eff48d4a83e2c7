#!/usr/bin/env python3
"""Write tests/fixtures/ainode-schema-v<N>.sqlite3: a database as the schema-N release left it.

    .venv/bin/python scripts/make-schema-fixture.py        # every version in RELEASES
    .venv/bin/python scripts/make-schema-fixture.py 3      # only ainode-schema-v3.sqlite3

The schema comes from ``node/db.py`` (and, from version 3 on, the ``node/migrations.py`` it
imports) at the last commit with schema version N (``git show``), not from today's code, so
the file stays what that release wrote after the schema moves on. A few rows in every table
the pipeline fills (study, series, instances, a stable version, a route match, jobs, results,
outbox) let the migration tests check that data survives.

A release that changes the schema adds its line to ``RELEASES``: its version, the last commit
whose ``node/db.py`` has that version (``git log -S``), and the modules to take from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


@dataclass(frozen=True)
class Release:
    """The commit a fixture's schema comes from, and its modules, each in import order."""

    commit: str
    modules: tuple[str, ...]  # dotted names; the last one is the db module


RELEASES: dict[int, Release] = {
    # node/db.py with SCHEMA_VERSION = 2, before node/migrations.py existed
    2: Release("558f960c310644dafd3ddd328ee15cea772adff7", ("node.db",)),
    # node/db.py with SCHEMA_VERSION = MIGRATIONS[-1].version = 3 (node/migrations.py)
    3: Release("7aafba654b618f8d883ef003c5849bec8df9329f", ("node.migrations", "node.db")),
}

#: Modules a release imports that have moved since: old dotted name -> today's module with the
#: same names (release 3's ``node.migrations`` takes ``fsync_dir`` from ``node.spool``).
MOVED_MODULES = {"node.spool": "node.durable"}

STUDY = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000001"
SERIES = (
    "1.2.826.0.1.3680043.8.498.20000000000000000000000000000000001",
    "1.2.826.0.1.3680043.8.498.20000000000000000000000000000000002",
)
T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z: fixed, so the file is the same at every run


@contextmanager
def _release_modules(release: Release, folder: Path) -> Iterator[ModuleType]:
    """The release's db module, its own modules standing in for today's while it loads (a
    module they import from beyond ``release.modules``, e.g. ``node.durable`` under its old
    name ``node.spool`` (``MOVED_MODULES``), is today's)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    saved = {name: sys.modules.get(name) for name in (*release.modules, *MOVED_MODULES)}
    module: ModuleType | None = None
    try:
        for old_name, new_name in MOVED_MODULES.items():
            sys.modules[old_name] = importlib.import_module(new_name)
        for name in release.modules:
            path = folder / (name.replace(".", "_") + ".py")
            path.write_bytes(
                subprocess.run(
                    ["git", "show", f"{release.commit}:{name.replace('.', '/')}.py"],
                    cwd=REPO,
                    check=True,
                    capture_output=True,
                ).stdout
            )
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        assert module is not None
        yield module
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _fill(conn: sqlite3.Connection, transaction: Callable[..., Any]) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO studies (study_instance_uid, patient_id, patient_name, study_date, "
            "study_description, accession_number, first_received_at, last_received_at, state, "
            "version) VALUES (?, 'SYNTH-001', 'Synthetic^Patient', '20250101', 'fixture', "
            "'ACC1', ?, ?, 'stable', 1)",
            (STUDY, T0, T0 + 2),
        )
        for number, series in enumerate(SERIES, start=1):
            conn.execute(
                "INSERT INTO series (series_instance_uid, study_instance_uid, modality, "
                "body_part_examined, series_description, series_number) "
                "VALUES (?, ?, 'CT', 'CHEST', 'axial', ?)",
                (series, STUDY, number),
            )
            for instance in (1, 2):
                uid = f"{series}.{instance}"
                conn.execute(
                    "INSERT INTO instances (sop_instance_uid, series_instance_uid, "
                    "study_instance_uid, sop_class_uid, transfer_syntax_uid, path, size_bytes, "
                    "calling_ae, called_ae, received_at, study_version, instance_number, "
                    "attributes) VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.2', "
                    "'1.2.840.10008.1.2.1', ?, 1234, 'MODALITY', 'AINODE', ?, 1, ?, "
                    '\'{"Modality": "CT"}\')',
                    (uid, series, STUDY, f"{STUDY}/{uid}.dcm", T0 + instance, instance),
                )
        conn.execute(
            "INSERT INTO study_versions (id, study_instance_uid, version, stable_at, "
            "instance_count, routed_at) VALUES (1, ?, 1, ?, 4, ?)",
            (STUDY, T0 + 40, T0 + 41),
        )
        for match, plugin in ((1, "ct-lung-nodule"), (2, "dx-chest")):
            conn.execute(
                "INSERT INTO route_matches (id, study_version_id, route_name, plugin, "
                "series_instance_uid, destinations, mode, created_at) "
                "VALUES (?, 1, 'chest-ct', ?, ?, '[\"pacs\"]', 'production', ?)",
                (match, plugin, SERIES[0], T0 + 41),
            )
        conn.execute(
            "INSERT INTO jobs (id, route_match_id, state, attempts, next_attempt_at, created_at,"
            " started_at, finished_at) VALUES (1, 1, 'SUCCEEDED', 1, ?, ?, ?, ?)",
            (T0 + 41, T0 + 41, T0 + 42, T0 + 50),
        )
        conn.execute(
            "INSERT INTO jobs (id, route_match_id, state, next_attempt_at, created_at) "
            "VALUES (2, 2, 'QUEUED', ?, ?)",
            (T0 + 41, T0 + 41),
        )
        for number, kind in enumerate(("seg", "sr"), start=1):
            uid = f"1.2.826.0.1.3680043.8.498.3000000000000000000000000000000000{number}"
            conn.execute(
                "INSERT INTO results (sop_instance_uid, job_id, kind, sop_class_uid, path, "
                "created_at) VALUES (?, 1, ?, '1.2.840.10008.5.1.4.1.1.66.4', ?, ?)",
                (uid, kind, f"job-1/{kind}.dcm", T0 + 50),
            )
            conn.execute(
                "INSERT INTO outbox (sop_instance_uid, destination, state, attempts, "
                "next_attempt_at, sent_at) VALUES (?, 'pacs', ?, ?, ?, ?)",
                (uid, "SENT" if kind == "seg" else "PENDING", 1, T0 + 51, T0 + 51),
            )


def write_fixture(version: int, folder: Path = FIXTURES) -> Path:
    """Build the schema-``version`` fixture in a temporary folder, then put it in ``folder``."""
    release = RELEASES[version]
    target = folder / f"ainode-schema-v{version}.sqlite3"
    with tempfile.TemporaryDirectory() as work, _release_modules(release, Path(work)) as db:
        if version != db.SCHEMA_VERSION:
            raise SystemExit(
                f"node/db.py at {release.commit[:12]} has schema version {db.SCHEMA_VERSION}, "
                f"not {version}: fix RELEASES[{version}] in {Path(__file__).name}"
            )
        built = Path(work) / target.name
        conn = db.connect(built)
        _fill(conn, db.transaction)
        # the smallest pages keep the committed file a few KB; WAL stays, as the node sets it
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA page_size=512")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in ("-wal", "-shm"):  # left by something that opened the file in place
            target.with_name(target.name + stale).unlink(missing_ok=True)
        target.write_bytes(built.read_bytes())
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "versions",
        nargs="*",
        type=int,
        metavar="VERSION",
        help=f"schema versions to write (default: all of {sorted(RELEASES)})",
    )
    parser.add_argument(
        "--out", type=Path, default=FIXTURES, help="folder to write to (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.versions) - set(RELEASES))
    if unknown:
        parser.error(
            f"no release known for schema version(s) {unknown}: known are {sorted(RELEASES)}; "
            "add the release's commit to RELEASES"
        )
    for version in args.versions or sorted(RELEASES):
        target = write_fixture(version, args.out)
        print(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
