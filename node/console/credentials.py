"""Console logins: users with scrypt password hashes and API tokens kept as SHA-256 digests.

The file holds no secret in the clear, so a copy of it (a backup, a support bundle) lets no one
in. On a node's first start without a users file, one admin token is made and written beside
it, readable by the node's user only, so ``make run`` has a way in without a default password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from node.console.settings import Role

LOGGER = logging.getLogger(__name__)

#: scrypt cost (RFC 7914): 2**15 x 8 blocks is 32 MiB and ~0.1 s a login on a server core
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
FIRST_TOKEN_FILE = "admin-token"

__all__ = ["Credentials", "CredentialsError", "Principal", "hash_password", "hash_token"]


class CredentialsError(ValueError):
    """The users file cannot be read or says something invalid."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a user or a named token, and its role."""

    name: str
    role: Role


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64): the cost travels with the hash."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 2**20
    )
    encode = base64.b64encode
    return (
        f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(digest).decode()}"
    )


def _password_matches(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 2**20,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _User:
    name: str
    role: Role
    password: str


@dataclass(frozen=True)
class _Token:
    name: str
    role: Role
    sha256: str


class Credentials:
    """The users file, read once at start (``ainode console`` edits take effect on restart)."""

    def __init__(self, users: tuple[_User, ...], tokens: tuple[_Token, ...], path: Path) -> None:
        self._users = {user.name: user for user in users}
        self._tokens = tokens
        self.path = path

    @classmethod
    def load(cls, path: Path) -> Credentials:
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CredentialsError(f"cannot read the console users file {path}: {exc}") from exc
        if not isinstance(document, dict):
            raise CredentialsError(f"{path}: expected a mapping with users: and tokens:")
        try:
            users = tuple(
                _User(str(u["name"]), Role(u["role"]), str(u["password"]))
                for u in document.get("users") or ()
            )
            tokens = tuple(
                _Token(str(t["name"]), Role(t["role"]), str(t["sha256"]).lower())
                for t in document.get("tokens") or ()
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CredentialsError(
                f"{path}: each user needs name, role (viewer or admin) and password (a hash "
                f"from `ainode console user add`); each token name, role and sha256: {exc}"
            ) from exc
        return cls(users, tokens, path)

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """The file, or (first start) a new one holding one admin token written beside it."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            token = secrets.token_urlsafe(32)
            add_entry(
                path, "tokens", {"name": "admin", "role": "admin", "sha256": hash_token(token)}
            )
            token_file = path.parent / FIRST_TOKEN_FILE
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(token + "\n")
            LOGGER.warning(
                "console: no users file; made %s with one admin token, which is in %s "
                "(log in with it, then add users with `ainode console user add`)",
                path,
                token_file,
            )
        return cls.load(path)

    def by_password(self, name: str, password: str) -> Principal | None:
        user = self._users.get(name)
        if user is None:
            _password_matches(password, hash_password("x"))  # same time for unknown names
            return None
        return (
            Principal(user.name, user.role) if _password_matches(password, user.password) else None
        )

    def by_token(self, token: str) -> Principal | None:
        digest = hash_token(token)
        for entry in self._tokens:
            if hmac.compare_digest(entry.sha256, digest):
                return Principal(f"token:{entry.name}", entry.role)
        return None


def add_entry(path: Path, section: str, entry: dict[str, str]) -> None:
    """Add or replace (by name) one user or token; the file is rewritten atomically, 0600."""
    document: dict = {}
    if path.exists():
        document = yaml.safe_load(path.read_text()) or {}
    entries = [e for e in document.get(section) or () if e.get("name") != entry["name"]]
    document[section] = [*entries, entry]
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(document, out, sort_keys=False)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
