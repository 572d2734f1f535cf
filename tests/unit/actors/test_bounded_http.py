"""Bounded reads against a real HTTP server on loopback that plays a hostile provider's head: a gzip bomb, an
endless body, a slow drip, a lying Content-Length. Each read stops at its bound, and nothing is ever decoded."""

from __future__ import annotations

import gzip
import http.server
import threading
import tracemalloc

import httpx
import pytest

from actors import bounded_http

pytestmark = pytest.mark.anyio

BOMB_DECODED = 10 << 20  # 10 MiB of zeros: about 10 KiB once gzipped
BOMB = gzip.compress(b"\0" * BOMB_DECODED, compresslevel=9)


class Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.asked.append({k.lower(): v for k, v in self.headers.items()})
        if self.path == "/bomb":  # gzip although identity was asked for
            return self._send(BOMB, {"Content-Encoding": "gzip"})
        if self.path == "/bomb-unlabelled":  # the same bytes, but not said to be gzip: counted raw, never decoded
            return self._send(BOMB)
        if self.path == "/announced-big":
            return self._send(b"x" * 4096, {"Content-Length": str(1 << 40)})
        if self.path == "/endless":
            self._chunked_forever(b"y" * 65536, pause_s=0)
        if self.path == "/drip":  # a byte every 0.1 s: each read is quick, the whole never ends
            self._chunked_forever(b"z", pause_s=0.1)
        return self._send(b"fine")

    def _send(self, body: bytes, headers: dict[str, str] | None = None):
        self.send_response(200)
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass  # the reader refused the answer on its headers and hung up: what the test wants

    def _chunked_forever(self, piece: bytes, pause_s: float):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while not self.server.stopping.is_set():
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.server.stopping.wait(pause_s)
        except OSError:
            pass  # the reader hung up: what the test wants

    def log_message(self, *args):
        pass


@pytest.fixture
def head():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.asked, server.stopping, server.daemon_threads = [], threading.Event(), True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


def url(server, path: str) -> httpx.URL:
    return httpx.URL(scheme="http", host="127.0.0.1", port=server.server_address[1], path=path)


async def read(server, path: str, *, max_bytes: int = 1 << 20, total_s: float = 30.0) -> tuple[int, bytes]:
    async with bounded_http.client() as http:
        return await bounded_http.get(
            http, url(server, path), bounds=bounded_http.Bounds(max_bytes=max_bytes, total_s=total_s)
        )


async def test_a_plain_answer_is_read_and_identity_encoding_is_asked_for_whatever_the_caller_said(head):
    async with bounded_http.client() as http:
        answer = await bounded_http.get(
            http,
            url(head, "/"),
            headers={"Accept-Encoding": "gzip, br", "Authorization": "Bearer t"},
            bounds=bounded_http.Bounds(max_bytes=100, total_s=30.0),
        )
    assert answer == (200, b"fine")
    assert head.asked[-1]["accept-encoding"] == "identity" and head.asked[-1]["authorization"] == "Bearer t"


async def test_a_gzip_bomb_is_refused_undecoded_and_memory_never_grows_by_its_decoded_size(head):
    tracemalloc.start()
    try:
        with pytest.raises(bounded_http.BoundedReadError, match="Content-Encoding 'gzip'.*refused, not decoded"):
            await read(head, "/bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < BOMB_DECODED // 10, f"peak {peak} bytes while refusing a {len(BOMB)}-byte bomb"


async def test_a_bomb_not_labelled_as_gzip_is_only_its_raw_bytes_and_still_capped(head):
    status, body = await read(head, "/bomb-unlabelled")
    assert status == 200 and body == BOMB and len(body) < BOMB_DECODED // 100
    with pytest.raises(bounded_http.BoundedReadError, match="over the 4096-byte cap"):
        await read(head, "/bomb-unlabelled", max_bytes=4096)


async def test_an_endless_body_stops_at_the_cap(head):
    with pytest.raises(
        bounded_http.BoundedReadError, match=r"answer cut at (\d+) bytes, over the 1048576-byte cap"
    ) as e:
        await read(head, "/endless", max_bytes=1 << 20)
    cut_at = int(str(e.value).split("cut at ")[1].split(" ")[0])
    assert cut_at <= (1 << 20) + 65536 + 16  # at most one chunk past the cap was read


async def test_an_announced_length_over_the_cap_is_refused_before_the_body(head):
    with pytest.raises(bounded_http.BoundedReadError, match=r"announced 1099511627776 bytes, over the 4096-byte cap"):
        await read(head, "/announced-big", max_bytes=4096)


async def test_a_slow_drip_is_cut_at_the_total_deadline_though_every_read_is_quick(head):
    # Each byte comes well within the 30 s read timeout: only the total deadline can stop it.
    with pytest.raises(bounded_http.BoundedReadError, match=r"answer not done within 1 s, cut after \d+ bytes"):
        await read(head, "/drip", total_s=1.0)


async def test_a_closed_port_is_a_bounded_read_error_naming_the_endpoint():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with bounded_http.client() as http:
        with pytest.raises(bounded_http.BoundedReadError, match=rf"127.0.0.1:{port} did not answer"):
            await bounded_http.get(
                http,
                httpx.URL(scheme="http", host="127.0.0.1", port=port, path="/"),
                bounds=bounded_http.Bounds(max_bytes=10, total_s=10.0),
            )
