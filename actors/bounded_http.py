"""Bounded GETs of endpoints a provider's machine serves (a sub-cluster head's dashboard, a node's metrics).

Whatever answers there is the provider's: it may send a body without end, drip it a byte at a time, or send a
gzip bomb (a few KiB on the wire, gigabytes once decoded). Every such read goes through here: it asks for
identity encoding and refuses an encoded answer (nothing is ever decoded, the raw bytes are what is counted),
stops at a byte cap, and holds the whole exchange, connect and body included, to one deadline, not only to
per-read timeouts that a drip resets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping

import httpx

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0  # between two chunks; the total deadline is what bounds the exchange
_IDENTITY = ("", "identity")


class BoundedReadError(Exception):
    """The endpoint did not answer within the bounds (or at all): the message names it and the bound."""


@dataclasses.dataclass(frozen=True)
class Bounds:
    max_bytes: int  # of the body as it came over the wire
    total_s: float  # from the request's start to the body's last byte


def client() -> httpx.AsyncClient:
    """A client for provider endpoints: no redirects followed, never a proxy named in the environment."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S), follow_redirects=False, trust_env=False
    )


def where(url: httpx.URL) -> str:
    return f"{url.host}:{url.port}"


class Answer:
    """An answer whose status and headers have arrived; its body streams within what is left of the bounds."""

    def __init__(self, response: httpx.Response, url: httpx.URL, bounds: Bounds, deadline: float):
        self._response, self._url, self._bounds, self._deadline = response, url, bounds, deadline

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> httpx.Headers:
        return self._response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The raw body, chunk by chunk; BoundedReadError once it passes the cap or the deadline."""
        read = 0
        raw = self._response.aiter_raw()
        try:
            while True:
                left = self._deadline - time.monotonic()
                try:
                    if left <= 0:
                        raise TimeoutError
                    chunk = await asyncio.wait_for(raw.__anext__(), left)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise BoundedReadError(
                        f"{where(self._url)}: answer not done within {self._bounds.total_s:g} s, cut after {read} bytes"
                    ) from None
                except httpx.HTTPError as exc:
                    raise BoundedReadError(
                        f"{where(self._url)}: answer broke off after {read} bytes ({type(exc).__name__})"
                    ) from None
                read += len(chunk)
                if read > self._bounds.max_bytes:
                    raise BoundedReadError(
                        f"{where(self._url)}: answer cut at {read} bytes, over the {self._bounds.max_bytes}-byte cap"
                    )
                yield chunk
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def aclose(self) -> None:
        await self._response.aclose()


async def open_get(
    http: httpx.AsyncClient, url: httpx.URL, *, headers: Mapping[str, str] | None = None, bounds: Bounds
) -> Answer:
    """GET url up to its status and headers; the body is the Answer's to stream (and to close)."""
    deadline = time.monotonic() + bounds.total_s
    sent = {**(headers or {}), "Accept-Encoding": "identity"}
    try:
        response = await asyncio.wait_for(
            http.send(http.build_request("GET", url, headers=sent), stream=True), bounds.total_s
        )
    except (TimeoutError, httpx.HTTPError) as exc:
        raise BoundedReadError(f"{where(url)} did not answer ({type(exc).__name__})") from None
    encoding = response.headers.get("content-encoding", "").strip().lower()
    length = response.headers.get("content-length", "")
    problem = None
    if encoding not in _IDENTITY:
        problem = f"answered with Content-Encoding {encoding!r} where identity was asked for (refused, not decoded)"
    elif length.isdigit() and int(length) > bounds.max_bytes:
        problem = f"announced {length} bytes, over the {bounds.max_bytes}-byte cap"
    if problem is not None:
        await response.aclose()
        raise BoundedReadError(f"{where(url)} {problem}")
    return Answer(response, url, bounds, deadline)


async def get(
    http: httpx.AsyncClient, url: httpx.URL, *, headers: Mapping[str, str] | None = None, bounds: Bounds
) -> tuple[int, bytes]:
    """GET url whole: its status and raw body, within the bounds."""
    answer = await open_get(http, url, headers=headers, bounds=bounds)
    return answer.status_code, await answer.read()
