"""``ainode routes check|explain``.

``check`` and ``explain`` read node.yaml (``--config``) when it exists, to know the routes
file, the installed plugins, the destinations and the index; without it they still check the
file's own content and explain studies on disk.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from models.discovery import discover
from node.config import DEFAULT_CONFIG, ConfigError, NodeConfig, load_node_config
from node.db import connect
from node.routing.catalog import destination_flags, installed_plugins
from routers.attributes import study_view_from_index, study_views_from_paths
from routers.check import RoutesFileError, check_file, load_route_table
from routers.explain import explain_study
from routers.matcher import RouteTable


def register(subparsers: argparse._SubParsersAction) -> None:
    routes = subparsers.add_parser("routes", help="check routes.yaml and explain routing")
    routes_commands = routes.add_subparsers(dest="routes_command", required=True, metavar="ACTION")
    check = routes_commands.add_parser(
        "check", help="report every problem in routes.yaml with line:column and a hint"
    )
    check.add_argument(
        "file", nargs="?", type=Path, help="routes file (default: routes_file of node.yaml)"
    )
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    check.set_defaults(func=cmd_check)

    explain = routes_commands.add_parser(
        "explain", help="show which routes match a study on disk or in the index, and why"
    )
    explain.add_argument(
        "target",
        metavar="PATH_OR_STUDY_UID",
        help="a DICOM file or folder, or a Study Instance UID in the index",
    )
    explain.add_argument("--routes", type=Path, help="routes file (default: node.yaml's)")
    explain.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    explain.set_defaults(func=cmd_explain)


def _node_config(path: Path, explicit: bool) -> tuple[NodeConfig | None, int]:
    """node.yaml if present; (None, 0) when absent and not asked for, (None, 2) when broken."""
    if not path.exists() and not explicit:
        return None, 0
    try:
        return load_node_config(path), 0
    except ConfigError as exc:
        print(f"ainode: {exc}", file=sys.stderr)
        return None, 2


def _config_given(argv_value: Path) -> bool:
    return argv_value != DEFAULT_CONFIG


def cmd_check(args: argparse.Namespace) -> int:
    config, status = _node_config(args.config, _config_given(args.config))
    if status:
        return status
    path = args.file or (config.routes_file if config else Path("config/routes.yaml"))
    plugins = installed_plugins(config) if config else None
    destinations = destination_flags(config) if config else None
    report = check_file(path, plugins, destinations)
    for diagnostic in report.diagnostics:
        print(diagnostic.format())
    if not report.ok:
        print(f"{path}: {len(report.diagnostics)} problem(s); the file is not used until fixed")
        return 1
    assert report.table is not None
    skipped = [
        what
        for what, known in (("plugins", plugins), ("destinations", destinations))
        if known is None
    ]
    note = f" ({' and '.join(skipped)} not checked: no node.yaml)" if skipped else ""
    enabled = sum(1 for r in report.table.routes if r.enabled)
    print(f"{path}: OK, {len(report.table.routes)} route(s), {enabled} enabled{note}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    config, status = _node_config(args.config, _config_given(args.config))
    if status:
        return status
    routes_path = args.routes or (config.routes_file if config else Path("config/routes.yaml"))
    try:
        table = load_route_table(routes_path)
    except RoutesFileError as exc:
        print(exc, file=sys.stderr)
        print(f"{routes_path}: fix these first (ainode routes check)", file=sys.stderr)
        return 1
    target = Path(args.target)
    if target.exists():
        logging.getLogger("pydicom").setLevel(logging.ERROR)  # odd files are explained, not
        with warnings.catch_warnings():  # warned about
            warnings.simplefilter("ignore")
            studies = study_views_from_paths([target])
        if not studies:
            print(
                f"{target}: no routable DICOM instances (need Study/Series UIDs and a SOP class)",
                file=sys.stderr,
            )
            return 1
    else:
        if config is None:
            print(
                f"{target}: not a file or folder, and no node.yaml to find the index "
                "(use --config)",
                file=sys.stderr,
            )
            return 2
        text = explain_indexed_study(config, table, args.target)
        if text is None:
            print(f"{args.target}: no such file, folder or study in the index", file=sys.stderr)
            return 1
        print(text, end="")
        return 0
    catalog = discover(config.plugin_dirs) if config else None
    print("\n".join(explain_study(table, study, catalog) for study in studies), end="")
    return 0


def explain_indexed_study(config: NodeConfig, table: RouteTable, study_uid: str) -> str | None:
    """``routes explain`` for a study in the index (None when it is not there): the CLI and
    the console's API answer with this same text."""
    conn = connect(config.storage.database_path)
    try:
        study = study_view_from_index(conn, study_uid)
    finally:
        conn.close()
    if study is None:
        return None
    return explain_study(table, study, discover(config.plugin_dirs))
