"""`dcluster cluster dashboard ID --forward PORT`: the cluster's Ray dashboard in a local browser, through the
platform's proxy, with the buyer's platform token added here (a browser cannot send a bearer token itself).

Listens on 127.0.0.1 only and passes GETs on: the platform checks each path and reaches only the cluster's head.
"""

from __future__ import annotations

import http.server
import threading

import httpx

import dcluster

TIMEOUT_S = 60.0
_PASSED_RESPONSE_HEADERS = ("content-type", "content-encoding", "content-length", "etag", "last-modified")
_PASSED_REQUEST_HEADERS = ("accept", "accept-encoding", "accept-language", "if-none-match", "if-modified-since")


class DashboardForward:
    """A local HTTP server: GET /<path> → GET <proxy_url><path> with `Authorization: Bearer <token>`."""

    def __init__(self, proxy_url: str, token: str, *, port: int = 0, trust: dcluster.Trust | None = None):
        base = proxy_url if proxy_url.endswith("/") else proxy_url + "/"
        # The platform's certificate is checked as every other call of the CLI checks it (the pinned CA).
        verify = (trust or dcluster.Trust()).verify()
        http_client = httpx.Client(timeout=TIMEOUT_S, trust_env=False, verify=verify)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request a connection: the body ends when it closes

            def do_GET(self):
                headers = {k: v for k in _PASSED_REQUEST_HEADERS if (v := self.headers.get(k)) is not None}
                headers["Authorization"] = f"Bearer {token}"
                try:
                    with http_client.stream("GET", base + self.path.lstrip("/"), headers=headers) as resp:
                        self.send_response(resp.status_code)
                        for name in _PASSED_RESPONSE_HEADERS:
                            if (value := resp.headers.get(name)) is not None:
                                self.send_header(name, value)
                        self.end_headers()
                        for chunk in resp.iter_raw():
                            self.wfile.write(chunk)
                except httpx.HTTPError as exc:
                    self.send_error(502, f"the platform did not answer: {type(exc).__name__}")

            def log_message(self, *args):
                pass

        self._http = http_client
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/"

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def start(self) -> DashboardForward:
        """In a background thread (tests)."""
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()
