"""The platform's window on a buyer's own cluster: its head's Ray dashboard and its nodes' Prometheus metrics,
fetched over HTTP by the platform and streamed back behind the buyer's platform token.

Only GET. The upstream URL is built from parts: the node's recorded address and port (the ClusterManager's
`proxy_target`, never anything in the request) and a path whose every segment is checked here (no `..`, no
empty segment, no `%`, no backslash), so nothing a caller sends can point the platform at another host, port
or scheme. The caller's headers are not passed on (its platform token stays here); the dashboard gets the
cluster's own Ray token. Every fetch is a bounded read (actors.bounded_http): identity encoding only, a byte cap,
one deadline for the whole exchange.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from fastapi.responses import StreamingResponse

from actors import bounded_http
from dcl_core import errors

logger = logging.getLogger(__name__)

MAX_PATH_CHARS = 2048
MAX_QUERY_CHARS = 4096
MAX_BODY_BYTES = 64 << 20  # the dashboard's largest answers (its JS bundle, a big state listing) are a few MiB
TOTAL_TIMEOUT_S = 120.0  # the whole exchange, body included
METRICS_PATH = "/metrics"  # what Ray's metrics agent serves on a node's metrics export port

# RFC 3986 pchar without percent-encoding: the path reaches the node exactly as checked here.
_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]+$")
_QUERY = re.compile(r"^[\x21-\x7e]*$")  # printable ASCII, no space; '#' is refused below
# No accept-encoding: the node is asked for identity encoding only (actors.bounded_http).
_PASSED_REQUEST_HEADERS = ("accept", "accept-language", "if-none-match", "if-modified-since")
_PASSED_RESPONSE_HEADERS = ("content-type", "content-length", "etag", "last-modified")
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
    port = 80 if url.port is None else url.port  # httpx names the scheme's default port None
    if (url.scheme, url.host, port, url.path) != ("http", target["host"], target["port"], path):
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
        self._bounds = bounded_http.Bounds(max_bytes=max_body_bytes, total_s=total_timeout_s)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # made on first use: inside the event loop that uses it
            self._client = bounded_http.client()
        return self._client

    async def fetch(
        self, url: httpx.URL, request_headers: Mapping[str, str], *, token: str | None = None
    ) -> StreamingResponse:
        """GET url and stream its answer back (status, safe headers, body), within the size and time bounds."""
        headers = {k: v for k in _PASSED_REQUEST_HEADERS if (v := request_headers.get(k)) is not None}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        try:
            upstream = await bounded_http.open_get(self._http(), url, headers=headers, bounds=self._bounds)
        except bounded_http.BoundedReadError as exc:
            raise errors.BadGateway(
                f"{_names(url)}: {exc}; it may be starting or gone, see GET /v1/clusters/{{id}}"
            ) from None
        passed = {k: v for k in _PASSED_RESPONSE_HEADERS if (v := upstream.headers.get(k)) is not None}
        return StreamingResponse(
            self._body(upstream, url), status_code=upstream.status_code, headers={**passed, **_SAFETY_HEADERS}
        )

    async def _body(self, upstream: bounded_http.Answer, url: httpx.URL) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.chunks():
                yield chunk
        except bounded_http.BoundedReadError as exc:
            # Headers are gone already: breaking the stream is how the client learns it is cut.
            raise _Cut(f"{_names(url)}: {exc}") from None
        finally:
            await upstream.aclose()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _Cut(Exception):
    """An answer stopped part-way (over a bound, or the node went away): the connection to the caller is broken."""
