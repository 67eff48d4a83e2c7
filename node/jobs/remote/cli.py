"""``ainode worker``: run jobs for a node on this machine (``jobs.executor: celery``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser(
        "worker", help="run a node's jobs here: one GPU slot (or the CPU), through Celery"
    )
    worker.add_argument("--config", type=Path, default=Path("worker.yaml"), help="worker.yaml")
    worker.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from node.jobs.remote.settings import load_worker_config
    from node.jobs.remote.worker import serve

    try:
        config = load_worker_config(args.config)
        config.broker_url()
        config.token()
    except ValueError as exc:
        print(f"ainode: bad worker configuration: {exc}", file=sys.stderr)
        return 2
    return serve(config)
