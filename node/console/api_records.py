"""The node at a glance, latency per product and the action log: what a manager reads.

``/api/summary`` is ``/status``'s snapshot (one read transaction) behind a login;
``/api/latency`` is ``node.console.latency.product_latencies`` over a window, the numbers the
``ainode_product_latency_seconds`` histogram is made of; ``/api/actions`` is the console's
own history, newest first.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from node.console.api_common import Limit
from node.console.auth import Context, Viewer
from node.console.latency import WINDOWS, product_latencies
from node.status import read_status

router = APIRouter(prefix="/api", tags=["records"])


class Summary(BaseModel):
    """Counts by state, as ``/status`` gives them: no patient data."""

    version: str = Field(description="ainode's version")
    ae_title: str
    instances: int
    stored_bytes: int
    studies_by_state: dict[str, int]
    jobs_by_state: dict[str, int]
    outbox_by_destination: dict[str, dict[str, int]]
    durability: str = Field(description="what a C-STORE Success promises: fsync or os")
    journal: bool = Field(description="whether a Success waits for the write-ahead journal")


class Latency(BaseModel):
    """A product's delay from the last image received to its results acknowledged."""

    plugin: str
    mode: str = Field(description="production or shadow")
    modality: str | None = Field(description="of the series the product ran on")
    jobs: int
    p50_s: float
    p95_s: float
    max_s: float


class Action(BaseModel):
    """One console action: who, when, on what, how it went, and what it changed."""

    at: float
    user: str
    action: str = Field(description="e.g. job.retry, study.reroute, plugin.promote")
    target: str
    outcome: str = Field(description="ok, or why it was refused")
    before: Any = None
    after: Any = None


@router.get("/summary", response_model=Summary, summary="counts by state (as /status)")
def summary(context: Context, who: Viewer) -> Summary:
    with context.database() as conn:
        status = read_status(conn, context.config.listener.ae_title, **context.storage_mode)
    return Summary(**asdict(status))


@router.get("/latency", response_model=list[Latency], summary="delay per product over a window")
def latency(context: Context, who: Viewer, window: Literal["day", "week"] = "day") -> list[Latency]:
    with context.database() as conn:
        products = product_latencies(conn, WINDOWS[window])
    return [Latency(**asdict(product)) for product in products]


@router.get("/actions", response_model=list[Action], summary="the action log, newest first")
def actions(context: Context, who: Viewer, limit: Limit = 100) -> list[Action]:
    return [Action(**asdict(record)) for record in context.actions.newest(limit)]
