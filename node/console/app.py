"""The HTTP application of ``ainode serve``: the REST API under /api (OpenAPI at
/api/openapi.json), the web console under /console, and /status, /metrics and /healthz where
they have always been (no login: counts only, no patient data)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from node import __version__
from node.config import ExecutorKind
from node.console import auth
from node.console.context import ConsoleContext
from node.console.latency import LatencyCollector
from node.status import RecordCollector, read_status

STATIC = Path(__file__).resolve().parent / "static"
#: the pages load nothing from elsewhere, and nothing may frame them
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(context: ConsoleContext) -> FastAPI:
    app = FastAPI(
        title="ainode",
        version=__version__,
        description="DICOM AI router: studies, jobs, results, deliveries, plugins and routes.",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN: not here
        redoc_url=None,
    )
    app.state.console = context
    registry = CollectorRegistry(auto_describe=False)
    database = context.config.storage.database_path
    registry.register(RecordCollector(database, context.config.listener.ae_title))
    registry.register(LatencyCollector(database))
    config = context.config
    if config.jobs.executor is ExecutorKind.CELERY:
        from node.jobs.remote.metrics import CeleryCollector

        celery = config.jobs.celery
        registry.register(CeleryCollector(database, celery.broker_url(), config.plugin_dirs))

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        if context.secure:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        return response

    @app.exception_handler(sqlite3.Error)
    async def database_unavailable(request: Request, exc: sqlite3.Error) -> Response:
        return PlainTextResponse(f"database unavailable: {exc}\n", status_code=503)

    @app.get("/status", tags=["monitoring"], summary="counts by state (JSON)")
    def status() -> Response:
        with context.database() as conn:
            snapshot = read_status(conn, context.config.listener.ae_title, **context.storage_mode)
        body = json.dumps(asdict(snapshot), indent=2, sort_keys=True) + "\n"
        return Response(body, media_type="application/json")

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus text format")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["monitoring"], summary="200 while the database answers")
    def healthz() -> PlainTextResponse:
        with context.database() as conn:
            conn.execute("SELECT 1 FROM studies LIMIT 1").fetchall()
        return PlainTextResponse("ok\n")

    app.include_router(auth.router)
    for router in api_routers():
        app.include_router(router)
    if context.config.jobs.executor is ExecutorKind.CELERY:
        from node.jobs.remote import node_api

        app.include_router(node_api.router)

    if context.config.http.console.enabled:
        app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/console/")

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            detail = getattr(exc, "detail", "not found")
            return JSONResponse({"detail": detail}, status_code=404)
        return PlainTextResponse("not found: try /console/, /status or /api/openapi.json\n", 404)

    return app


def api_routers() -> list:
    """The API's routers, one module per area."""
    from node.console import api_jobs, api_plugins, api_records, api_studies

    return [api_records.router, api_studies.router, api_jobs.router, api_plugins.router]
