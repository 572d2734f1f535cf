"""The proxy to a buyer's own cluster (dashboard and metrics), against real HTTP servers on loopback: a "head"
that records what it is asked, and a "canary" on another port that no request may ever reach."""

from __future__ import annotations

import gzip
import http.server
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from actors.access import auth
from dcl_core import domain, errors
from serve_app import app as app_mod
from serve_app import head_proxy

SECRET = "s" * 48
CLUSTER = "c-0123456789ab"
WORKER = "l-00000000000a"
CLUSTER_TOKEN = "cluster-ray-token-" + "x" * 46
BOMB = gzip.compress(b"\0" * (10 << 20))


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET with what it was asked; a few paths misbehave on purpose."""

    def do_GET(self):
        self.server.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.path == "/big":
            return self._send(b"x" * 3000)
        if self.path == "/endless":  # no Content-Length: the body runs until the connection closes
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"y" * 1000)
            return
        if self.path == "/bomb":  # 10 MiB of zeros gzipped, though identity was asked for
            return self._send(BOMB, content_encoding="gzip")
        if self.path == "/slow":  # answers only once the test lets it, long after the proxy gave up
            self.server.release.wait(30)
        self._send(f"{self.server.name} saw {self.path}".encode(), content_type="text/html")

    def _send(self, body: bytes, content_type: str = "text/plain", content_encoding: str | None = None):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        if content_encoding:
            self.send_header("Content-Encoding", content_encoding)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "upstream=1")  # never passed on
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    made = {}
    for name in ("head", "canary"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        server.name, server.seen, server.release = name, [], threading.Event()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made[name] = server
    yield made
    for server in made.values():
        server.release.set()
        server.shutdown()
        server.server_close()


class _Method:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        async def call():
            return self._fn(*args)

        return call()


class FakeClusters:
    """proxy_target as the ClusterManager answers it: the caller's own cluster (or any, for an admin), else 404."""

    def __init__(self, head_port: int):
        self.head_port = head_port
        self.proxy_target = _Method(self._target)

    def _target(self, principal, cluster_id, service, node_id=None):
        if cluster_id != CLUSTER or principal.role is not domain.Role.ADMIN and principal.account_id != 1:
            raise errors.NotFound(f"cluster {cluster_id} not found")
        target = {"host": "127.0.0.1", "port": self.head_port}
        return {**target, "token": CLUSTER_TOKEN} if service == "dashboard" else target


class FakeRegistry:
    def __init__(self):
        self.signing_secret = _Method(lambda: SECRET)


def _token(account_id: int, name: str, role: domain.Role) -> dict:
    # Minted at import, so they must outlive the whole suite's run, not the default 30 minutes.
    token = auth.TokenIssuer(SECRET).issue(auth.Principal(account_id, name, role), ttl_s=24 * 3600)
    return {"Authorization": "Bearer " + token}


ALICE = _token(1, "alice", domain.Role.BUYER)
BOB = _token(2, "bob", domain.Role.BUYER)
ADMIN = _token(3, "root", domain.Role.ADMIN)
PROVIDER = _token(4, "pat", domain.Role.PROVIDER)


def client_for(servers, **proxy_options) -> TestClient:
    app = app_mod.create_app(FakeRegistry(), FakeClusters(servers["head"].server_address[1]))
    if proxy_options:
        app.state.head_proxy = head_proxy.HeadProxy(**proxy_options)
    return TestClient(app)


def test_the_owner_reads_its_heads_dashboard_with_the_clusters_token_never_its_own(servers):
    client = client_for(servers)
    resp = client.get(
        f"/v1/clusters/{CLUSTER}/dashboard/api/v0/nodes?limit=5&detail=false",
        headers={**ALICE, "Cookie": "dcluster_session=abc", "Accept": "application/json"},
    )
    assert resp.status_code == 200 and resp.text == "head saw /api/v0/nodes?limit=5&detail=false"
    asked = servers["head"].seen[-1]["headers"]
    assert asked["authorization"] == f"Bearer {CLUSTER_TOKEN}" and "cookie" not in asked
    assert asked["accept"] == "application/json"
    # What a provider's machine answers is inert on the platform's origin, and sets no cookie there.
    assert resp.headers["content-security-policy"] == "sandbox"
    assert resp.headers["x-content-type-options"] == "nosniff" and "set-cookie" not in resp.headers
    assert client.get(f"/v1/clusters/{CLUSTER}/dashboard/", headers=ALICE).text == "head saw /"
    assert client.get(f"/v1/clusters/{CLUSTER}/dashboard/", headers=ADMIN).status_code == 200
    assert servers["canary"].seen == []


def test_no_token_is_401_another_buyer_404_a_provider_403_and_the_head_is_never_asked(servers):
    client = client_for(servers)
    for path in (f"/v1/clusters/{CLUSTER}/dashboard/api/v0/nodes", f"/v1/clusters/{CLUSTER}/metrics"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
        resp = client.get(path, headers=BOB)
        assert resp.status_code == 404 and "not found" in resp.json()["detail"]
        assert client.get(path, headers=PROVIDER).status_code == 403
    assert servers["head"].seen == [] and servers["canary"].seen == []


def test_path_tricks_never_reach_another_host_port_or_a_path_above_the_dashboard(servers):
    client = client_for(servers)
    canary = f"127.0.0.1:{servers['canary'].server_address[1]}"
    base = f"/v1/clusters/{CLUSTER}/dashboard"
    refused = [
        f"{base}/%2e%2e/%2e%2e/etc/passwd",
        f"{base}/..%2f..%2fetc",
        f"{base}/a/%2E%2E/b",
        f"{base}/%2F%2F{canary}/x",
        f"{base}//{canary}/x",
        f"{base}/http:%2F%2F{canary}/",
        f"{base}/%252e%252e/x",
        f"{base}/a%5C..%5Cb",
        f"{base}/%2E",
        f"{base}/a%00b",
    ]
    for path in refused:
        resp = client.get(path, headers=ALICE)
        assert resp.status_code in (400, 422), (path, resp.status_code, resp.text)
        assert "detail" in resp.json()
    # Text that merely looks like an address is a path (or query) on the head, nothing more.
    for path, seen in (
        (f"{base}/http:{canary}/x", f"/http:{canary}/x"),
        (f"{base}/@{canary}", f"/@{canary}"),
        (f"{base}/x?url=http://{canary}/", f"/x?url=http://{canary}/"),
    ):
        resp = client.get(path, headers={**ALICE, "Host": canary, "X-Forwarded-Host": canary})
        assert resp.status_code == 200 and resp.text == f"head saw {seen}", path
    assert servers["canary"].seen == []
    assert all(s["path"].startswith("/") and ".." not in s["path"] for s in servers["head"].seen)


def test_metrics_are_the_nodes_prometheus_text_without_the_ray_token(servers):
    client = client_for(servers)
    resp = client.get(f"/v1/clusters/{CLUSTER}/metrics", headers=ALICE)
    assert resp.status_code == 200 and resp.text == "head saw /metrics"
    assert "authorization" not in servers["head"].seen[-1]["headers"]
    assert client.get(f"/v1/clusters/{CLUSTER}/metrics?node={WORKER}", headers=ALICE).status_code == 200
    bad = client.get(f"/v1/clusters/{CLUSTER}/metrics?node=http://127.0.0.1:1/", headers=ALICE)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "node"]


def test_answers_past_the_size_or_time_bound_are_refused_or_cut(servers):
    client = client_for(servers, max_body_bytes=2000, total_timeout_s=1.0)
    base = f"/v1/clusters/{CLUSTER}/dashboard"
    big = client.get(f"{base}/big", headers=ALICE)
    assert big.status_code == 502 and "3000 bytes" in big.json()["detail"]
    slow = client.get(f"{base}/slow", headers=ALICE)
    assert slow.status_code == 502 and "did not answer" in slow.json()["detail"]
    # The stream is broken off after 2000 bytes, never passed on whole.
    with pytest.raises(Exception, match=r"answer cut at \d+ bytes, over the 2000-byte cap"):
        client.get(f"{base}/endless", headers=ALICE)


def test_a_gzip_bomb_from_the_head_is_502_undecoded_and_the_head_is_asked_for_identity_only(servers):
    resp = client_for(servers).get(
        f"/v1/clusters/{CLUSTER}/dashboard/bomb", headers={**ALICE, "Accept-Encoding": "gzip, deflate, br"}
    )
    assert resp.status_code == 502 and "Content-Encoding 'gzip'" in resp.json()["detail"]
    assert "not decoded" in resp.json()["detail"]
    assert servers["head"].seen[-1]["headers"]["accept-encoding"] == "identity"


def test_a_head_that_does_not_answer_is_502_naming_it(servers):
    app = app_mod.create_app(FakeRegistry(), FakeClusters(head_port=_closed_port()))
    resp = TestClient(app).get(f"/v1/clusters/{CLUSTER}/dashboard/", headers=ALICE)
    assert resp.status_code == 502 and "did not answer" in resp.json()["detail"]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_urls_are_built_from_parts_only():
    target = {"host": "10.0.0.5", "port": 8265}
    assert str(head_proxy.dashboard_url(target, "api/jobs/", "a=1")) == "http://10.0.0.5:8265/api/jobs/?a=1"
    assert str(head_proxy.metrics_url(target)) == "http://10.0.0.5:8265/metrics"
    assert str(head_proxy.dashboard_url({"host": "::1", "port": 1}, "")) == "http://[::1]:1/"
    assert str(head_proxy.metrics_url({"host": "10.0.0.5", "port": 80})) == "http://10.0.0.5/metrics"
    with pytest.raises(errors.InvalidInput):
        head_proxy.dashboard_url(target, "x" * (head_proxy.MAX_PATH_CHARS + 1))
    assert isinstance(head_proxy.metrics_url(target), httpx.URL)
