"""Login, logout and the two roles, as FastAPI dependencies every API route declares.

A request acts for a session (cookie ``ainode_session``: HttpOnly, SameSite=Strict, Secure
over HTTPS) or for an API token (``Authorization: Bearer``). A change made through a session
must carry the session's CSRF token in ``X-CSRF-Token``; a bearer token is not sent by a
browser on its own, so it needs none.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field

from node.audit.events import Outcome, UserAuthenticated
from node.console.context import ConsoleContext
from node.console.credentials import Principal
from node.console.settings import Role

SESSION_COOKIE = "ainode_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

router = APIRouter(prefix="/api", tags=["login"])


def console(request: Request) -> ConsoleContext:
    return request.app.state.console


def _authenticate(request: Request, context: ConsoleContext) -> Principal:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        principal = context.credentials.by_token(header[7:].strip())
        if principal is None:
            raise HTTPException(401, "unknown API token")
        return principal
    session = context.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if session is None:
        raise HTTPException(401, "log in first (POST /api/login)")
    if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != session.csrf:
        raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header (GET /api/me gives it)")
    return session.principal


def _requiring(role: Role):
    def dependency(
        request: Request, context: Annotated[ConsoleContext, Depends(console)]
    ) -> Principal:
        principal = _authenticate(request, context)
        if not principal.role.may(role):
            raise HTTPException(
                403, f"{principal.name} has the {principal.role} role; this needs {role}"
            )
        return principal

    return dependency


#: a logged-in viewer or admin (every read)
Viewer = Annotated[Principal, Depends(_requiring(Role.VIEWER))]
#: an admin (every action)
Admin = Annotated[Principal, Depends(_requiring(Role.ADMIN))]
Context = Annotated[ConsoleContext, Depends(console)]


class LoginRequest(BaseModel):
    """A user and password, or an API token."""

    username: str | None = Field(None, max_length=128)
    password: str | None = Field(None, max_length=1024)
    token: str | None = Field(None, max_length=1024)


class Me(BaseModel):
    user: str
    role: Role
    csrf_token: str | None = Field(None, description="send back in X-CSRF-Token on changes")
    show_patient_names: bool


@router.post("/login", response_model=Me)
def login(body: LoginRequest, request: Request, response: Response, context: Context) -> Me:
    if body.token:
        principal = context.credentials.by_token(body.token)
        name = "token"
    else:
        principal = context.credentials.by_password(body.username or "", body.password or "")
        name = body.username or ""
    address = request.client.host if request.client else None
    if principal is None:
        context.audit.record(
            UserAuthenticated(name, address, result=Outcome.MINOR_FAILURE, description="console")
        )
        raise HTTPException(401, "wrong user name, password or token")
    session = context.sessions.open(principal)
    response.set_cookie(
        SESSION_COOKIE,
        session.id,
        max_age=int(context.config.http.console.session_hours * 3600),
        httponly=True,
        samesite="strict",
        secure=context.secure,
        path="/",
    )
    context.audit.record(UserAuthenticated(principal.name, address, description="console"))
    return Me(
        user=principal.name,
        role=principal.role,
        csrf_token=session.csrf,
        show_patient_names=context.config.http.console.show_patient_names,
    )


@router.post("/logout", status_code=204)
def logout(request: Request, response: Response, context: Context, who: Viewer) -> None:
    context.sessions.close(request.cookies.get(SESSION_COOKIE, ""))
    response.delete_cookie(SESSION_COOKIE, path="/")
    address = request.client.host if request.client else None
    context.audit.record(UserAuthenticated(who.name, address, logout=True, description="console"))


@router.get("/me", response_model=Me)
def me(request: Request, context: Context, who: Viewer) -> Me:
    session = context.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    return Me(
        user=who.name,
        role=who.role,
        csrf_token=session.csrf if session else None,
        show_patient_names=context.config.http.console.show_patient_names,
    )
