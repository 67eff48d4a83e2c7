"""``ainode outbox``: what is owed to which destination, and putting dead letters back.

Works on the database directly; a running node's senders pick re-queued rows up at their
next poll. Output names UIDs and destinations, never patient names or IDs.
"""

from __future__ import annotations

import argparse
import time
from contextlib import closing
from pathlib import Path

from node.config import DEFAULT_CONFIG, load_node_config
from node.db import connect
from node.dispatch.outbox import OutboxRow, OutboxState, list_rows, retry_dead


def register(subparsers: argparse._SubParsersAction) -> None:
    outbox = subparsers.add_parser("outbox", help="list result deliveries; retry dead letters")
    outbox.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    outbox.add_argument("--dead", action="store_true", help="only dead-lettered rows")
    outbox.set_defaults(func=cmd_list)
    actions = outbox.add_subparsers(dest="action", metavar="ACTION")
    retry = actions.add_parser("retry", help="send every dead-lettered row again")
    retry.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="node.yaml")
    retry.set_defaults(func=cmd_retry)


def format_row(row: OutboxRow) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.sent_at)) if row.sent_at else "-"
    line = (
        f"{row.id:>6}  {row.state.value:<7}  {row.destination:<16}  {row.kind:<7}  "
        f"job {row.job_id}  attempts={row.attempts}  sent {when}\n"
        f"        {row.sop_instance_uid}"
    )
    if row.last_error and row.state is not OutboxState.SENT:
        line += f"\n        last error: {row.last_error}"
    return line


def cmd_list(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    with closing(connect(config.storage.database_path)) as conn:
        rows = list_rows(conn, config.storage.outputs_dir, OutboxState.DEAD if args.dead else None)
    if not rows:
        print("no dead-lettered deliveries" if args.dead else "the outbox is empty")
    for row in rows:
        print(format_row(row))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    with closing(connect(config.storage.database_path)) as conn:
        count = retry_dead(conn)
    print(f"re-queued {count} dead-lettered deliver{'y' if count == 1 else 'ies'}")
    return 0
