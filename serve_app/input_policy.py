"""What every request's text must be, checked once for all routes: no NUL, valid Unicode, finite numbers.

SQLite, bcrypt, subprocess arguments and the JSON answers choke on NUL characters, lone UTF-16
surrogates (JSON's "\\ud800") or NaN/Infinity (which Python's JSON parser accepts). An app-wide
dependency refuses them in path and query parameters, form fields and JSON bodies with a 422
that names where they were, before any model or route sees them.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

# Deeper JSON than this is no request of ours; the walk below is iterative either way.
MAX_DEPTH = 64


def text_problem(value: str) -> str | None:
    """Why this text cannot be taken, or None."""
    if "\x00" in value:
        return "text must not contain NUL characters (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "text must be valid Unicode (a lone UTF-16 surrogate such as \\ud800 is not)"
    return None


def problems(value: Any, loc: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Validation errors (FastAPI's shape) for every bad string, key or number inside `value`."""
    found = []
    stack = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if len(where) > MAX_DEPTH:
            found.append(_error(where, "value is nested too deeply"))
        elif isinstance(item, str):
            if (why := text_problem(item)) is not None:
                found.append(_error(where, why))
        elif isinstance(item, float):
            if not math.isfinite(item):
                found.append(_error(where, "number must be finite (no NaN or Infinity)"))
        elif isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(key, str) and (why := text_problem(key)) is not None:
                    found.append(_error(where, f"a key: {why}"))
                    key = _printable(key)
                stack.append((sub, (*where, key)))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, (*where, i)) for i, sub in enumerate(item))
    return found


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _error(loc: tuple[str | int, ...], msg: str) -> dict[str, Any]:
    return {"type": "value_error", "loc": loc, "msg": msg, "input": None}


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type.startswith("application/") and content_type.endswith(("/json", "+json"))


def _is_form(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type in ("application/x-www-form-urlencoded", "multipart/form-data")


async def check_request(request: Request) -> None:
    """App-wide dependency: 422 naming each place where the request's text is unusable."""
    found = problems(dict(request.path_params), ("path",))
    found += problems(dict(request.query_params), ("query",))
    # A route with a body has had FastAPI parse (and cache) it before dependencies run, so these
    # calls read no more; a body that does not parse is one the route does not take: ignored.
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        try:
            if _is_json(request) and await request.body():
                found += problems(await request.json(), ("body",))
            elif _is_form(request):
                form = await request.form()
                found += problems({k: v for k, v in form.multi_items() if isinstance(v, str)}, ("body",))
        except (ValueError, RecursionError, AssertionError):
            pass
    if found:
        raise RequestValidationError(found)
