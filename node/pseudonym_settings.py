"""``pseudonymisation:`` in node.yaml: the site's secret and PS3.15 options, as a policy.

Without a ``secret_file`` the node makes one in its data folder on first use (32 random bytes,
readable by the node's user only) and keeps it: the secret makes pseudonyms unguessable, the
``pseudonyms`` table keeps them stable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from node.pseudonym import PseudonymisationPolicy
from node.pseudonym_profile import ProfileOption

__all__ = ["PseudonymisationSettings", "site_policy"]

GENERATED_SECRET = "pseudonym.key"


class PseudonymisationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_file: Path | None = None
    options: tuple[ProfileOption, ...] = ()


def site_policy(settings: PseudonymisationSettings, data_dir: Path) -> PseudonymisationPolicy:
    """The policy to pseudonymise with; the generated secret is made once, atomically."""
    path = settings.secret_file
    if path is None:
        path = Path(data_dir) / GENERATED_SECRET
        if not path.exists():
            temp = path.with_name(f".{path.name}.{os.getpid()}")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(secrets.token_bytes(32))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temp, path)  # never replaces a secret another process made first
            except FileExistsError:
                pass
            finally:
                temp.unlink(missing_ok=True)
    return PseudonymisationPolicy.from_secret_file(path, settings.options)
