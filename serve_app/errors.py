"""Maps errors to HTTP answers in one place, and caps request bodies."""

from __future__ import annotations

import logging

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dcl_core import errors

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def _unwrap(exc: BaseException) -> BaseException:
    # An exception raised inside an actor arrives wrapped; its cause holds the fields.
    return getattr(exc, "cause", None) or exc


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    exc = _unwrap(exc)
    headers = {}
    if isinstance(exc, errors.RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, errors.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"detail": exc.message}, status_code=exc.http_status, headers=headers)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    cause = _unwrap(exc)
    if isinstance(cause, errors.DClusterError):
        return await _domain_error(request, cause)
    if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
        logger.warning("control-plane actor unavailable for %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "the control plane is restarting; retry in a few seconds"},
                            status_code=503, headers={"Retry-After": "2"})
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error; the platform logs have the details"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.DClusterError, _domain_error)
    app.add_exception_handler(Exception, _unexpected_error)


class BodySizeLimit:
    """ASGI middleware: answers 413 for bodies over the limit, whether or not Content-Length is sent."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._reject(send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        response_started = False

        async def tracking_send(message):
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._reject(send)

    async def _reject(self, send):
        body = b'{"detail":"request body too large: the limit is 1 MiB"}'
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass
