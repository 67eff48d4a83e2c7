"""The console's part of node.yaml (``http.console``) and the roles a login carries."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field

from node.config_fields import Section


class Role(StrEnum):
    """``viewer`` reads every page; ``admin`` may also act (retry, cancel, promote, edit)."""

    VIEWER = "viewer"
    ADMIN = "admin"

    def may(self, needed: Role) -> bool:
        return self is Role.ADMIN or needed is Role.VIEWER


class ConsoleSettings(Section):
    """Who may log in and what the pages show."""

    enabled: bool = Field(True, description="serve /api and the web console beside /status")
    users_file: Path | None = Field(
        None,
        description=(
            "YAML of users (scrypt password hashes) and API tokens (SHA-256), written by "
            "`ainode console user add` / `token add`; empty = <data_dir>/console/users.yaml, "
            "created on first start with one admin token"
        ),
    )
    show_patient_names: bool = Field(
        False, description="show patient names and IDs on the pages (UIDs and AE titles always)"
    )
    session_hours: float = Field(12.0, gt=0, le=168, description="a login lasts this long")
    max_sessions: int = Field(256, ge=1, description="oldest login is dropped beyond this")
