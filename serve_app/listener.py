"""The API's own HTTP listener, run inside the Serve replica: uvicorn serving the FastAPI app directly.

Serve's proxy (and its direct ingress) put ~6 ms of CPU on every request on this kind of machine,
against ~0.4 ms for the same app under uvicorn (benchmarks/README.md). The replica is still a Serve
deployment (placement, health checks, restarts, rolling updates); only the HTTP path skips Serve.

The socket is bound with SO_REUSEADDR, so `dcluster up` takes the port again while connections of
the platform it replaced sit in TIME_WAIT, and SO_REUSEPORT, so a new replica (a rolling update,
or one per node of the same address) listens beside the old one until that one is gone. Linux
lets only sockets of the same user join a SO_REUSEPORT group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

logger = logging.getLogger(__name__)

BACKLOG = 2048


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop where uvloop is installed (it halves the CPU of the HTTP path), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The replica's signals belong to Ray (its graceful shutdown), never to uvicorn.
        yield


class Listener:
    """uvicorn serving `app` on host:port from a thread of its own, on an event loop of its own, until stop().

    Its own loop: Serve runs user code on a plain asyncio loop shared with Serve's own work; uvloop
    (where installed) and no sharing halve the CPU of the HTTP path. The app's actor calls are awaited on this loop."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
    ):
        self.host, self.port = host, port
        self._server = _Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                # Agents hold long polls (up to the platform's max_long_poll_s) and keep connections alive.
                timeout_keep_alive=75,
                server_header=False,
                # The caller's address is the TCP peer; X-Forwarded-For counts only through the app's
                # trusted_proxy_hops (deps.client_address). uvicorn's default would believe it from loopback.
                proxy_headers=False,
                # TLS on the API itself (dcluster up's own CA, or an operator's certificate): uvicorn wraps the
                # bound socket, so the listener stays the only HTTP path.
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
            )
        )
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def _serve(self) -> None:
        assert self._socket is not None  # bound by start(), before this thread runs
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._socket]))
        except BaseException as exc:  # recorded for start(); the replica's health is Serve's business
            self._failure = exc
            logger.exception("the API listener on %s:%d stopped", self.host, self.port)
        finally:
            loop.close()

    async def start(self) -> None:
        self._socket = bind(self.host, self.port)  # fails here, loudly, when the port is taken
        self._thread = threading.Thread(target=self._serve, name="api-listener", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(
                    f"the API listener on {self.host}:{self.port} stopped while starting: {self._failure!r}"
                )
            await asyncio.sleep(0.01)
        logger.info("API listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 5.0)
        if self._socket is not None:
            self._socket.close()
