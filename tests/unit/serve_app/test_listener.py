import asyncio
import socket
import sys

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from cli.platform import tls
from dcluster import tls as client_tls
from serve_app import app as app_mod
from serve_app import listener
from worker import procs

pytestmark = pytest.mark.anyio


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return {"pong": True}

    @app.get("/peer")
    async def peer(request: Request):
        return {"host": request.client.host}

    return app


async def test_a_new_listener_takes_the_port_while_the_old_ones_clients_still_hold_connections():
    """`dcluster down` then `up` on the same port, with agents connected: the old platform's
    connections sit in TIME_WAIT (or still open) and the new replica must bind all the same."""
    port = procs.free_port()

    first = listener.Listener(_app(), "127.0.0.1", port)
    await first.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/ping")).json() == {"pong": True}  # a kept-alive connection
        await first.stop()
        second = listener.Listener(_app(), "127.0.0.1", port)
        await second.start()
        try:
            answer = (await client.get("/ping")).json()  # the client reconnects to the new one
        finally:
            await second.stop()

    assert answer == {"pong": True}


async def test_a_port_held_by_another_program_is_refused_loudly():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError):
            await listener.Listener(_app(), "127.0.0.1", port).start()


async def test_a_client_cannot_name_its_own_address_with_forwarded_headers():
    """Rate limits key on the caller's address: a forged X-Forwarded-For (even from loopback) changes nothing."""
    port = procs.free_port()
    server = listener.Listener(_app(), "127.0.0.1", port)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            forged = {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.8", "Forwarded": "for=203.0.113.9"}
            seen = (await client.get("/peer", headers=forged)).json()
    finally:
        await server.stop()
    assert seen == {"host": "127.0.0.1"}


async def test_the_api_serves_tls_and_publishes_the_ca_clients_pin(tmp_path):
    """The platform's own listener with `up`'s certificate: a client pins the CA by fingerprint and talks to the
    real app over TLS; plain HTTP gets no answer; an app without a CA of its own answers 404 for it."""
    files = tls.own_ca_files(tls.TlsDir(tmp_path / "tls"), "127.0.0.1")
    ca_pem = files.ca_file.read_text()
    port = procs.free_port()
    app = app_mod.create_app(None, None, tls_ca_pem=ca_pem)
    server = listener.Listener(app, "127.0.0.1", port, ssl_certfile=str(files.certfile), ssl_keyfile=str(files.keyfile))
    await server.start()
    try:
        url = f"https://127.0.0.1:{port}"
        pinned = await asyncio.to_thread(client_tls.fetch_ca, url, expected=files.fingerprint)
        assert pinned == ca_pem
        async with httpx.AsyncClient(verify=client_tls.Trust(ca_pem=pinned).verify()) as client:
            assert (await client.get(f"{url}/docs")).status_code == 200
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{port}/docs")
    finally:
        await server.stop()
    with TestClient(app_mod.create_app(None, None)) as no_ca:
        answer = no_ca.get("/v1/tls/ca.pem")
    assert answer.status_code == 404 and "no certificate authority" in answer.json()["detail"]


async def test_without_uvloop_it_serves_on_asyncios_own_loop(monkeypatch):
    """uvloop is optional (no wheel on some platforms): the listener runs without it."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError
    loop = listener.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()
    port = procs.free_port()
    server = listener.Listener(_app(), "127.0.0.1", port)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/ping")).json() == {"pong": True}
    finally:
        await server.stop()


def test_with_uvloop_installed_it_is_used():
    uvloop = pytest.importorskip("uvloop")
    loop = listener.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
