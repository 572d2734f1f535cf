"""A real HTTPS server on 127.0.0.1 for pinning tests: it answers a few platform routes, publishes a CA at
/v1/tls/ca.pem, and can switch certificate (an attacker taking the platform's address) between connections."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import json
import ssl
import tempfile
import threading
from pathlib import Path

from cli.platform import tls
from dcl_core import api

TOKEN = "eyJ.pinned-session." + "t" * 20


@dataclasses.dataclass
class Authority:
    """A CA and a server certificate it issued for 127.0.0.1/localhost (PEM text)."""

    ca_pem: str
    cert_pem: str
    key_pem: str

    @classmethod
    def make(cls, name: str, host: str = "127.0.0.1") -> Authority:
        ca_cert, ca_key = tls.make_ca(name)
        cert, key = tls.make_server_cert(ca_cert, ca_key, [host, *tls.LOOPBACK_NAMES])
        return cls(tls.cert_pem(ca_cert), tls.cert_pem(cert) + tls.cert_pem(ca_cert), tls.key_pem(key).decode())

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            cert.write_text(self.cert_pem)
            key.write_text(self.key_pem)
            context.load_cert_chain(cert, key)
        return context


class TlsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, authority: Authority, *, published_ca: str | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.serve(authority, published_ca=published_ca)
        self.url = f"https://127.0.0.1:{self.server_address[1]}"
        self.requests: list[str] = []

    def serve(self, authority: Authority, *, published_ca: str | None = None) -> None:
        """From the next connection on: this certificate, and this CA at /v1/tls/ca.pem (default: its own)."""
        self.ssl_context = authority.context()
        self.published_ca = published_ca if published_ca is not None else authority.ca_pem

    def get_request(self):
        sock, addr = super().get_request()
        return self.ssl_context.wrap_socket(sock, server_side=True), addr


class _Handler(http.server.BaseHTTPRequestHandler):
    server: TlsServer

    def _answer(self, status: int, body, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.requests.append(f"GET {self.path}")
        if self.path == api.TLS_CA_PATH:
            return self._answer(200, self.server.published_ca, "application/x-pem-file")
        if self.path == "/healthz":
            return self._answer(200, {"status": "ok"})
        if self.path == "/v1/accounts/me":
            return self._answer(200, {"id": "a-1", "username": "alice", "role": "buyer"})
        if self.path == "/v1/clusters":
            return self._answer(200, [])
        return self._answer(404, {"detail": "not found"})

    def do_POST(self):
        self.server.requests.append(f"POST {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/token":
            return self._answer(200, {"access_token": TOKEN, "token_type": "bearer", "expires_in": 1800})
        return self._answer(404, {"detail": "not found"})

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def running(authority: Authority, *, published_ca: str | None = None):
    server = TlsServer(authority, published_ca=published_ca)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
