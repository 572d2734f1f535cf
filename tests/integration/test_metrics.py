"""The control plane's metrics reach the platform cluster's Prometheus endpoint under the names the dashboard uses."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.helpers import Api, wait_for

pytestmark = pytest.mark.slow


def test_api_latency_sign_in_failures_and_cluster_states_are_exported(platform):
    buyer = Api.sign_up(platform.url, "buyer")
    assert buyer.get("/v1/clusters").status_code == 200
    refused = Api(platform.url).post("/v1/token", data={"username": buyer.username, "password": "wrong-one"})
    assert refused.status_code == 401
    url = f"http://127.0.0.1:{platform.record['ray_ports']['metrics_export']}/metrics"
    wanted = (
        "ray_dcluster_api_latency_seconds_bucket{",
        'route="/v1/clusters"',
        "ray_dcluster_sign_in_failures_total{",
        'reason="wrong_credentials"',
        "ray_dcluster_clusters{",
        'state="running"',
    )

    def exported() -> bool:
        text = httpx.get(url, timeout=10).text
        return all(w in text for w in wanted)

    # Ray's metrics agent exports every few seconds.
    wait_for(exported, timeout_s=90, interval_s=2, what="the platform's metrics on " + url)
