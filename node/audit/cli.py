"""``ainode audit``: the local audit file, filtered by time, AE title, study or kind.

One line per event (time, kind, outcome, AE titles, studies); ``--xml`` prints each event's
whole PS3.15 audit message instead, Patient ID included: the audit file is the one place
that holds it, so this command is for whoever may read the audit trail.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from node.audit.events import AuditLogUsed, EventKind, Outcome
from node.audit.messages import operating_system_user
from node.audit.trail import record_from_command
from node.config import DEFAULT_CONFIG, load_node_config


def _moment(text: str) -> datetime:
    """An ISO 8601 date or time; one without a zone is local time."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO time, e.g. 2026-01-31 or 2026-01-31T14:00:00Z"
        ) from exc
    return value if value.tzinfo else value.astimezone()


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="show the audit trail (IHE ATNA events)")
    audit.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    audit.add_argument("--file", type=Path, help="the audit file (default: from node.yaml)")
    audit.add_argument("--since", type=_moment, help="events at or after this ISO time")
    audit.add_argument("--until", type=_moment, help="events before this ISO time")
    audit.add_argument("--ae", help="a calling, called or destination AE title (or name)")
    audit.add_argument("--study", help="a Study Instance UID")
    audit.add_argument("--kind", choices=[kind.value for kind in EventKind])
    audit.add_argument("--xml", action="store_true", help="print the whole audit messages")
    audit.set_defaults(func=cmd_audit)


@dataclass(frozen=True)
class Filter:
    """Which records ``ainode audit`` shows."""

    since: datetime | None = None
    until: datetime | None = None
    ae: str | None = None
    study: str | None = None
    kind: str | None = None

    def matches(self, record: dict) -> bool:
        when = datetime.fromisoformat(record["time"])
        return (
            (self.since is None or when >= self.since)
            and (self.until is None or when < self.until)
            and (self.ae is None or self.ae in record.get("ae_titles", ()))
            and (self.study is None or self.study in record.get("study_uids", ()))
            and (self.kind is None or record.get("kind") == self.kind)
        )


def read_records(path: Path) -> Iterator[dict]:
    """The file's records in order; a line that does not parse (the end of a record a crash
    cut short) is reported on stderr and skipped."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
                datetime.fromisoformat(record["time"])
            except (ValueError, KeyError, TypeError):
                print(f"ainode audit: {path}:{number}: not a record, skipped", file=sys.stderr)
                continue
            yield record


def format_record(record: dict) -> str:
    outcome = record.get("outcome", 0)
    result = "ok" if outcome == Outcome.SUCCESS else f"failed({outcome})"
    parts = [record["time"], f"{record.get('kind', '?'):<22}", f"{result:<10}"]
    if record.get("ae_titles"):
        parts.append("ae=" + ",".join(record["ae_titles"]))
    if record.get("study_uids"):
        parts.append("study=" + ",".join(record["study_uids"]))
    return "  ".join(parts)


def cmd_audit(args: argparse.Namespace) -> int:
    # node.yaml says where the trail is, and where this reading of it is recorded
    config = None if args.file and not args.config.exists() else load_node_config(args.config)
    path = args.file
    if path is None:
        assert config is not None
        path = config.audit.file_path(config.storage.data_dir)
    if not path.exists():
        print(f"ainode audit: no audit file at {path}", file=sys.stderr)
        return 1
    if config is not None:  # reading the trail is itself audited (Audit Log Used)
        used = AuditLogUsed(user=operating_system_user(), path=str(path))
        record_from_command(config.audit, config.storage.data_dir, config.listener.ae_title, used)
    selected = Filter(args.since, args.until, args.ae, args.study, args.kind)
    for record in read_records(path):
        if selected.matches(record):
            print(record["xml"] if args.xml else format_record(record))
    return 0
