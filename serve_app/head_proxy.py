"""The platform's window on a buyer's own cluster: its head's Ray dashboard and its nodes' Prometheus metrics,
fetched over HTTP by the platform and streamed back behind the buyer's platform token.

Only GET. The upstream URL is built from parts: the node's recorded address and port (the ClusterManager's
`proxy_target`, never anything in the request) and a path whose every segment is checked here (no `..`, no
empty segment, no `%`, no backslash), so nothing a caller sends can point the platform at another host, port
or scheme. The caller's headers are not passed on (its platform token stays here); the dashboard gets the
cluster's own Ray token. Bodies are capped and the whole exchange has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from fastapi.responses import StreamingResponse

from dcl_core import errors

logger = logging.getLogger(__name__)

MAX_PATH_CHARS = 2048
MAX_QUERY_CHARS = 4096
MAX_BODY_BYTES = 64 << 20  # the dashboard's largest answers (its JS bundle, a big state listing) are a few MiB
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0  # between two chunks of an answer
TOTAL_TIMEOUT_S = 120.0  # the whole exchange, body included
METRICS_PATH = "/metrics"  # what Ray's metrics agent serves on a node's metrics export port

# RFC 3986 pchar without percent-encoding: the path reaches the node exactly as checked here.
_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")
_QUERY = re.compile(r"^[\x21-\x7e]*$")  # printable ASCII, no space; '#' is refused below
_PASSED_REQUEST_HEADERS = ("accept", "accept-encoding", "accept-language", "if-none-match", "if-modified-since")
_PASSED_RESPONSE_HEADERS = ("content-type", "content-encoding", "content-length", "etag", "last-modified")
# Whatever the node answers is shown on the platform's origin only as inert content: a page a provider's machine
# serves must never run script with the console's origin.
_SAFETY_HEADERS = {
    "Content-Security-Policy": "sandbox",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
}


def checked_path(path: str) -> str:
    """The dashboard path to ask for ("/" + path), or 400 naming what is wrong with it."""
    if len(path) > MAX_PATH_CHARS:
        raise errors.InvalidInput(f"dashboard path is over {MAX_PATH_CHARS} characters")
    segments = path.split("/")
    for i, segment in enumerate(segments):
        if segment == "" and i == len(segments) - 1:
            continue  # "" (the root) or a trailing slash
        if segment in ("", ".", ".."):
            raise errors.InvalidInput(
                f"dashboard path {path!r} has an empty, '.' or '..' segment: only paths "
                "below the head's dashboard are proxied"
            )
        if not _SEGMENT.match(segment):
            raise errors.InvalidInput(
                f"dashboard path segment {segment!r} has a character the proxy does not pass "
                "(letters, digits and -._~!$&'()*+,;=:@ only; no %, \\ or space)"
            )
    return "/" + path


def checked_query(query: str) -> bytes:
    if len(query) > MAX_QUERY_CHARS or not _QUERY.match(query) or "#" in query:
        raise errors.InvalidInput(
            f"query string must be at most {MAX_QUERY_CHARS} printable ASCII characters without spaces or '#'"
        )
    return query.encode("ascii")


def dashboard_url(target: dict[str, Any], path: str, query: str = "") -> httpx.URL:
    """http://<head address>:<dashboard port>/<checked path>?<checked query>, and nothing else."""
    return _url(target, checked_path(path), checked_query(query))


def metrics_url(target: dict[str, Any]) -> httpx.URL:
    return _url(target, METRICS_PATH, b"")


def _url(target: dict[str, Any], path: str, query: bytes) -> httpx.URL:
    url = httpx.URL(scheme="http", host=target["host"], port=target["port"], path=path)
    if query:
        url = url.copy_with(query=query)
    if (url.scheme, url.host, url.port, url.path) != ("http", target["host"], target["port"], path):
        raise errors.InvalidInput("the request does not name a path on the cluster's node")  # belt and braces
    return url


def _names(url: httpx.URL) -> str:
    return f"the cluster's node at {url.host}:{url.port}"


class HeadProxy:
    """All of the platform's HTTP calls on behalf of a buyer to its cluster's nodes go through here."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        total_timeout_s: float = TOTAL_TIMEOUT_S,
    ):
        self._client = client
        self._max_body_bytes = max_body_bytes
        self._total_timeout_s = total_timeout_s

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # made on first use: inside the event loop that uses it
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                follow_redirects=False,
                trust_env=False,
            )  # never through a proxy named in the environment
        return self._client

    async def fetch(
        self, url: httpx.URL, request_headers: Mapping[str, str], *, token: str | None = None
    ) -> StreamingResponse:
        """GET url and stream its answer back (status, safe headers, body), within the size and time bounds."""
        headers = {k: v for k in _PASSED_REQUEST_HEADERS if (v := request_headers.get(k)) is not None}
        headers.setdefault("accept-encoding", "identity")
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        deadline = time.monotonic() + self._total_timeout_s
        client = self._http()
        try:
            upstream = await asyncio.wait_for(
                client.send(client.build_request("GET", url, headers=headers), stream=True),
                timeout=self._total_timeout_s,
            )
        except (TimeoutError, httpx.HTTPError) as exc:
            raise errors.BadGateway(
                f"{_names(url)} did not answer ({type(exc).__name__}); it may be starting "
                "or gone, see GET /v1/clusters/{id}"
            ) from None
        length = upstream.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body_bytes:
            await upstream.aclose()
            raise errors.BadGateway(
                f"{_names(url)} answered {length} bytes; the proxy passes at most {self._max_body_bytes}"
            )
        passed = {k: v for k in _PASSED_RESPONSE_HEADERS if (v := upstream.headers.get(k)) is not None}
        return StreamingResponse(
            self._body(upstream, url, deadline), status_code=upstream.status_code, headers={**passed, **_SAFETY_HEADERS}
        )

    async def _body(self, upstream: httpx.Response, url: httpx.URL, deadline: float) -> AsyncIterator[bytes]:
        sent = 0
        try:
            async for chunk in upstream.aiter_raw():
                sent += len(chunk)
                if sent > self._max_body_bytes or time.monotonic() > deadline:
                    # Headers are gone already: breaking the stream is how the client learns it is cut.
                    raise _Cut(
                        f"{_names(url)}: answer cut after {sent} bytes "
                        f"(limits: {self._max_body_bytes} bytes, {self._total_timeout_s:.0f} s)"
                    )
                yield chunk
        except httpx.HTTPError as exc:
            raise _Cut(f"{_names(url)}: answer broke off after {sent} bytes ({type(exc).__name__})") from None
        finally:
            await upstream.aclose()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _Cut(Exception):
    """An answer stopped part-way (over a bound, or the node went away): the connection to the caller is broken."""
