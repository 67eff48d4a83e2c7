"""The ``ainode`` command line.

Each area of the node registers its own sub-commands (``register(subparsers)``), so this
module only assembles them; a command's function returns the process exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from node import __version__
from node.config import ConfigError
from node.migrations import SchemaTooNew
from routers.check import RoutesFileError

COMMAND_MODULES = (
    "node.commands",
    "node.config_cli",
    "node.plugins_cli",
    "node.routing.cli",
    "node.jobs.cli",
    "node.jobs.workers_cli",
    "node.dispatch.cli",
    "node.vendors.cli",
    "node.demo",
    "node.audit.cli",
    "node.retention.cli",
    "node.console.cli",
    "node.jobs.remote.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ainode", description="DICOM node that routes studies to AI plugins"
    )
    parser.add_argument("--version", action="version", version=f"ainode {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs every association at INFO: noise in a command's output
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return status
    except BrokenPipeError:
        # the reader went away (ainode jobs | head): stop quietly, as UNIX tools do, with
        # nothing left for the interpreter to flush into the closed pipe at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (ConfigError, RoutesFileError) as exc:  # routes.yaml: a node started by a command
        print(f"ainode: bad configuration: {exc}", file=sys.stderr)
        return 2
    except SchemaTooNew as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
