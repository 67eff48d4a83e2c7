"""``ainode console``: add users and API tokens to the console's users file.

Passwords are read from the terminal (or one line of stdin with ``--password-stdin``) and only
their scrypt hash is written; a new token is printed once and only its SHA-256 kept. The
running node reads the file at start: restart it (or wait for the next start) to apply.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from pathlib import Path

from node.config import DEFAULT_CONFIG, ConfigError, load_node_config
from node.console.credentials import add_entry, hash_password, hash_token
from node.console.settings import Role


def register(subparsers: argparse._SubParsersAction) -> None:
    console = subparsers.add_parser("console", help="web console users and API tokens")
    commands = console.add_subparsers(dest="console_command", required=True, metavar="ACTION")
    user = commands.add_parser("user", help="add or replace a user (password from the terminal)")
    user.add_argument("name")
    user.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    user.add_argument("--password-stdin", action="store_true", help="read it from one stdin line")
    user.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    user.set_defaults(func=cmd_user)
    token = commands.add_parser("token", help="make an API token and print it once")
    token.add_argument("name", help="what uses it, e.g. monitoring")
    token.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    token.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    token.set_defaults(func=cmd_token)


def _users_file(config_path: Path) -> Path | None:
    try:
        config = load_node_config(config_path)
    except ConfigError as exc:
        print(f"ainode: bad configuration: {exc}", file=sys.stderr)
        return None
    return config.http.console.users_file or config.storage.data_dir / "console" / "users.yaml"


def cmd_user(args: argparse.Namespace) -> int:
    path = _users_file(args.config)
    if path is None:
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("ainode: the two passwords differ; nothing written", file=sys.stderr)
            return 2
    if len(password) < 12:
        print("ainode: use a password of 12 characters or more; nothing written", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    entry = {"name": args.name, "role": args.role, "password": hash_password(password)}
    add_entry(path, "users", entry)
    print(f"{args.name} ({args.role}) written to {path}; restart the node to apply")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    path = _users_file(args.config)
    if path is None:
        return 2
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    add_entry(path, "tokens", {"name": args.name, "role": args.role, "sha256": hash_token(token)})
    print(token)
    print(f"token {args.name} ({args.role}) written to {path}; restart the node to apply; "
          "the token is shown this once", file=sys.stderr)  # fmt: skip
    return 0
