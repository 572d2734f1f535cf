import asyncio
import socket

import httpx
import pytest
from fastapi import FastAPI

from serve_app import listener
from worker import procs


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping():
        return {"pong": True}
    return app


def test_a_new_listener_takes_the_port_while_the_old_ones_clients_still_hold_connections():
    """`dcluster down` then `up` on the same port, with agents connected: the old platform's
    connections sit in TIME_WAIT (or still open) and the new replica must bind all the same."""
    port = procs.free_port()

    async def go():
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
        return answer
    assert asyncio.run(go()) == {"pong": True}


def test_a_port_held_by_another_program_is_refused_loudly():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]

        async def go():
            await listener.Listener(_app(), "127.0.0.1", port).start()
        with pytest.raises(OSError):
            asyncio.run(go())
