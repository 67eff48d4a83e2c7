"""How the output builders refuse findings they cannot write, as one exception family.

A job catches ``OutputBuildError`` and fails at once with its message (the same inputs would
fail the same way again); anything else a builder raises (TypeError, AttributeError,
KeyError, …) is a bug and reaches the job's error as a crash with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from models.api import PluginInput

try:  # highdicom's table of the IODs it can copy modules from; private, so checked for
    from highdicom._standard_utils import get_sop_class_iod_map
except ImportError:  # another highdicom: its KeyError for such a source then is a crash
    get_sop_class_iod_map = None  # type: ignore[assignment]
    logging.getLogger(__name__).warning(
        "highdicom has no _standard_utils.get_sop_class_iod_map: sources of SOP classes it "
        "does not know fail their jobs as crashes, not as refusals"
    )

__all__ = ["OutputBuildError", "check_source_classes", "refused_by_highdicom"]


class OutputBuildError(ValueError):
    """These findings cannot be written as the output asked for, over this source."""


@contextmanager
def refused_by_highdicom(
    what: str, error: type[OutputBuildError] = OutputBuildError
) -> Iterator[None]:
    """highdicom refuses content with ValueError: re-raise it as ``error`` naming ``what``
    could not be built. Only ValueError: highdicom's other exceptions are bugs of ours."""
    try:
        yield
    except OutputBuildError:
        raise
    except ValueError as exc:
        raise error(f"highdicom cannot build {what} ({type(exc).__name__}: {exc})") from exc


def check_source_classes(source: PluginInput, what: str) -> None:
    """Refuse a source of a SOP class highdicom does not know (a vendor's private one):
    highdicom copies modules by the source's IOD and raises KeyError for it otherwise."""
    if get_sop_class_iod_map is None:
        return
    known = get_sop_class_iod_map()
    for header in source.headers:
        sop_class = str(header.get("SOPClassUID", ""))
        if sop_class not in known:
            raise OutputBuildError(
                f"cannot build {what}: the source's SOP Class {sop_class or '(none)'} is not a "
                "standard one that highdicom can reference"
            )
