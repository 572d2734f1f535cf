"""How the console answers: its templates (and their filters) under strict security headers, and its errors as pages."""

from __future__ import annotations

import shlex
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pydantic
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from dcl_core import errors
from serve_app import errors as http_errors
from serve_app.console import session as sess

T = TypeVar("T")

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class ConsoleError(Exception):
    """A failure to show in the page: the platform's own message and status."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


def invalid_form(exc: pydantic.ValidationError) -> ConsoleError:
    """A 422 naming each field of the form that the model refused, and why."""
    message = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
    return ConsoleError(422, message)


async def console_error(request: Request, exc: Exception) -> HTMLResponse:
    """The app's handler for ConsoleError: the error page, or the error fragment for htmx."""
    assert isinstance(exc, ConsoleError)  # the one exception it is registered for
    name = "_error.html" if sess.is_htmx(request) else "error.html"
    return render(request, name, None, status_code=exc.status_code, message=exc.message)


async def call(ref: Awaitable[T]) -> T:
    """Awaits an actor call; the control plane's own errors become a ConsoleError with their status."""
    try:
        return await ref
    except Exception as exc:
        cause = http_errors.unwrap(exc)
        if isinstance(cause, errors.DClusterError):
            raise ConsoleError(cause.http_status, cause.message) from None
        raise


def render(
    request: Request, name: str, session: sess.ConsoleSession | None, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context.update(
        user=session.principal if session else None, csrf=session.csrf_token if session else "", now=time.time()
    )
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code, headers=SECURITY_HEADERS)


# --- filters ----------------------------------------------------------------------------


def _age(seconds: float | None) -> str:
    """A span for people: '12 s', '3 min', '2 h 05 min', '1 d 3 h'."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def _utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def _mask(text: str, secret: str) -> str:
    """The text with the secret shortened to its first characters, for screens and screenshots."""
    return text.replace(secret, secret[:6] + "…") if secret else text


TEMPLATES.env.filters.update(age=_age, utc=_utc, shquote=shlex.quote, mask=_mask)
