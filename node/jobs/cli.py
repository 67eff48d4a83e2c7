"""``ainode jobs``: list jobs, retry failed ones, cancel queued or running ones.

The commands work on the database directly, so they work whether or not the node runs; a
running node picks a re-queued job up at its next poll. Output names UIDs, routes and
plugins, never patient names or IDs.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import closing
from pathlib import Path

from node.config import DEFAULT_CONFIG, load_node_config
from node.db import connect
from node.jobs import table
from node.jobs.table import Job, JobState
from routers.schema import Urgency


def register(subparsers: argparse._SubParsersAction) -> None:
    jobs = subparsers.add_parser("jobs", help="list, retry and cancel jobs")
    jobs.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    jobs.add_argument(
        "--state", type=str.upper, choices=[s.value for s in JobState], help="only this state"
    )
    jobs.set_defaults(func=cmd_list)
    actions = jobs.add_subparsers(dest="action", metavar="ACTION")
    retry = actions.add_parser("retry", help="queue a failed or cancelled job again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("job_id", nargs="?", type=int, help="the job's ID")
    which.add_argument("--failed", action="store_true", help="every FAILED job")
    retry.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="node.yaml")
    retry.set_defaults(func=cmd_retry)
    cancel = actions.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id", type=int)
    cancel.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="node.yaml")
    cancel.set_defaults(func=cmd_cancel)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def format_job(job: Job) -> str:
    timings = " ".join(f"{stage}={seconds:.2f}s" for stage, seconds in job.timings.items())
    urgency = Urgency.of_rank(job.urgency)
    lines = [
        f"{job.id:>6}  {job.state.value:<9}  attempts={job.attempts}  {job.plugin}"
        f"{'@' + job.plugin_version if job.plugin_version else ''}  route={job.route_name}"
        f"{' (shadow)' if job.mode == 'shadow' else ''}"
        f"{'' if urgency is Urgency.NORMAL else f' ({urgency.value})'}"
        f"  worker={job.worker or '-'}",
        f"        study {job.study_instance_uid} v{job.study_version}  "
        f"series {job.series_instance_uid}",
        f"        created {_when(job.created_at)}  finished {_when(job.finished_at)}"
        + (f"  {timings}" if timings else ""),
    ]
    if job.error:  # a container's error ends with its log's last lines: keep them indented
        lines.append("        error: " + job.error.replace("\n", "\n               "))
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    with closing(connect(config.storage.database_path)) as conn:
        state = JobState(args.state) if args.state else None
        jobs = table.list_jobs(conn, state)
    if not jobs:
        print("no jobs" + (f" in state {state.value}" if state else ""))
    for job in jobs:
        print(format_job(job))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    with closing(connect(config.storage.database_path)) as conn:
        if args.failed:
            count = table.retry_failed(conn)
            print(f"re-queued {count} failed job(s)")
            return 0
        if table.retry(conn, args.job_id):
            print(f"job {args.job_id} re-queued")
            return 0
        job = table.get_job(conn, args.job_id)
    reason = "does not exist" if job is None else f"is {job.state.value}, not FAILED or CANCELLED"
    print(f"ainode: job {args.job_id} {reason}", file=sys.stderr)
    return 1


def cmd_cancel(args: argparse.Namespace) -> int:
    config = load_node_config(args.config)
    with closing(connect(config.storage.database_path)) as conn:
        if table.cancel(conn, args.job_id):
            print(f"job {args.job_id} cancelled")
            return 0
        job = table.get_job(conn, args.job_id)
    reason = "does not exist" if job is None else f"is already {job.state.value}"
    print(f"ainode: job {args.job_id} {reason}", file=sys.stderr)
    return 1
