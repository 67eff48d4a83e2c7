"""``ainode config``: the JSON Schema of node.yaml and routes.yaml for editors, and the
configuration the node would run with (``show``), secrets masked.

node.yaml refuses inline tokens and passwords (they live in files or the environment), so
``show`` has nothing secret to print; it still masks any value under a secret-sounding key,
so that a setting added later cannot leak through it. Paths and variable names are shown:
they say where a secret is, not what it is.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

from node.config import DEFAULT_CONFIG, ConfigError, NodeConfig, load_node_config
from routers.schema import routes_json_schema

MASK = "********"
#: Keys whose values are secrets; ``*_file`` and ``*_env`` only say where one is kept.
_SECRET_KEY = re.compile(r"(password|passphrase|secret|token|private_key|api_key)", re.I)
_REFERENCE_KEY = re.compile(r"_(file|env|path)$")


def register(subparsers: argparse._SubParsersAction) -> None:
    config = subparsers.add_parser("config", help="configuration helpers")
    commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    schema = commands.add_parser(
        "schema", help="print the JSON Schema of node.yaml or routes.yaml for editors"
    )
    schema.add_argument(
        "which", nargs="?", choices=("node", "routes"), default="node", help="default: node"
    )
    schema.set_defaults(func=cmd_schema)
    show = commands.add_parser(
        "show", help="print the configuration the node runs with (defaults filled, secrets masked)"
    )
    show.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    show.set_defaults(func=cmd_show)


def cmd_schema(args: argparse.Namespace) -> int:
    if args.which == "routes":
        schema = routes_json_schema()
    else:
        schema = NodeConfig.model_json_schema()
        schema["title"] = "ainode node.yaml"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    print(json.dumps(schema, indent=2, ensure_ascii=False))
    return 0


def masked(value: object, key: str = "") -> object:
    """``value`` with every secret under it replaced by ``MASK``."""
    if isinstance(value, dict):
        return {name: masked(item, str(name)) for name, item in value.items()}
    if isinstance(value, list):
        return [masked(item, key) for item in value]
    if value is not None and _SECRET_KEY.search(key) and not _REFERENCE_KEY.search(key):
        return MASK
    return value


def cmd_show(args: argparse.Namespace) -> int:
    try:
        config = load_node_config(args.config)
    except ConfigError as exc:
        print(f"ainode: bad configuration: {exc}", file=sys.stderr)
        return 2
    shown = masked(config.model_dump(mode="json"))
    print(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True), end="")
    return 0
