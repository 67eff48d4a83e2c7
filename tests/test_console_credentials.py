"""Console logins: hashed passwords and tokens, the users file, sessions, ``ainode console``."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from node.console.credentials import (
    FIRST_TOKEN_FILE,
    Credentials,
    CredentialsError,
    Principal,
    add_entry,
    hash_password,
    hash_token,
)
from node.console.sessions import SessionStore
from node.console.settings import Role

REPO = Path(__file__).resolve().parent.parent


def test_password_hash_verifies_only_the_password(tmp_path: Path) -> None:
    stored = hash_password("correct horse battery")
    assert stored.startswith("scrypt$32768$8$1$") and "correct" not in stored
    assert hash_password("correct horse battery") != stored  # salted
    path = tmp_path / "users.yaml"
    add_entry(path, "users", {"name": "alice", "role": "admin", "password": stored})
    credentials = Credentials.load(path)
    assert credentials.by_password("alice", "correct horse battery") == Principal(
        "alice", Role.ADMIN
    )
    assert credentials.by_password("alice", "correct horse batterY") is None
    assert credentials.by_password("bob", "correct horse battery") is None


def test_tokens_are_kept_as_digests(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    add_entry(path, "tokens", {"name": "mon", "role": "viewer", "sha256": hash_token("s3cret")})
    assert "s3cret" not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    credentials = Credentials.load(path)
    assert credentials.by_token("s3cret") == Principal("token:mon", Role.VIEWER)
    assert credentials.by_token("s3cret ") is None


def test_first_start_makes_one_admin_token_readable_by_the_node_only(tmp_path: Path) -> None:
    path = tmp_path / "console" / "users.yaml"
    credentials = Credentials.load_or_create(path)
    token_file = path.parent / FIRST_TOKEN_FILE
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert credentials.by_token(token) == Principal("token:admin", Role.ADMIN)
    again = Credentials.load_or_create(path)  # a second start keeps the file and the token
    assert again.by_token(token_file.read_text().strip()) is not None
    assert token_file.read_text().strip() == token


def test_a_broken_users_file_says_what_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": [{"name": "alice", "role": "root", "password": "x"}]}))
    with pytest.raises(CredentialsError, match="role \\(viewer or admin\\)"):
        Credentials.load(path)


def test_roles() -> None:
    assert Role.ADMIN.may(Role.ADMIN) and Role.ADMIN.may(Role.VIEWER)
    assert Role.VIEWER.may(Role.VIEWER) and not Role.VIEWER.may(Role.ADMIN)


def test_sessions_are_bounded_and_expire() -> None:
    store = SessionStore(lifetime_s=3600, max_sessions=2)
    who = Principal("alice", Role.VIEWER)
    first, second, third = (store.open(who) for _ in range(3))
    assert store.get(first.id) is None  # the oldest went when the third came
    assert store.get(second.id) == second and store.get(third.id) == third
    assert len({first.csrf, second.csrf, third.csrf}) == 3
    store.close(second.id)
    assert store.get(second.id) is None
    expired = SessionStore(lifetime_s=-1, max_sessions=2).open(who)
    assert SessionStore(lifetime_s=-1, max_sessions=2).get(expired.id) is None


def _ainode(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], input=stdin, capture_output=True, text=True, cwd=REPO
    )


def test_console_cli_adds_users_and_tokens(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")}}))
    users = tmp_path / "data" / "console" / "users.yaml"
    short = _ainode(
        "console", "user", "alice", "--password-stdin", "--config", str(config), stdin="short\n"
    )
    assert short.returncode == 2 and "12 characters" in short.stderr and not users.exists()
    done = _ainode(
        "console", "user", "alice", "--role", "admin", "--password-stdin", "--config", str(config),
        stdin="correct horse battery\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = _ainode("console", "token", "monitoring", "--config", str(config))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    credentials = Credentials.load(users)
    assert credentials.by_password("alice", "correct horse battery") == Principal(
        "alice", Role.ADMIN
    )
    assert credentials.by_token(token) == Principal("token:monitoring", Role.VIEWER)
    assert token not in users.read_text() and "correct horse" not in users.read_text()
