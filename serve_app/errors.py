"""Maps errors to HTTP answers in one place, and caps request bodies."""

from __future__ import annotations

import logging
import math
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.db import busy
from dcl_core import errors

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, and what to do about it")


class ValidationProblem(BaseModel):
    loc: list[str | int] = Field(description="Where: path, query or body, then the field")
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorBody(BaseModel):
    detail: list[ValidationProblem]


_MEANINGS = {
    400: "The request is not what the route takes: the detail says why",
    401: "Missing, expired or invalid bearer token: sign in at POST /v1/token",
    403: "The account's role (or the token's scope) may not do this",
    404: "No such resource, or it belongs to another account",
    409: "Conflicts with the current state (name taken, capacity short, lifetime past the maximum)",
    413: "The request body is over 1 MiB",
    422: "A parameter or the body is invalid: each problem with where it is",
    426: "The agent speaks another protocol version than the platform: the detail names both",
    429: "A rate limit was hit: the detail names it, Retry-After says when to come back",
    502: "The cluster's node did not answer in time, or answered more than the proxy passes on",
    503: "The control plane is starting or restarting, or its database is busy: retry after Retry-After seconds",
}

# What any route can answer: an unparsable body, one over the size limit, invalid input, a restarting control plane.
COMMON_ERRORS = (400, 413, 422, 503)


def documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error codes, each with its meaning and body model."""
    return {
        code: {"description": _MEANINGS[code], "model": ValidationErrorBody if code == 422 else ErrorBody}
        for code in codes
    }


def unwrap(exc: BaseException) -> BaseException:
    # An exception raised inside an actor arrives wrapped; its cause holds the fields.
    return getattr(exc, "cause", None) or exc


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    error = unwrap(exc)
    if not isinstance(error, errors.DClusterError):  # registered for DClusterError: only those (or wrapped) get here
        return await answer_exception(request, exc)
    headers = {}
    if isinstance(error, errors.RateLimited):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, errors.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"detail": error.message}, status_code=error.http_status, headers=headers)


async def answer_exception(request: Request, exc: Exception) -> JSONResponse:
    """The answer to any exception a route raised: a domain error's own, 503 for a restarting
    control plane or a busy database, else 500 (logged)."""
    cause = unwrap(exc)
    if isinstance(cause, errors.DClusterError):
        return await _domain_error(request, cause)
    if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
        logger.warning("control-plane actor unavailable for %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": "the control plane is restarting; retry in a few seconds"},
            status_code=503,
            headers={"Retry-After": "2"},
        )
    if busy.is_busy(cause):
        logger.warning("database busy for %s %s: %s", request.method, request.url.path, cause)
        return JSONResponse(
            {"detail": "the platform's database is busy; retry in a few seconds"},
            status_code=503,
            headers={"Retry-After": "2"},
        )
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error; the platform logs have the details"}, status_code=500)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's own answer, made safe to encode: the input it echoes may hold lone surrogates.
    assert isinstance(exc, RequestValidationError)  # the one exception it is registered for
    return JSONResponse({"detail": _printable(jsonable_encoder(exc.errors()))}, status_code=422)


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(errors.DClusterError, _domain_error)
    app.add_exception_handler(Exception, answer_exception)


class BodySizeLimit:
    """ASGI middleware: answers 413 for bodies over the limit, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._reject(send)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        body = b'{"detail":"request body too large: the limit is 1 MiB"}'
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
