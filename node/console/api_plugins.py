"""Plugins, the shadow report, routes.yaml (read, check, edit, explain) and promotion.

Every change to routes.yaml goes the same way: the new text is checked as ``ainode routes
check`` would (installed plugins, node.yaml's destinations), written atomically only when it
passes and only if the file is still the one the operator saw (``expected_digest``), then
reloaded as on SIGHUP. The action log keeps who, when and the text before and after.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from models.discovery import discover
from models.shadow import ShadowReport
from node.audit.events import ConfigurationChanged, Outcome
from node.console.auth import Admin, Context, Viewer
from node.console.context import ConsoleContext
from node.plugins_cli import device_label
from node.routing.catalog import destination_flags, installed_plugins
from node.routing.cli import explain_indexed_study
from node.shadow import agreement_report, masks_dir_for
from routers.check import RoutesFileError, check_text, load_route_table
from routers.promotion import (
    PromotionRefused,
    RoutesAction,
    RoutesChange,
    production_versions,
    promote,
    replace_text,
    rollback,
    shadow_versions,
    text_digest,
)

router = APIRouter(prefix="/api", tags=["plugins and routes"])


class PluginVersion(BaseModel):
    name: str
    version: str
    runner: str
    device: str
    production: bool = Field(description="a production route runs this version")
    shadow: bool = Field(description="an enabled shadow route runs this version")


class CheckResult(BaseModel):
    ok: bool
    errors: list[str]


class RoutesFile(BaseModel):
    path: str
    text: str
    digest: str
    check: CheckResult


class RoutesText(BaseModel):
    text: str = Field(max_length=1_000_000)


class RoutesEdit(RoutesText):
    expected_digest: str = Field(description="the digest GET /api/routes gave: no lost edits")


class Written(BaseModel):
    digest: str


class PromotionRequest(BaseModel):
    version: str | None = Field(None, description="rollback: empty = the version last replaced")
    expected_digest: str | None = None


class RoutesChangeOut(BaseModel):
    action: RoutesAction
    plugin: str
    version: str | None
    previous: dict[str, str]
    routes_changed: list[str]
    before_digest: str
    after_digest: str


class Explanation(BaseModel):
    study_instance_uid: str
    text: str


def _read_routes(context: ConsoleContext) -> str:
    try:
        return context.config.routes_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HTTPException(404, f"cannot read {context.config.routes_file}: {exc}") from exc


def _check(context: ConsoleContext, text: str) -> CheckResult:
    config = context.config
    report = check_text(
        text, str(config.routes_file), installed_plugins(config), destination_flags(config)
    )
    return CheckResult(ok=report.ok, errors=[d.format() for d in report.diagnostics])


def _validator(context: ConsoleContext):
    def validate(text: str) -> None:
        result = _check(context, text)
        if not result.ok:
            raise ValueError("\n".join(result.errors))

    return validate


def _applied(context: ConsoleContext, user: str, what: str) -> None:
    """The file changed: reload it now, as SIGHUP would, and say so in the audit trail."""
    context.audit.record(
        ConfigurationChanged(str(context.config.routes_file), Outcome.SUCCESS, f"{what} by {user}")
    )
    if context.reload_routes is not None:
        context.reload_routes()


@router.get("/plugins", response_model=list[PluginVersion])
def plugins(context: Context, who: Viewer) -> list[PluginVersion]:
    config = context.config
    try:
        text = config.routes_file.read_text(encoding="utf-8")
    except OSError:
        text = "routes: []\n"
    production = production_versions(text)
    shadow = shadow_versions(text)
    catalog = discover(config.plugin_dirs)
    newest = {m.name: m.version for m in catalog.manifests}  # name then version order
    answer = []
    for manifest in catalog.manifests:
        pins = production.get(manifest.name, ())
        runs_in_production = manifest.version in pins or (
            None in pins and newest[manifest.name] == manifest.version
        )
        answer.append(
            PluginVersion(
                name=manifest.name,
                version=manifest.version,
                runner=manifest.runner.value,
                device=device_label(manifest, config.devices.gpus),
                production=runs_in_production,
                shadow=manifest.version in shadow.get(manifest.name, ()),
            )
        )
    return answer


@router.get("/shadow", response_model=ShadowReport)
def shadow_report(context: Context, who: Viewer, plugin: str | None = None) -> ShadowReport:
    with context.database() as conn:
        return agreement_report(conn, masks_dir_for(context.config.storage.data_dir), plugin=plugin)


def _change(
    context: ConsoleContext, who, action: str, plugin: str, body: PromotionRequest, run
) -> RoutesChangeOut:
    target = f"{plugin}@{body.version}" if body.version else plugin
    try:
        change: RoutesChange = run()
    except (PromotionRefused, ValueError) as exc:
        context.actions.record(who.name, action, target, outcome=str(exc))
        raise HTTPException(409, str(exc)) from exc
    context.actions.record(
        who.name,
        action,
        f"{plugin}@{change.version}" if change.version else plugin,
        before={"text": change.before_text, "production": change.previous},
        after={"text": change.after_text, "version": change.version},
    )
    _applied(context, who.name, f"{action} {plugin}")
    answer = asdict(change)
    answer["routes_changed"] = list(change.routes_changed)
    return RoutesChangeOut.model_validate(answer)


@router.post("/plugins/{name}/promote", response_model=RoutesChangeOut)
def promote_plugin(
    name: str, body: PromotionRequest, context: Context, who: Admin
) -> RoutesChangeOut:
    """Pin production to the shadow version, disable its shadow route, reload."""
    if not body.version:
        context.actions.record(who.name, "plugin.promote", name, outcome="no version given")
        raise HTTPException(422, "give the shadow version to promote")
    path, validate = context.config.routes_file, _validator(context)
    return _change(
        context, who, "plugin.promote", name, body,
        lambda: promote(path, name, body.version, validate, body.expected_digest),
    )  # fmt: skip


@router.post("/plugins/{name}/rollback", response_model=RoutesChangeOut)
def rollback_plugin(
    name: str, body: PromotionRequest, context: Context, who: Admin
) -> RoutesChangeOut:
    """Pin production back (to ``version``, or to what the last promotion replaced)."""
    version = body.version or _replaced_by_last_promotion(context, name)
    path, validate = context.config.routes_file, _validator(context)
    return _change(
        context, who, "plugin.rollback", name, body.model_copy(update={"version": version}),
        lambda: rollback(path, name, version, validate, body.expected_digest),
    )  # fmt: skip


def _replaced_by_last_promotion(context: ConsoleContext, plugin: str) -> str | None:
    for record in context.actions.newest(1000):
        if record.action != "plugin.promote" or record.outcome != "ok":
            continue
        if record.target.partition("@")[0] != plugin:
            continue
        previous = (record.before or {}).get("production") or {}
        for ref in previous.values():
            return ref.partition("@")[2] or None
    raise HTTPException(
        409, f"no promotion of {plugin} on record: give the version to roll back to"
    )


@router.get("/routes", response_model=RoutesFile)
def routes(context: Context, who: Viewer) -> RoutesFile:
    text = _read_routes(context)
    return RoutesFile(
        path=str(context.config.routes_file),
        text=text,
        digest=text_digest(text),
        check=_check(context, text),
    )


@router.post("/routes/check", response_model=CheckResult)
def check_routes(body: RoutesText, context: Context, who: Viewer) -> CheckResult:
    """Check a text as ``ainode routes check`` would; nothing is written."""
    return _check(context, body.text)


@router.put("/routes", response_model=Written)
def edit_routes(body: RoutesEdit, context: Context, who: Admin) -> Written:
    path = context.config.routes_file
    before = _read_routes(context)
    result = _check(context, body.text)
    if not result.ok:
        context.actions.record(who.name, "routes.edit", str(path), outcome="refused: check failed")
        raise HTTPException(422, "\n".join(result.errors))
    try:
        replace_text(path, body.text, _validator(context), body.expected_digest)
    except (PromotionRefused, ValueError) as exc:
        context.actions.record(who.name, "routes.edit", str(path), outcome=str(exc))
        raise HTTPException(409, str(exc)) from exc
    context.actions.record(
        who.name, "routes.edit", str(path), before={"text": before}, after={"text": body.text}
    )
    _applied(context, who.name, "edited")
    return Written(digest=text_digest(body.text))


@router.get("/routes/explain/{study_uid}", response_model=Explanation)
def explain(study_uid: str, context: Context, who: Viewer) -> Explanation:
    """The same text as ``ainode routes explain STUDY_UID``."""
    try:
        table = load_route_table(Path(context.config.routes_file))
    except RoutesFileError as exc:
        raise HTTPException(409, f"routes.yaml has problems; fix them first:\n{exc}") from exc
    text = explain_indexed_study(context.config, table, study_uid)
    if text is None:
        raise HTTPException(404, f"no study {study_uid} in the index")
    return Explanation(study_instance_uid=study_uid, text=text)
