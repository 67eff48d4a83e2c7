"""What every node.yaml section shares: the strict, frozen base model and AE title checks."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

AE_TITLE_PATTERN = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII, no backslash


def check_ae_title(value: str) -> str:
    """The title without padding; ValueError saying what a title may be."""
    if not AE_TITLE_PATTERN.match(value) or not value.strip():
        raise ValueError(
            f"AE title {value!r} must be 1-16 printable ASCII characters without a backslash"
        )
    return value.strip()


class Section(BaseModel):
    """A node.yaml section: a typo is an error naming the field, and settings never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)
