"""A buyer sees its own running sub-cluster through the platform: the head's Ray dashboard and the nodes'
Prometheus metrics, with its platform token only; nobody else's token, no token and no path trick gets anything
else. A real Prometheus scrapes the platform (as the README says to) and the buyer's cluster through the platform,
and its own web UI graphs the platform's metrics in a real browser (screenshots in tests/artifacts/prometheus/)."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
import time

import httpx
import pytest

from cli import dashboard_forward
from tests.integration import browser as browser_mod
from tests.integration.helpers import Api, wait_for
from tests.integration.prometheus import PrometheusServer
from tests.integration.test_clusters import wait_status
from worker import procs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ARTIFACTS = browser_mod.ARTIFACTS / "prometheus"
DASHBOARD_ROUTE = "/v1/clusters/{cluster_id}/dashboard/{path:path}"


class Canary:
    """An HTTP server on another loopback port that no request made through the platform may ever reach."""

    def __init__(self):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"canary secret")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", procs.free_port()), Handler)
        self.address = f"127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus(platform, tmp_path_factory):
    """Prometheus scraping the platform head's metrics export port (the README's scrape job) and, once a buyer's
    cluster runs, that cluster's head through the platform with the buyer's token (file-discovered target)."""
    root = tmp_path_factory.mktemp("prometheus")
    buyer_targets = root / "buyer-targets.json"
    buyer_targets.write_text("[]")
    token_file = root / "buyer-token"
    token_file.touch(mode=0o600)
    platform_port = platform.record["ray_ports"]["metrics_export"]
    jobs = [
        {"job_name": "dcluster-platform", "static_configs": [{"targets": [f"127.0.0.1:{platform_port}"]}]},
        {
            "job_name": "buyer-cluster",
            "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
            "file_sd_configs": [{"files": [str(buyer_targets)], "refresh_interval": "2s"}],
        },
    ]
    with PrometheusServer(root, jobs) as server:
        server.buyer_targets, server.token_file = buyer_targets, token_file
        yield server


@pytest.fixture(scope="module")
def cluster(market, platform, prometheus):
    """A buyer's running 1-worker cluster (made while Prometheus watches); deleted after the module."""
    buyer = Api.sign_up(platform.url, "buyer")
    r = buyer.post("/v1/clusters", json={"num_workers": 1, "duration_s": 1800, "name": "observed"})
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    try:
        yield buyer, wait_status(buyer, cid, "running")
    finally:
        buyer.delete(f"/v1/clusters/{cid}")


def test_the_owner_reads_its_heads_dashboard_and_metrics_through_the_platform(cluster, platform):
    buyer, c = cluster
    cid = c["id"]
    conn = buyer.get(f"/v1/clusters/{cid}/connection").json()
    assert conn["dashboard_proxy_url"] == f"{platform.url}/v1/clusters/{cid}/dashboard/"
    # The head itself refuses a caller without the cluster's Ray token: the platform adds it, the buyer never.
    assert httpx.get(f"{conn['dashboard_url']}/api/v0/nodes", timeout=10).status_code == 401

    nodes = buyer.get(f"/v1/clusters/{cid}/dashboard/api/v0/nodes", params={"detail": "true"})
    assert nodes.status_code == 200, nodes.text
    assert nodes.headers["content-security-policy"] == "sandbox"
    rows = nodes.json()["data"]["result"]["result"]
    # Exactly this cluster's nodes (the platform's own cluster has no such labels).
    assert {r["labels"].get("dcluster.io/cluster") for r in rows} == {cid}
    assert {r["labels"].get("dcluster.io/lease") for r in rows} >= {
        n["id"] for n in c["nodes"] if n["role"] == "worker"
    }
    page = buyer.get(f"/v1/clusters/{cid}/dashboard/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    jobs = buyer.get(f"/v1/clusters/{cid}/dashboard/api/jobs/")
    assert jobs.status_code == 200 and jobs.json() == []

    # `dcluster cluster dashboard ID --forward`: the same, for a local browser, page scripts included.
    forward = dashboard_forward.DashboardForward(
        conn["dashboard_proxy_url"], buyer.http.headers["Authorization"].removeprefix("Bearer ")
    ).start()
    try:
        index = httpx.get(forward.url, timeout=30)
        assert index.status_code == 200 and index.text == page.text
        scripts = re.findall(r'<script[^>]+src="\.?/?([^"]+)"', index.text)
        assert scripts, index.text[:500]
        for script in scripts:
            asset = httpx.get(forward.url + script, timeout=60)
            assert asset.status_code == 200 and len(asset.content) > 1000, (script, asset.status_code)
        assert httpx.get(forward.url + "api/jobs/", timeout=30).json() == []
    finally:
        forward.close()

    worker = next(n for n in c["nodes"] if n["role"] == "worker")
    for params in ({}, {"node": worker["id"]}):
        text = wait_for(
            lambda: (
                (t := buyer.get(f"/v1/clusters/{cid}/metrics", params=params).text) and "ray_node_cpu_count" in t and t
            ),
            timeout_s=120,
            interval_s=2,
            what=f"the cluster's metrics {params}",
        )
        assert text.startswith("# HELP") or "\n# TYPE " in text


def test_another_buyer_no_token_and_path_tricks_get_nothing(cluster, platform):
    buyer, c = cluster
    cid = c["id"]
    other = Api.sign_up(platform.url, "buyer")
    paths = (f"/v1/clusters/{cid}/dashboard/api/v0/nodes", f"/v1/clusters/{cid}/metrics")
    for path in paths:
        assert other.get(path).status_code == 404
        assert httpx.get(platform.url + path, timeout=30).status_code == 401
    provider = Api.sign_up(platform.url, "provider")
    assert provider.get(paths[0]).status_code == 403

    canary = Canary()
    try:
        host, port = platform.url.removeprefix("http://").split(":")
        token = buyer.http.headers["Authorization"]
        tricks = [
            f"/v1/clusters/{cid}/dashboard/../../../../v1/accounts",
            f"/v1/clusters/{cid}/dashboard/%2e%2e/%2e%2e/%2e%2e/v1/offers",
            f"/v1/clusters/{cid}/dashboard/..%2F..%2F..%2Fhealthz",
            f"/v1/clusters/{cid}/dashboard//{canary.address}/x",
            f"/v1/clusters/{cid}/dashboard/%2F%2F{canary.address}/x",
            f"/v1/clusters/{cid}/dashboard/http:%2F%2F{canary.address}/",
            f"/v1/clusters/{cid}/dashboard/%252e%252e/x",
            f"/v1/clusters/{cid}/metrics?node=http://{canary.address}/",
        ]
        answers = {}
        for raw in tricks:  # http.client sends the path as written: no client-side clean-up of dot segments
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", raw, headers={"Authorization": token, "Host": canary.address})
            resp = conn.getresponse()
            answers[raw] = (resp.status, resp.read()[:200])
            conn.close()
        assert all(status in (400, 404, 422) for status, _ in answers.values()), answers
        # An absolute-form request naming the canary is still the platform's route, to the buyer's head only.
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request(
            "GET", f"http://{canary.address}/v1/clusters/{cid}/dashboard/api/jobs/", headers={"Authorization": token}
        )
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read()) == []
        conn.close()
        assert canary.seen == []
    finally:
        canary.close()


def test_prometheus_scrapes_the_platform_and_the_buyers_cluster_and_graphs_them(
    cluster, platform, prometheus, tmp_path
):
    buyer, c = cluster
    cid = c["id"]
    # The buyer's scrape job, as it would write it: its cluster's metrics path, its platform token in a file.
    prometheus.token_file.write_text(buyer.http.headers["Authorization"].removeprefix("Bearer "))
    api = platform.url.removeprefix("http://")
    prometheus.buyer_targets.write_text(
        json.dumps([{"targets": [api], "labels": {"__metrics_path__": f"/v1/clusters/{cid}/metrics", "cluster": cid}}])
    )

    # Traffic for the graphs: reads, the proxied dashboard, and refused sign-ins, for a few export periods.
    anonymous = Api(platform.url)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        buyer.get("/v1/clusters")
        buyer.get(f"/v1/clusters/{cid}")
        buyer.get("/v1/offers")
        buyer.get(f"/v1/clusters/{cid}/dashboard/api/v0/nodes")
        anonymous.post("/v1/token", data={"username": buyer.username, "password": "not-the-password"})
        time.sleep(0.5)

    def found(expr: str, check=lambda v: v > 0):
        return lambda: (rows := prometheus.query(expr)) and any(check(float(r["value"][1])) for r in rows) and rows

    wait_for(
        found('up{job="dcluster-platform"}', lambda v: v == 1),
        timeout_s=60,
        interval_s=2,
        what="Prometheus scraping the platform",
    )
    wait_for(
        found('ray_dcluster_clusters{state="running"}'),
        timeout_s=120,
        interval_s=2,
        what="the platform's clusters gauge in Prometheus",
    )
    wait_for(
        found(f'sum(ray_dcluster_api_latency_seconds_count{{route="{DASHBOARD_ROUTE}"}})'),
        timeout_s=120,
        interval_s=2,
        what="the proxied dashboard's requests in the platform's API latency",
    )
    wait_for(
        found('sum(ray_dcluster_sign_in_failures_total{reason="wrong_credentials"})'),
        timeout_s=120,
        interval_s=2,
        what="refused sign-ins in Prometheus",
    )
    wait_for(
        found(f'up{{job="buyer-cluster", cluster="{cid}"}}', lambda v: v == 1),
        timeout_s=60,
        interval_s=2,
        what=f"Prometheus scraping cluster {cid} through the platform: {prometheus.targets()}",
    )
    wait_for(
        found(f'count({{job="buyer-cluster", cluster="{cid}", __name__=~"ray_node_.+"}})'),
        timeout_s=120,
        interval_s=2,
        what="the buyer cluster's node metrics in Prometheus",
    )

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    graphs = {
        "api-requests-by-route": "sum by (route) (rate(ray_dcluster_api_latency_seconds_count[30s]))",
        "clusters-by-state": "max by (state) (ray_dcluster_clusters)",
        "buyer-cluster-cpu": f'ray_node_cpu_utilization{{job="buyer-cluster", cluster="{cid}"}}',
    }
    with browser_mod.chromium(tmp_path, window="1400,1150") as driver:  # the legend is below the graph
        from selenium.webdriver.common.by import By

        for name, expr in graphs.items():
            driver.get(prometheus.graph_url(expr))
            wait_for(
                lambda: driver.find_elements(By.CSS_SELECTOR, ".graph svg path"),
                timeout_s=30,
                interval_s=0.5,
                what=f"Prometheus graphing {expr}",
            )
            time.sleep(1)  # the legend is drawn after the lines
            path = ARTIFACTS / f"{name}.png"
            driver.save_screenshot(str(path))
            print(f"screenshot: {path}")
