"""What the console's API modules share: the list limit and how an action is refused."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

from fastapi import HTTPException, Query

from node.console.context import ConsoleContext
from node.console.credentials import Principal

#: ``?limit=``: how many rows a list answers (newest first); pages ask for more when scrolled
Limit = Annotated[int, Query(ge=1, le=10000, description="at most this many rows, newest first")]


def refuse(
    context: ConsoleContext,
    who: Principal,
    action: str,
    target: str,
    status: int,
    detail: str,
    before: Any = None,
) -> NoReturn:
    """Record a refused action in the action log (its outcome is the reason), then answer it.

    The log is the console's history, so an action that did nothing is still in it: who tried
    what, and why it was refused.
    """
    context.actions.record(who.name, action, target, outcome=detail, before=before)
    raise HTTPException(status, detail)
