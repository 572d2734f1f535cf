"""The console's sign-in: the API's JWT in an HttpOnly SameSite=Strict cookie, and its CSRF checks.

Only the console's own routes read this cookie; the /v1 API takes a bearer header and nothing else,
so a browser that carries the cookie cannot be made to call the API. Every console action also
needs the CSRF token (a hash of the session's JWT, written into the page and sent back by htmx as
a header) and, when the browser names one, an Origin of the platform itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import urllib.parse
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response

from actors.access import auth
from dcl_core import errors
from serve_app import deps

COOKIE_NAME = "dcluster_console"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_PATH = "/login"


@dataclasses.dataclass(frozen=True)
class ConsoleSession:
    principal: auth.Principal
    token: str

    @property
    def csrf_token(self) -> str:
        return csrf_token_for(self.token)


def csrf_token_for(token: str) -> str:
    """Derived from the session's JWT: unguessable without it, and the JWT cannot be recovered from it."""
    return hashlib.sha256(b"dcluster-console-csrf:" + token.encode()).hexdigest()


def _https(request: Request) -> bool:
    # Behind a TLS-terminating proxy the platform itself sees http; the proxy says what the browser used.
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def set_cookie(response: Response, request: Request, token: str, max_age_s: int) -> None:
    response.set_cookie(
        COOKIE_NAME, token, max_age=max_age_s, path="/", httponly=True, samesite="strict", secure=_https(request)
    )


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def sign_in_needed(request: Request, why: str) -> HTTPException:
    """Pages go to the sign-in form (303); htmx requests are told to navigate there (HX-Redirect)."""
    if is_htmx(request):
        return HTTPException(401, detail=why, headers={"HX-Redirect": LOGIN_PATH})
    return HTTPException(303, detail=why, headers={"Location": LOGIN_PATH})


async def optional_session(request: Request) -> ConsoleSession | None:
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    try:
        principal = (await deps.token_issuer(request)).verify(token)
    except errors.Unauthenticated:
        return None
    if principal.cluster_id is not None:  # a node-provider credential is never a console session
        return None
    return ConsoleSession(principal, token)


async def current_session(
    request: Request, session: Annotated[ConsoleSession | None, Depends(optional_session)]
) -> ConsoleSession:
    if session is None:
        raise sign_in_needed(request, "sign in to the console")
    return session


def check_origin(request: Request) -> None:
    """A browser's Origin (or, without it, Referer) must name the platform's own host and port; 403 otherwise.

    The scheme is not compared: behind a TLS-terminating proxy the page is https and the platform sees http.
    """
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin is None:
        return  # not a browser, or one that names no origin: the CSRF token alone decides
    if urllib.parse.urlsplit(origin).netloc != request.headers.get("host", ""):
        raise HTTPException(403, detail=f"cross-origin request refused (from {origin})")


async def acting_session(
    request: Request, session: Annotated[ConsoleSession, Depends(current_session)]
) -> ConsoleSession:
    """For every console action: a session, a same-origin request and the session's CSRF token."""
    check_origin(request)
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
        raise HTTPException(403, detail="missing or wrong CSRF token: reload the console page")
    return session


Session = Annotated[ConsoleSession, Depends(current_session)]
OptionalSession = Annotated[ConsoleSession | None, Depends(optional_session)]
ActingSession = Annotated[ConsoleSession, Depends(acting_session)]
