"""``ainode purge``: what retention deletes now, shown (``--dry-run``) or done.

Safe beside a running node: each study's purge holds the same lock as the node's stage. It
applies ``storage.retention`` even when ``enabled: false`` (an operator asked for it).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from node.audit.trail import DISABLED, AuditTrail
from node.config import DEFAULT_CONFIG, load_node_config
from node.db import connect
from node.retention.policy import Verdict
from node.retention.runner import Retention


def register(subparsers: argparse._SubParsersAction) -> None:
    purge = subparsers.add_parser(
        "purge", help="delete delivered studies past storage.retention (or --dry-run)"
    )
    purge.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    purge.add_argument("--dry-run", action="store_true", help="show what would go; delete nothing")
    purge.set_defaults(func=cmd_purge)


def _size(size: int) -> str:
    """Bytes in the largest unit that leaves a number of at least 1."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def cmd_purge(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)  # a ConfigError is reported by node.cli
    audit = DISABLED
    if not args.dry_run:  # each deletion is in the audit trail, as the node's own are
        audit = AuditTrail.from_settings(
            config.audit, config.storage.data_dir, config.listener.ae_title
        )
    retention = Retention(config, audit=audit)
    settings = retention.settings
    conn = connect(config.storage.database_path)
    try:
        if args.dry_run:
            plan = retention.plan(conn)
            due = [s for s in plan if s.verdict is Verdict.DELETABLE]
            results = retention.expired_results(conn)
        else:
            retention.finish_interrupted(conn)
            due = retention.purge_aged(conn)
            results = retention.purge_results(conn)
            plan = retention.plan(conn)
    finally:
        conn.close()
        audit.close()
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"retention: studies {settings.days:g} days after delivery, "
        f"result copies {settings.results_days:g} days"
    )
    for study in due:
        if args.dry_run:
            settled = time.strftime("%Y-%m-%d", time.gmtime(study.settled_at or 0))
            print(
                f"  {study.study_instance_uid:<64}  settled {settled}  {_size(study.spool_bytes)}"
            )
        else:
            print(f"  {study.study_instance_uid:<64}  {_size(study.bytes_freed)}")
    study_bytes = sum(s.spool_bytes if args.dry_run else s.bytes_freed for s in due)
    result_bytes = sum(r.size_bytes for r in results)
    print(f"{verb} {len(due)} studies ({_size(study_bytes)})")
    print(f"{verb} {len(results)} result folders ({_size(result_bytes)})")
    free = retention.free_bytes()
    print(f"free disk {_size(free)} (C-STOREs refused below {_size(retention.watermark_bytes)})")
    kept = Counter(s.verdict for s in plan if s.verdict is not Verdict.DELETABLE)
    for verdict, count in sorted(kept.items()):
        print(f"{count:>6} {verdict.value}")
    return 0
