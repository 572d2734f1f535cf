"""The API's two hottest calls, an agent's heartbeat and a buyer's cluster read, answered without
FastAPI's routing and dependency solving (over half of what they cost: benchmarks/README.md).

Only the ordinary case is answered here: the route's own path and method, no query string, the
credential its ordinary caller holds (an agent key; a buyer's or admin's sign-in), and a body the
route takes. Everything else, every error answer included, goes on to the FastAPI app unchanged
(with the body already read), so the routes' checks, schema and error answers stay FastAPI's.
The ordinary case runs the route's own endpoint function and answers through its response model,
exactly as FastAPI would; the failures of that call are answered by serve_app.errors, as the app's
exception handlers would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import ResponseValidationError
from fastapi.routing import APIRoute, APIRouter
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.access import agent_keys, auth
from dcl_core import api, ids, protocol
from dcl_core import errors as domain_errors
from serve_app import agent_protocol, asgi_headers, deps, errors, input_policy, routes_clusters, routes_machines


def _route(router: APIRouter, endpoint: Callable[..., Any]) -> APIRoute:
    (route,) = [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint]
    return route


def _path_regex(route: APIRoute, param: str, pattern: str) -> re.Pattern[str]:
    """The route's path with its one parameter matched by that parameter's own pattern."""
    before, after = route.path.split("{" + param + "}")
    return re.compile("^" + re.escape(before) + "(" + pattern.strip("^$") + ")" + re.escape(after) + "$")


_HEARTBEAT = _route(routes_machines.router, routes_machines.heartbeat)
GET_CLUSTER = _route(routes_clusters.router, routes_clusters.get_cluster)
_HEARTBEAT_PATH = _path_regex(_HEARTBEAT, "machine_id", ids.MACHINE_ID_PATTERN)
_GET_CLUSTER_PATH = _path_regex(GET_CLUSTER, "cluster_id", ids.CLUSTER_ID_PATTERN)


def _bearer(scope: Scope) -> str | None:
    """The bearer credential as fastapi.security.HTTPBearer reads it (the first Authorization header)."""
    value = asgi_headers.first(scope, b"authorization")
    if value is None:
        return None
    scheme, _, credentials = value.decode("latin-1").partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


def _is_json(scope: Scope) -> bool:
    return asgi_headers.first(scope, b"content-type") == b"application/json"


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None when the client left first. (BodySizeLimit, outside, caps it.)"""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app after the body was read here: the body first, then the client's own messages."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class LastSerialized:
    """The bytes of the answers serialized last, by answer object: reads that shared one answer (a coalesced
    batch) are validated and serialized once. Holds the answers, so an id is never another object's."""

    def __init__(self, size: int = 8, serialize: Callable[[APIRoute, Any], bytes] | None = None):
        self._size = size
        self._serialize = serialize or serialize_answer
        self._entries: dict[tuple[int, int], tuple[Any, bytes]] = {}  # (route, answer) ids → (answer, bytes)

    def __call__(self, route: APIRoute, answer: Any) -> bytes:
        key = (id(route), id(answer))
        entry = self._entries.get(key)
        if entry is not None and entry[0] is answer:
            return entry[1]
        content = self._serialize(route, answer)
        if len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[key] = (answer, content)
        return content


class HotRoutes:
    """ASGI middleware in front of the app's routes (inside its latency and body-size middleware)."""

    def __init__(self, app: ASGIApp, api_app: FastAPI):
        self.app = app
        self._state = api_app.state
        self._serialized = LastSerialized()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["query_string"] and not scope.get("root_path"):
            method, path = scope["method"], scope["path"]
            if method == "POST" and (match := _HEARTBEAT_PATH.match(path)):
                return await self._heartbeat(match.group(1), scope, receive, send)
            if method == "GET" and (match := _GET_CLUSTER_PATH.match(path)):
                return await self._get_cluster(match.group(1), scope, receive, send)
        await self.app(scope, receive, send)

    async def _heartbeat(self, machine_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        credentials = _bearer(scope)
        key = agent_keys.parse(credentials) if credentials is not None else None
        if key is None or not _is_json(scope) or protocol.protocol_refusal(agent_protocol.header(scope)):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:
            return
        beat = _heartbeat_body(body)
        if beat is None:
            return await self.app(scope, _replaying(body, receive), send)
        await self._answer(
            _HEARTBEAT,
            routes_machines.heartbeat(
                machine_id=machine_id, body=beat, principal=key, heartbeats=self._state.heartbeats
            ),
            scope,
            receive,
            send,
        )

    async def _get_cluster(self, cluster_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        credentials = _bearer(scope)
        tokens = self._state.tokens  # None until the app's first signed-in request fetched the secret
        if credentials is None or tokens is None or agent_keys.looks_like_key(credentials):
            return await self.app(scope, receive, send)
        try:
            principal = tokens.verify(credentials)
            auth.check_account_token(principal)  # the checks of deps.BuyerOrAdmin, on the same definitions
            auth.check_role(principal, *deps.BUYER_OR_ADMIN)
        except (domain_errors.Unauthenticated, domain_errors.Forbidden):
            return await self.app(scope, receive, send)
        await self._answer(
            GET_CLUSTER,
            routes_clusters.get_cluster(cluster_id=cluster_id, principal=principal, reads=self._state.cluster_reads),
            scope,
            receive,
            send,
        )

    async def _answer(self, route: APIRoute, call: Awaitable[Any], scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = route  # what the latency metric labels the request with, as routing does
        try:
            content = self._serialized(route, await call)
        except Exception as exc:
            response = await errors.answer_exception(Request(scope, receive), exc)
            return await response(scope, receive, send)
        await send(
            {
                "type": "http.response.start",
                "status": route.status_code or 200,
                "headers": [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _heartbeat_body(body: bytes) -> api.Heartbeat | None:
    """The body as the route takes it (JSON, the app-wide input policy, the model), or None: not ordinary."""
    try:
        value = json.loads(body)
        if not isinstance(value, dict) or input_policy.problems(value, ("body",)):
            return None
        return api.Heartbeat.model_validate(value)
    except (ValueError, RecursionError, ValidationError):
        return None


def serialize_answer(route: APIRoute, answer: Any) -> bytes:
    """The route's response model applied to the answer, as FastAPI's serialize_response does it."""
    field = route.response_field
    assert field is not None  # both hot routes have a response model
    value, problems = field.validate(answer, {}, loc=("response",))
    if problems:
        raise ResponseValidationError(errors=problems, body=answer)
    return field.serialize_json(
        value,
        include=route.response_model_include,
        exclude=route.response_model_exclude,
        by_alias=route.response_model_by_alias,
        exclude_unset=route.response_model_exclude_unset,
        exclude_defaults=route.response_model_exclude_defaults,
        exclude_none=route.response_model_exclude_none,
    )
