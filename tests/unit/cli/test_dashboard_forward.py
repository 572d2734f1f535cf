"""The local dashboard forward against a real HTTP server standing in for the platform's proxy route."""

from __future__ import annotations

import http.server
import threading

import httpx
import pytest

from cli import dashboard_forward

PROXY_PATH = "/v1/clusters/c-0123456789ab/dashboard/"


class Platform(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        status, body = (200, b"dashboard page") if self.path.startswith(PROXY_PATH) else (404, b"no such route")
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "platform=1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def platform():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_gets_go_to_the_clusters_proxy_route_with_the_sign_in_and_answers_come_back(platform):
    url = f"http://127.0.0.1:{platform.server_address[1]}{PROXY_PATH}"
    forward = dashboard_forward.DashboardForward(url, "jwt-of-alice").start()
    try:
        assert forward.url.startswith("http://127.0.0.1:")
        resp = httpx.get(forward.url + "api/jobs/?limit=3", headers={"Authorization": "Bearer someone-else"})
        assert resp.status_code == 200 and resp.text == "dashboard page"
        assert resp.headers["content-type"] == "text/html" and "set-cookie" not in resp.headers
        assert platform.seen[-1] == (PROXY_PATH + "api/jobs/?limit=3", "Bearer jwt-of-alice")
        assert httpx.get(forward.url).text == "dashboard page"
        assert platform.seen[-1][0] == PROXY_PATH
    finally:
        forward.close()


def test_a_platform_that_does_not_answer_is_a_502():
    forward = dashboard_forward.DashboardForward(
        "http://127.0.0.1:9/v1/clusters/c-0123456789ab/dashboard/", "jwt"
    ).start()
    try:
        assert httpx.get(forward.url + "x").status_code == 502
    finally:
        forward.close()
